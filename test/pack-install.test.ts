/**
 * clnvault as an operator installs it: `npm pack` of this checkout, `npm install -g` of that tarball into a
 * temporary prefix, then the two commands npm linked into <prefix>/bin. lightningd runs the plugin through
 * that bin symlink (`important-plugin=$(command -v clnvault-plugin)`), so the plugin is started by its link,
 * answers getmanifest over real pipes, serves a simulated node, and runs its compaction worker from the
 * installed files; the installed CLI then restores and verifies what it wrote.
 *
 * No network: the dependencies' registry documents come from a registry on 127.0.0.1 built from
 * package-lock.json, their tarballs from npm's cache (filled by `npm ci`). The install runs with
 * --ignore-scripts: better-sqlite3's own install step (a prebuilt download, or a ~1 minute node-gyp build)
 * is better-sqlite3's business, so the addon this checkout built is copied in instead; everything that is
 * clnvault's (the files in the tarball, bin links, paths found from the installed location) is real.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { sqliteDump } from '../src/sim/db.js';
import { SimNode } from '../src/sim/lightningd.js';
import { runWorkload, Workload } from '../src/sim/workload.js';
import { REPO_ROOT } from './helpers/cli.js';
import { rpc } from './helpers/compact-sim.js';
import { startLocalRegistry, type LocalRegistry } from './helpers/local-registry.js';

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Async: the local registry answers from this process while npm runs. */
function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd ?? REPO_ROOT, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

