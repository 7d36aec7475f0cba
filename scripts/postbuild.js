// tsc keeps the shebang but not the run bit; lightningd refuses to start a plugin that is not executable.
import { chmodSync, existsSync } from 'node:fs';
for (const bin of ['dist/src/cli/main.js', 'dist/src/plugin/main.js']) {
  if (existsSync(bin)) chmodSync(bin, 0o755);
}
