/**
 * A compaction worker that cannot load, or dies, must not leave `backup-compact` unanswered or the
 * compaction RUNNING forever: the plugin's main thread sits blocked in read(2) and never sees a Worker's
 * events. Each case runs the real built plugin under the lightningd simulator, from a copy of the built
 * tree whose compact-worker.js is missing, throws while loading, or ends its thread (a damaged install,
 * a crash); the rest of the copy is the product as built.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import { openReader } from '../src/backends/open.js';
import { restoreBackup } from '../src/restore/restore.js';
import { sqliteDump } from '../src/sim/db.js';
import { Workload, runWorkload } from '../src/sim/workload.js';
import { rpc, startWriter } from './helpers/compact-sim.js';
import { pluginCopy, type PluginCopy } from './helpers/plugin-copy.js';
import { simScratch, type SimScratch } from './helpers/sim-fixtures.js';

const BUILT_SRC = fileURLToPath(new URL('../src', import.meta.url));
const REAL_WORKER = readFileSync(join(BUILT_SRC, 'plugin', 'compact-worker.js'), 'utf8');

const scratches: SimScratch[] = [];
const copies: PluginCopy[] = [];
after(async () => {
  for (const s of scratches) await s.cleanup();
  for (const c of copies) c.cleanup();
});

/** A node whose plugin is a copy of the built one with compact-worker.js replaced by `worker` (null: missing). */
function scratch(worker: string | null): SimScratch & { workerFile: string } {
  const copy = pluginCopy('plugin/compact-worker.js', worker);
  copies.push(copy);
  const workerFile = copy.file;
  const sc = simScratch({ pluginPath: copy.plugin });
  scratches.push(sc);
  writeFileSync(join(sc.netDir, 'backup.lock'), JSON.stringify({ backend_url: sc.backupUrl, compaction: { auto: false } }));
  return { ...sc, workerFile };
}

function assertRestoresToNode(sc: SimScratch): void {
  const dest = join(sc.dir, `restored-${Date.now()}.sqlite3`);
  const reader = openReader(sc.backupUrl, sc.dir);
  try {
    restoreBackup(reader, dest, {});
  } finally {
    reader.close();
  }
  assert.equal(sqliteDump(dest), sqliteDump(sc.node.dbPath), 'the restored database differs from the node');
}

/**
 * backup-compact with writes going on: an answer that depends on the main thread noticing a dead worker
 * comes with lightningd's next message, as on a live node. Times out (fails) if never answered.
 */
async function compactWhileWriting(sc: SimScratch, seed: number): Promise<{ error?: { message: string } }> {
  const w = startWriter(sc.node, seed);
  try {
    return (await rpc(sc.node, 'backup-compact', {}, 30_000)) as { error?: { message: string } };
  } finally {
    w.stop();
    await w.done;
  }
}

