// After tsc: bundle the plugin's entry into one file, and set the run bits.
//
// lightningd starts the plugin on every boot and waits for its getmanifest answer. Loaded as ~20 separate
// ES modules, Node spends ~20 ms resolving, reading and linking them; one file skips that. The bundle
// replaces tsc's dist/src/plugin/main.js in place, so every path that names the plugin (lightningd's
// config, the tests, the simulator, the benches) runs the bundle, and import.meta.url still points into
// dist/src/plugin/, where the compaction worker (compact-worker.js, started on demand) and node_modules
// resolve as before. Without esbuild (an install without dev dependencies) the unbundled file stays and
// works the same, only starts slower.
//
// Code only some users need is split into chunks loaded by a dynamic import() when needed: the key code of
// encrypted backups (src/plugin/startup.ts) evaluated node:crypto, the BIP39 word list and @noble/hashes
// at every start (~7 ms). The chunks are written beside the entry (bundle-*.js), so import.meta.url in
// them names the same directory as the entry's.
import { chmodSync, existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const PLUGIN = 'dist/src/plugin/main.js';
const OUT_DIR = 'dist/src/plugin';
const CHUNK_PREFIX = 'bundle-';

let esbuild = null;
try {
  esbuild = await import('esbuild');
} catch {
  console.error(`postbuild: esbuild is not installed; ${PLUGIN} stays unbundled (slower start-up, same behaviour)`);
}
if (esbuild !== null && existsSync(PLUGIN)) {
  // chunks of an earlier build (their names carry a content hash)
  for (const f of readdirSync(OUT_DIR)) if (f.startsWith(CHUNK_PREFIX) && f.endsWith('.js')) rmSync(join(OUT_DIR, f));
  esbuild.buildSync({
    entryPoints: [PLUGIN],
    outdir: OUT_DIR,
    allowOverwrite: true,
    bundle: true,
    splitting: true,
    chunkNames: `${CHUNK_PREFIX}[name]-[hash]`,
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
