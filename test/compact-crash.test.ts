/**
 * SIGKILL the plugin at random moments while it compacts under a continuous write load. Whatever the
 * moment, the backup must afterwards restore to exactly what the simulator committed (or be one
 * uncommitted write ahead, which the plugin rewinds on the next start), and the next compaction must not
 * be blocked by what the killed one left behind.
 *
 * CLNVAULT_COMPACT_CRASH_TRIALS sets the number of kills (default 30, split 2:1 between v2 and v1).
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { backupPath, openReader } from '../src/backends/open.js';
import type { BackupFormat } from '../src/engine/entries.js';
import { sqliteDump } from '../src/sim/db.js';
import { Prng, Workload, runWorkload } from '../src/sim/workload.js';
import { restoreBackup } from '../src/restore/restore.js';
import { rpc, startWriter } from './helpers/compact-sim.js';
import { simScratch, type SimScratch } from './helpers/sim-fixtures.js';

const TRIALS = Number(process.env.CLNVAULT_COMPACT_CRASH_TRIALS ?? 30);
const scratches: SimScratch[] = [];
after(async () => {
  for (const s of scratches) await s.cleanup();
});

/** Restores the backup at the sim's committed version and compares the dumps. */
function assertMatchesCommitted(sc: SimScratch, what: string): { head: number; committed: number } {
  const committed = sc.node.dataVersion();
  const reader = openReader(sc.backupUrl, sc.dir);
  const dest = join(sc.dir, `restored-${Date.now()}-${Math.random().toString(36).slice(2)}.sqlite3`);
  let head: number;
  try {
    head = reader.stats().head;
    assert.ok(head === committed || head === committed + 1, `${what}: backup head ${head}, node committed ${committed}`);
    restoreBackup(reader, dest, head === committed ? {} : { toVersion: committed });
  } finally {
    reader.close();
  }
  assert.equal(sqliteDump(dest), sqliteDump(sc.node.dbPath), `${what}: restored DB differs from the committed one`);
  return { head, committed };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

for (const [format, trials] of [['v2', Math.ceil((TRIALS * 2) / 3)], ['v1', Math.floor(TRIALS / 3)]] as Array<[BackupFormat, number]>) {
  describe(`SIGKILL during compaction (${format})`, () => {
    test(`${trials} kills at random moments; every restore equals the committed DB`, { timeout: 600_000 }, async () => {
      const sc = simScratch({}, format);
      scratches.push(sc);
      const { node } = sc;
      const rng = new Prng(format === 'v2' ? 4242 : 777);
      await node.boot();
      const big: [number, number] = [2000, 65536];
      assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 1, { datastoreSize: big, datastoreKeys: 300 }), 250)).failure, undefined);
      // calibration: one compaction without a kill tells how long the window to hit is
      const c0 = performance.now();
      const cal = await rpc(node, 'backup-compact');
      const calibrated = performance.now() - c0;
      // adapted as trials go, so the kills keep landing inside compactions (which shrink once compacted)
      let window = calibrated;
      assert.equal(cal.error, undefined);
      const phases = { beforeStart: 0, replaying: 0, writing: 0, done: 0 };
      const outcomes = { ahead: 0, equal: 0 };
      for (let t = 0; t < trials; t++) {
        assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 10 + t, { datastoreSize: big, datastoreKeys: 300 }), 25)).failure, undefined);
        const logsAt = node.logs.length;
        const writer = startWriter(node, 1000 + t, { tolerateDeath: true, datastoreSize: [100, 4096] });
        const reply = rpc(node, 'backup-compact').catch((e: Error) => e);
        await sleep(rng.int(0, Math.ceil(window * 1.3)));
        await node.killPlugin('SIGKILL');
        writer.stop();
        await writer.done;
        await reply;
        const seen = node.logs.slice(logsAt).map((l) => l.message);
        if (seen.some((m) => m.includes('compaction done'))) {
          phases.done++;
          window = Math.max(5, window * 0.7);
        } else if (seen.some((m) => m.includes('writing the snapshot'))) phases.writing++;
        else if (seen.some((m) => m.includes('compaction of'))) phases.replaying++;
        else {
          phases.beforeStart++;
          window *= 1.2;
        }
        await node.stop();
        const r = assertMatchesCommitted(sc, `trial ${t}`);
        if (r.head === r.committed) outcomes.equal++;
        else outcomes.ahead++;
        await node.boot();
      }
      // what the kills left behind does not block the next compaction (reference defect D12)
      const last = await rpc(node, 'backup-compact');
      assert.equal(last.error, undefined, JSON.stringify(last.error));
      assert.ok(!existsSync(`${backupPath(sc.backupUrl, sc.dir)}.compacting`));
      await node.stop();
      assertMatchesCommitted(sc, 'final');
      assert.deepEqual(node.violations, []);
      console.log(
        `# ${format}: ${trials} kills (calibration compaction ${calibrated.toFixed(0)} ms); last log before the kill: ` +
          `${JSON.stringify(phases)}; backup head = committed ${outcomes.equal}, one uncommitted write ahead ${outcomes.ahead}`,
      );
    });
  });
}