describe('a compaction worker that cannot load or dies', () => {
  test('worker file missing: backup-compact is refused with the cause, writes go on, and once the file is back a compaction runs', { timeout: 120_000 }, async () => {
    const sc = scratch(null);
    await sc.node.boot();
    assert.equal((await runWorkload(sc.node, Workload.fromDb(sc.node.dbPath, 41), 100)).failure, undefined);
    const r = (await rpc(sc.node, 'backup-compact', {}, 20_000)) as { error?: { message: string } };
    assert.match(r.error?.message ?? '', /cannot load the compaction worker .*compact-worker\.js/);
    // not left RUNNING: asking again gets the same cause, not "already running"
    const again = (await rpc(sc.node, 'backup-compact', {}, 20_000)) as { error?: { message: string } };
    assert.match(again.error?.message ?? '', /cannot load the compaction worker/);
    assert.equal((await runWorkload(sc.node, Workload.fromDb(sc.node.dbPath, 42), 50)).failure, undefined);
    // the installation repaired: the next request starts a new worker, which compacts
    writeFileSync(sc.workerFile, REAL_WORKER);
    const fixed = await rpc(sc.node, 'backup-compact', {}, 60_000);
    assert.equal(fixed.error, undefined, JSON.stringify(fixed.error));
    assert.equal((await runWorkload(sc.node, Workload.fromDb(sc.node.dbPath, 43), 20)).failure, undefined);
    assertRestoresToNode(sc);
    assert.deepEqual(sc.node.violations, []);
  });

  test('worker module throws while loading: refused with its message, every time', { timeout: 120_000 }, async () => {
    const sc = scratch("throw new Error('damaged install: compact-worker.js is truncated');\n");
    await sc.node.boot();
    assert.equal((await runWorkload(sc.node, Workload.fromDb(sc.node.dbPath, 44), 50)).failure, undefined);
    for (let i = 0; i < 2; i++) {
      const r = (await rpc(sc.node, 'backup-compact', {}, 20_000)) as { error?: { message: string } };
      assert.match(r.error?.message ?? '', /damaged install: compact-worker\.js is truncated/, `request ${i + 1}`);
    }
    assert.equal((await runWorkload(sc.node, Workload.fromDb(sc.node.dbPath, 45), 50)).failure, undefined);
    assertRestoresToNode(sc);
  });

  test('worker thread exits: backup-compact is answered, a second one too (a new worker each time)', { timeout: 120_000 }, async () => {
    const sc = scratch('process.exit(3);\n');
    await sc.node.boot();
    assert.equal((await runWorkload(sc.node, Workload.fromDb(sc.node.dbPath, 46), 50)).failure, undefined);
    for (let i = 0; i < 2; i++) {
      const r = await compactWhileWriting(sc, 47 + i);
      assert.match(r.error?.message ?? '', /compaction worker (stopped|died).*exit code 3/, `request ${i + 1}: ${JSON.stringify(r)}`);
    }
    assertRestoresToNode(sc);
  });

  test('worker thread ends without running any JavaScript while holding the write lock, before any rename: writes go on, the request is answered', { timeout: 120_000 }, async () => {
    // process.reallyExit ends the thread as running out of heap does: no exit handler, no message
    const sc = scratch(
      "import { workerData } from 'node:worker_threads';\n" +
        "import { lock, views, WRITE_MUTEX } from '../compact/sync.js';\n" +
        'lock(views(workerData.sab).i32, WRITE_MUTEX);\n' +
        'process.reallyExit(9);\n',
    );
    await sc.node.boot();
    assert.equal((await runWorkload(sc.node, Workload.fromDb(sc.node.dbPath, 50), 50)).failure, undefined);
    const r = await compactWhileWriting(sc, 51);
    assert.match(r.error?.message ?? '', /compaction worker died/, JSON.stringify(r));
    assert.equal((await runWorkload(sc.node, Workload.fromDb(sc.node.dbPath, 52), 30)).failure, undefined);
    assertRestoresToNode(sc);
    assert.deepEqual(sc.node.violations, []);
  });

  test('worker thread ends holding the write lock after renaming another file over the backup: every later write is refused', { timeout: 120_000 }, async () => {
    const sc = scratch(
      "import { copyFileSync, renameSync } from 'node:fs';\n" +
        "import { workerData } from 'node:worker_threads';\n" +
        "import { lock, views, WRITE_MUTEX } from '../compact/sync.js';\n" +
        'lock(views(workerData.sab).i32, WRITE_MUTEX);\n' +
        "copyFileSync(workerData.path, workerData.path + '.compacting');\n" +
        "renameSync(workerData.path + '.compacting', workerData.path);\n" +
        'process.reallyExit(9);\n',
    );
    await sc.node.boot();
    assert.equal((await runWorkload(sc.node, Workload.fromDb(sc.node.dbPath, 53), 50)).failure, undefined);
    const w = startWriter(sc.node, 54, { tolerateDeath: true });
    const reply = rpc(sc.node, 'backup-compact', {}, 30_000).catch((e: Error) => ({ error: { message: e.message } }));
    await w.done;
    assert.match(w.failure ?? '', /compaction worker died while replacing the backup.*restart lightningd/);
    await reply;
  });
});
