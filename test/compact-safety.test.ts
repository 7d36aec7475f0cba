/**
 * Issue 9, items 1 and 2, through the real plugin (worker thread, shared memory, rename) under the
 * lightningd simulator:
 *  - back-to-back compactions with no write between must each use the current file's end;
 *  - an I/O error at any step after the rename must neither delete any of the live backup's files nor let
 *    a later write be acknowledged: the plugin refuses, lightningd stops, and after a restart the backup
 *    restores to exactly what the node committed.
 * The faults are injected from outside the product (test/helpers/fault-preload.ts, loaded with --import).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { backupPath, openReader } from '../src/backends/open.js';
import { listSegmentFiles } from '../src/backends/file/segments.js';
import type { BackupFormat } from '../src/engine/entries.js';
import { sqliteDump } from '../src/sim/db.js';
import { Workload, runWorkload } from '../src/sim/workload.js';
import { restoreBackup } from '../src/restore/restore.js';
import { rpc, startWriter } from './helpers/compact-sim.js';
import { armFault, faultEnv, faultFired } from './helpers/faults.js';
import { simScratch, type SimScratch } from './helpers/sim-fixtures.js';

const SEG = 64 * 1024;
const scratches: SimScratch[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of scratches) await s.cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function scratch(format: BackupFormat, segmentBytes: number | null, env: NodeJS.ProcessEnv = {}): SimScratch {
  const sc = simScratch({ env }, format);
  scratches.push(sc);
  const lock: Record<string, unknown> = { backend_url: sc.backupUrl, compaction: { auto: false } };
  if (segmentBytes !== null) lock.segment_bytes = segmentBytes;
  writeFileSync(join(sc.netDir, 'backup.lock'), JSON.stringify(lock));
  return sc;
}

/** Restores the backup (at the node's committed version when it is one write ahead) and compares. */
function assertMatchesCommitted(sc: SimScratch, what: string): void {
  const committed = sc.node.dataVersion();
  const reader = openReader(sc.backupUrl, sc.dir);
  const dest = join(sc.dir, `restored-${Date.now()}-${Math.random().toString(36).slice(2)}.sqlite3`);
  try {
    const head = reader.stats().head;
    assert.ok(head === committed || head === committed + 1, `${what}: backup head ${head}, node committed ${committed}`);
    restoreBackup(reader, dest, head === committed ? {} : { toVersion: committed });
  } finally {
    reader.close();
  }
  assert.equal(sqliteDump(dest), sqliteDump(sc.node.dbPath), `${what}: the restored database differs from the committed one`);
}

describe('back-to-back compactions (issue 9, item 1)', () => {
  for (const [format, seg] of [['v2', null], ['v2', SEG], ['v1', null]] as Array<[BackupFormat, number | null]>) {
    test(`${format}${seg ? ` in ${seg / 1024} KiB segments` : ''}: three backup-compact in a row with no write between, then a restore equal to the node`, { timeout: 120_000 }, async () => {
      const sc = scratch(format, seg);
      const { node } = sc;
      await node.boot();
      assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 31, { datastoreSize: [100, 4096] }), 300)).failure, undefined);
      for (let i = 0; i < 3; i++) {
        const r = await rpc(node, 'backup-compact');
        assert.equal(r.error, undefined, `compaction ${i + 1} of 3: ${JSON.stringify(r.error)}`);
        assertMatchesCommitted(sc, `after compaction ${i + 1}`);
      }
      // and the writer, which never wrote between the swaps, goes on in the compacted file
      assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 32), 40)).failure, undefined);
      const r = await rpc(node, 'backup-compact');
      assert.equal(r.error, undefined, JSON.stringify(r.error));
      assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 33), 10)).failure, undefined);
      assertMatchesCommitted(sc, 'after writes, a fourth compaction and more writes');
      assert.deepEqual(node.violations, []);
    });
  }
});