const show = (r: Run): string => `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;

/**
 * npm run from `npm test` inherits npm_config_* of the outer run (its prefix, its global flag...); the
 * inner npm must see only its own flags. Its cache stays: that is where the dependency tarballs are.
 */
function npmEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^npm_/i.test(k) && !/^npm_config_(cache|userconfig)$/i.test(k)) continue;
    env[k] = v;
  }
  env.npm_config_update_notifier = 'false';
  return env;
}

/** The npm that runs this test when there is one (npm test), else the one on the PATH. */
function npm(args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<Run> {
  const cli = process.env.npm_execpath;
  return cli && /npm-cli\.js$/.test(cli) ? run(process.execPath, [cli, ...args], { ...opts, env: npmEnv() }) : run('npm', args, { ...opts, env: npmEnv() });
}

const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { name: string; version: string };
const scratch = mkdtempSync(join(tmpdir(), 'clnvault-pack-'));
const prefix = join(scratch, 'prefix');
const bin = (name: string): string => join(prefix, 'bin', name);
let registry: LocalRegistry | null = null;
let packedFiles: string[] = [];

after(async () => {
  await registry?.close();
  if (!process.env.CLNVAULT_KEEP_TMP) rmSync(scratch, { recursive: true, force: true });
});

describe('npm pack, npm install -g, and the installed commands', { timeout: 300_000 }, () => {
  before(async () => {
    // dist/ is already built by `npm test`; --ignore-scripts skips prepack's rebuild, which would rewrite
    // dist/ under the test files running beside this one.
    const packed = await npm(['pack', '--ignore-scripts', '--json', '--pack-destination', scratch]);
    assert.equal(packed.code, 0, show(packed));
    const info = (JSON.parse(packed.stdout) as Array<{ filename: string; files: Array<{ path: string }> }>)[0]!;
    packedFiles = info.files.map((f) => f.path);
    const tarball = join(scratch, info.filename);

    registry = await startLocalRegistry(join(REPO_ROOT, 'package-lock.json'));
    const installed = await npm([
      'install', '--global', '--prefix', prefix, '--registry', registry.url, '--prefer-offline', '--fetch-retries=0',
      '--ignore-scripts', '--no-audit', '--no-fund', tarball,
    ]);
    assert.equal(
      installed.code,
      0,
      `${show(installed)}\nasked the local registry for what it does not hold: ${registry.missing.join(', ') || 'nothing'}` +
        ' (a dependency tarball missing from npm\'s cache: run `npm ci` first, it fills the cache)',
    );
    assert.deepEqual(registry.missing, [], 'every dependency came from package-lock.json and npm\'s cache');

    // The native addon this checkout built, into the installed better-sqlite3 (same locked version).
    const here = dirname(createRequire(join(REPO_ROOT, 'package.json')).resolve('better-sqlite3/package.json'));
    const there = join(prefix, 'lib', 'node_modules', pkg.name, 'node_modules', 'better-sqlite3');
    const version = (dir: string): string => (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version: string }).version;
    assert.equal(version(there), version(here));
    mkdirSync(join(there, 'build', 'Release'), { recursive: true });
    copyFileSync(join(here, 'build', 'Release', 'better_sqlite3.node'), join(there, 'build', 'Release', 'better_sqlite3.node'));
  });

  test('the tarball holds the built program, its docs and LICENSE, and no tests or fixtures', () => {
    for (const f of ['package.json', 'LICENSE', 'README.md', 'dist/src/cli/main.js', 'dist/src/plugin/main.js', 'dist/src/plugin/compact-worker.js']) {
      assert.ok(packedFiles.includes(f), `${f} in the tarball: ${packedFiles.join(' ')}`);
    }
    assert.ok(packedFiles.some((f) => f.startsWith('contrib/systemd/')), 'the systemd units ship with the package');
    const strays = packedFiles.filter((f) => /^(test|bench|src|dist\/test|dist\/bench)\//.test(f) || f.includes('fixtures'));
    assert.deepEqual(strays, []);
    assert.ok(!packedFiles.includes('clnvault'), 'the reckless stopper stays in the repository');
  });

  test("the repository's top-level `clnvault` (reckless's test run) refuses with the way to install", async () => {
    // reckless runs the entry point named after the plugin once, with no arguments, and installs only if it
    // exits 0 or keeps running: this must exit non-zero, quickly, and say why and what to do instead
    const r = await run(join(REPO_ROOT, 'clnvault'), [], { timeoutMs: 10_000 });
    assert.equal(r.code, 1, show(r));
    assert.match(r.stderr, /cannot be installed with reckless/);
    assert.match(r.stderr, /important-plugin=/);
    assert.match(r.stderr, /npm install -g/);
  });

  test('both commands are npm bin links into the installed package', () => {
    for (const name of ['clnvault', 'clnvault-plugin']) {
      assert.ok(lstatSync(bin(name)).isSymbolicLink(), `${bin(name)} is npm's link`);
      assert.ok(realpathSync(bin(name)).startsWith(realpathSync(join(prefix, 'lib', 'node_modules', pkg.name)) + '/'));
    }
  });

  test('clnvault --version, --help, and a usage error on stderr', async () => {
    const v = await run(bin('clnvault'), ['--version']);
    assert.equal(v.code, 0, show(v));
    assert.equal(v.stdout, `${pkg.version}\n`);
    const h = await run(bin('clnvault'), ['--help']);
    assert.equal(h.code, 0, show(h));
    assert.match(h.stdout, /^Usage: clnvault <command>/);
    const none = await run(bin('clnvault'), []);
    assert.equal(none.code, 2, show(none));
    assert.equal(none.stdout, '');
    assert.match(none.stderr, /Usage: clnvault <command>/);
  });

  test('clnvault-plugin, started through its bin link, answers getmanifest over real pipes', async () => {
    const dir = join(scratch, 'manifest-node');
    mkdirSync(dir);
    // LIGHTNINGD_PLUGIN=1: what lightningd sets for its plugins (without it the plugin only prints how to load it)
    const child = spawn(bin('clnvault-plugin'), [], { cwd: dir, env: { ...process.env, LIGHTNINGD_PLUGIN: '1' }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const reply = new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no getmanifest answer in 30 s; stderr: ${stderr}`)), 30_000);
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        stdout += d;
        const end = stdout.indexOf('\n\n');
        if (end >= 0 && stdout.slice(0, end).includes('"id":"m1"')) {
          clearTimeout(timer);
          resolve(stdout.slice(0, end));
        }
      });
    });
    child.stdin.write(`${JSON.stringify({ jsonrpc: '2.0', id: 'm1', method: 'getmanifest', params: { 'allow-deprecated-apis': false } })}\n\n`);
    const msg = JSON.parse(await reply) as { id: string; result: { hooks: Array<{ name: string }>; dynamic: boolean } };
    assert.deepEqual(msg.result.hooks, [{ name: 'db_write' }]);
    assert.equal(msg.result.dynamic, false);
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    child.stdin.end();
    await exited;
  });

  test('installed: init, the plugin serving a node and compacting, restore and verify', { timeout: 240_000 }, async () => {
    const dir = join(scratch, 'node');
    const netDir = join(dir, 'regtest');
    mkdirSync(netDir, { recursive: true });
    const url = pathToFileURL(join(dir, 'backup.clnvault')).href;
    const init = await run(bin('clnvault'), ['init', '--lightning-dir', netDir, url]);
    assert.equal(init.code, 0, show(init));

    const node = new SimNode({ netDir, pluginPath: bin('clnvault-plugin'), hookSafetyTimeoutMs: 60_000, exitGraceMs: 5_000 });
    try {
      await node.boot();
      const w = await runWorkload(node, Workload.fromDb(node.dbPath, 11), 150);
      assert.equal(w.failure, undefined);
      // the worker thread's file is found beside the installed plugin (a wrong path fails here)
      const compacted = await rpc(node, 'backup-compact', {}, 60_000);
      assert.equal(compacted.error, undefined, `${JSON.stringify(compacted.error)}\n${node.stderr}`);
      await runWorkload(node, Workload.fromDb(node.dbPath, 12), 20);
    } finally {
      await node.stop();
    }

    const dest = join(dir, 'restored.sqlite3');
    const restored = await run(bin('clnvault'), ['restore', url, dest]);
    assert.equal(restored.code, 0, show(restored));
    assert.equal(sqliteDump(dest), sqliteDump(node.dbPath));
    const verified = await run(bin('clnvault'), ['verify', url, '--against', netDir]);
    assert.equal(verified.code, 0, show(verified));
    assert.ok(existsSync(join(netDir, 'backup.lock')));
  });

  test('installed, encrypted backup: the plugin loads its key code (a chunk of its own, scripts/postbuild.js) and serves a node', { timeout: 240_000 }, async () => {
    const dir = join(scratch, 'enc-node');
    const netDir = join(dir, 'regtest');
    mkdirSync(netDir, { recursive: true });
    const url = pathToFileURL(join(dir, 'backup.clnvault')).href;
    const keyFile = join(dir, 'backup.key');
    const init = await run(bin('clnvault'), ['init', '--encrypt', '--key-file', keyFile, '--lightning-dir', netDir, url]);
    assert.equal(init.code, 0, show(init));
    const node = new SimNode({ netDir, pluginPath: bin('clnvault-plugin'), hookSafetyTimeoutMs: 60_000, exitGraceMs: 5_000 });
    try {
      await node.boot();
      const w = await runWorkload(node, Workload.fromDb(node.dbPath, 13), 30);
      assert.equal(w.failure, undefined);
    } finally {
      await node.stop();
    }
    const dest = join(dir, 'restored.sqlite3');
    const restored = await run(bin('clnvault'), ['restore', '--key-file', keyFile, url, dest]);
    assert.equal(restored.code, 0, show(restored));
    assert.equal(sqliteDump(dest), sqliteDump(node.dbPath));
  });
});
