/**
 * Two writers on one backup: two plugins (two nodes pointed at the same file), a plugin and
 * `clnvault init`, a plugin and `clnvault compact`, two inits racing. Exactly one may write; the other must
 * say why; the backup must stay intact (it restores to exactly what the running node committed).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { after, describe, test } from 'node:test';
import { openReader } from '../src/backends/open.js';
import { restoreBackup } from '../src/restore/restore.js';
import { SimNode } from '../src/sim/lightningd.js';
import { Workload, runWorkload } from '../src/sim/workload.js';
import { PLUGIN, simScratch, type SimScratch } from './helpers/sim-fixtures.js';
import { dump } from './helpers/sqlite.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const scratches: SimScratch[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of scratches) await s.cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function cli(args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('close', (code) => resolve({ code, out }));
  });
}

function assertIntact(sc: SimScratch): void {
  const out = join(sc.dir, `restored-${Date.now()}.sqlite3`);
  const r = openReader(sc.backupUrl, sc.dir);
  try {
    restoreBackup(r, out);
  } finally {
    r.close();
  }
  assert.equal(dump(out), dump(sc.node.dbPath));
  rmSync(out);
}

async function running(): Promise<SimScratch> {
  const sc = simScratch();
  scratches.push(sc);
  await sc.node.boot();
  const run = await runWorkload(sc.node, Workload.fromDb(sc.node.dbPath, 21, { datastoreSize: [100, 20_000] }), 30);
  assert.equal(run.failure, undefined);
  return sc;
}

describe('two writers on one backup', () => {
  test('two plugins (two nodes, one backup.lock URL): the second refuses every write and says why; the first goes on', { timeout: 120_000 }, async () => {
    const a = await running();
    const dirB = mkdtempSync(join(tmpdir(), 'clnvault-second-'));
    dirs.push(dirB);
    SimNode.writeBackupLock(dirB, a.backupUrl);
    const b = new SimNode({ netDir: dirB, pluginPath: PLUGIN, hookSafetyTimeoutMs: 60_000, exitGraceMs: 5_000 });
    await b.start();
    const r = await b.dbWrite(1, ['CREATE TABLE x (a)']);
    assert.equal(r.answered, 'error');
    assert.match(r.answered === 'error' ? r.detail : '', /already open for writing by another clnvault process/);
    assert.equal(b.state, 'crashed', 'the second node stops without committing');
    await b.stop();
    const more = await runWorkload(a.node, Workload.fromDb(a.node.dbPath, 22), 10);
    assert.equal(more.failure, undefined);
    await a.node.stop();
    assertIntact(a);
  });

  test('plugin + clnvault init on the same URL: init refuses, the plugin goes on', { timeout: 120_000 }, async () => {
    const a = await running();
    const netDir2 = mkdtempSync(join(tmpdir(), 'clnvault-init2-'));
    dirs.push(netDir2);
    const before = readFileSync(join(a.dir, 'backup.clnvault'));
    const r = await cli(['init', '--lightning-dir', netDir2, a.backupUrl]);
    assert.notEqual(r.code, 0, r.out);
    assert.match(r.out, /already exists|already open for writing/);
    assert.ok(readFileSync(join(a.dir, 'backup.clnvault')).equals(before), 'init must not touch the backup');
    const more = await runWorkload(a.node, Workload.fromDb(a.node.dbPath, 23), 10);
    assert.equal(more.failure, undefined);
    await a.node.stop();
    assertIntact(a);
  });

  test('the backup file is removed and re-created by init while the plugin runs: the plugin refuses to write into the old file', { timeout: 120_000 }, async () => {
    const a = await running();
    const dv = a.node.dataVersion();
    const path = join(a.dir, 'backup.clnvault');
    rmSync(path);
    const netDir2 = mkdtempSync(join(tmpdir(), 'clnvault-init3-'));
    dirs.push(netDir2);
    const r = await cli(['init', '--lightning-dir', netDir2, a.backupUrl]);
    // either init is refused (the old writer's lock is still held) or it creates a new, empty file; both are
    // fine as long as the running plugin does not go on acknowledging writes into the removed file
    const w = await a.node.transaction(["UPDATE vars SET intval = 1 WHERE name = 'nothing';"]);
    assert.equal(w.answered, 'error', `init: ${r.out}`);
    assert.match(w.answered === 'error' ? w.detail : '', /no longer reachable|different file/);
    assert.equal(a.node.dataVersion(), dv);
  });

  test('plugin + clnvault compact: compact refuses while the plugin holds the backup and names the online way', { timeout: 120_000 }, async () => {
    const a = await running();
    const before = readFileSync(join(a.dir, 'backup.clnvault'));
    const r = await cli(['compact', a.backupUrl]);
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /backup-compact|already open for writing/);
    assert.ok(readFileSync(join(a.dir, 'backup.clnvault')).equals(before));
    const more = await runWorkload(a.node, Workload.fromDb(a.node.dbPath, 24), 10);
    assert.equal(more.failure, undefined);
    await a.node.stop();
    assertIntact(a);
  });

  test('two clnvault init racing for the same new backup: exactly one creates it', { timeout: 120_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'clnvault-race-'));
    dirs.push(dir);
    for (let round = 0; round < 5; round++) {
      const url = pathToFileURL(join(dir, `race-${round}.bkp`)).href;
      const [n1, n2] = [join(dir, `n1-${round}`), join(dir, `n2-${round}`)];
      mkdirSync(n1);
      mkdirSync(n2);
      const rs = await Promise.all([cli(['init', '--lightning-dir', n1, url]), cli(['init', '--lightning-dir', n2, url])]);
      const ok = rs.filter((x) => x.code === 0);
      assert.equal(ok.length, 1, rs.map((x) => `${x.code}: ${x.out}`).join('\n'));
      assert.match(rs.find((x) => x.code !== 0)!.out, /already exists|already open/);
      const reader = openReader(url, dir);
      assert.equal(reader.stats().entries, 0);
      reader.close();
    }
  });
});