describe('an I/O error after the rename (issue 9, item 2)', () => {
  for (const [format, seg] of [['v2', SEG], ['v1', null]] as Array<[BackupFormat, number | null]>) {
    test(`${format}${seg ? ` in ${seg / 1024} KiB segments` : ''}: EIO at each step after the rename loses nothing acknowledged`, { timeout: 600_000 }, async () => {
      const d = mkdtempSync(join(tmpdir(), 'clnvault-fault-'));
      dirs.push(d);
      const spec = join(d, 'fault.json');
      const sc = scratch(format, seg, faultEnv(spec));
      const { node } = sc;
      const path = backupPath(sc.backupUrl, sc.dir);
      await node.boot();
      // a backup of several segments to start with
      while (seg !== null && listSegmentFiles(path).length < 3) {
        assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, listSegmentFiles(path).length, { datastoreSize: [200, 2000] }), 50)).failure, undefined);
      }
      const fired: string[] = [];
      const tolerated: string[] = [];
      let round = 0;
      // each kind of step after the rename, at its first few occurrences (the directory fsync, the removal
      // of the old set's segments, freeing the old file's blocks, pruning history)
      for (const call of ['openSync', 'fsyncSync', 'closeSync', 'rmSync', 'unlinkSync', 'fstatSync', 'ftruncateSync', 'linkSync', 'renameSync']) {
        for (let at = 1; at <= 3; at++) {
          round++;
          // enough history that the compaction rewrites it, across several segments
          assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 100 + round, { datastoreSize: [200, 2000] }), 60)).failure, undefined);
          armFault(spec, { from: 'rename', call, at });
          // writes keep coming while it compacts, as on a live node
          const writer = startWriter(node, 1000 + round, { tolerateDeath: true, datastoreSize: [100, 1000] });
          // the answer may never come: a write refused meanwhile stops lightningd, which ends the plugin
          const r = (await rpc(node, 'backup-compact').catch((e: Error) => ({ error: { message: e.message } }))) as { error?: { message: string } };
          const f = faultFired(spec);
          armFault(spec, { at: 0 });
          await new Promise((res) => setTimeout(res, 20));
          writer.stop();
          await writer.done;
          if (f === null) {
            assert.equal(r.error, undefined, JSON.stringify(r.error));
            assert.equal(writer.failure, null);
            assertMatchesCommitted(sc, `no ${call} #${at} after the rename`);
            break;
          }
          const what = `EIO at ${call} #${at} after the rename (${f.arg ?? 'a descriptor'}; compaction: ${r.error?.message ?? 'succeeded'})`;
          if (r.error === undefined) {
            // a step that handles its own error by design (removeGently falls back to a plain unlink)
            assert.equal(writer.failure, null, what);
            tolerated.push(`${call}#${at}`);
            assertMatchesCommitted(sc, what);
            continue;
          }
          fired.push(`${call}#${at}`);
          // one more write after the failed swap: refused, so lightningd stops without committing it
          const next = node.state === 'running' ? await node.transaction(["UPDATE vars SET intval=intval WHERE name='data_version'"]) : null;
          assert.ok(next === null || next.answered === 'error', `${what}: a write after the failed swap was acknowledged`);
          assert.notEqual(node.state, 'running', `${what}: lightningd must stop`);
          assertMatchesCommitted(sc, `${what}, before the restart`);
          await node.restart();
          await node.boot();
          assertMatchesCommitted(sc, `${what}, after the restart`);
          assert.ok(!existsSync(`${path}.compacting`));
        }
      }
      console.log(`# ${format}: ${round} compactions; refused after ${fired.join(' ')}; handled by design: ${tolerated.join(' ') || 'none'}`);
      // the directory fsync after the rename, at least: its open, its fsync, its close
      for (const step of ['openSync#1', 'fsyncSync#1', 'closeSync#1']) assert.ok(fired.includes(step), `${step} was exercised`);
      assert.deepEqual(node.violations, []);
    });
  }
});
