// After tsc: bundle the plugin's entry into one file, and set the run bits.
//
// lightningd starts the plugin on every boot and waits for its getmanifest answer. Loaded as ~20 separate
// ES modules, Node spends ~20 ms resolving, reading and linking them; one file skips that. The bundle
// replaces tsc's dist/src/plugin/main.js in place, so every path that names the plugin (lightningd's
// config, the tests, the simulator, the benches) runs the bundle, and import.meta.url still points into
// dist/src/plugin/, where the compaction worker (compact-worker.js, started on demand) and node_modules
// resolve as before. Without esbuild (an install without dev dependencies) the unbundled file stays and
// works the same, only starts slower.
import { chmodSync, existsSync } from 'node:fs';

const PLUGIN = 'dist/src/plugin/main.js';

let esbuild = null;
try {
  esbuild = await import('esbuild');
} catch {
  console.error(`postbuild: esbuild is not installed; ${PLUGIN} stays unbundled (slower start-up, same behaviour)`);
}
if (esbuild !== null && existsSync(PLUGIN)) {
  esbuild.buildSync({
    entryPoints: [PLUGIN],
    outfile: PLUGIN,
    allowOverwrite: true,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    // native addon: loaded from node_modules at run time
    external: ['better-sqlite3'],
    logLevel: 'warning',
  });
}

// tsc keeps the shebang but not the run bit; lightningd refuses to start a plugin that is not executable.
for (const bin of ['dist/src/cli/main.js', PLUGIN]) {
  if (existsSync(bin)) chmodSync(bin, 0o755);
}
