/**
 * Issue 9, item 4: a crash or an I/O error while the writer starts a new segment must not block restores.
 * createSegment removes a file whose header it could not write, and every reader passes over a last
 * segment that holds no record, as the writer's open does. Real plugin under the simulator, real files,
 * the CLI for the restore; the write error comes from test/helpers/fault-preload.ts.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { backupPath } from '../src/backends/open.js';
import { listSegmentFiles, readSegmentHeader, segmentPath } from '../src/backends/file/segments.js';
import { sqliteDump } from '../src/sim/db.js';
import { Workload, runWorkload } from '../src/sim/workload.js';
import { runCli, show } from './helpers/cli.js';
import { armFault, faultEnv, faultFired } from './helpers/faults.js';
import { simScratch, type SimScratch } from './helpers/sim-fixtures.js';

const SEG = 64 * 1024;
const scratches: SimScratch[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of scratches) await s.cleanup();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function segScratch(env: NodeJS.ProcessEnv = {}): SimScratch {
  const sc = simScratch({ env }, 'v2');
  scratches.push(sc);
  writeFileSync(join(sc.netDir, 'backup.lock'), JSON.stringify({ backend_url: sc.backupUrl, segment_bytes: SEG, compaction: { auto: false } }));
  return sc;
}

/** `clnvault restore` of the backup equals the node's committed database. */
async function assertCliRestore(sc: SimScratch, what: string): Promise<void> {
  const dest = join(sc.dir, `restored-${Date.now()}-${Math.random().toString(36).slice(2)}.sqlite3`);
  const r = await runCli(['restore', sc.backupUrl, dest], { cwd: sc.dir });
  assert.equal(r.code, 0, `${what}: ${show(r)}`);
  assert.equal(sqliteDump(dest), sqliteDump(sc.node.dbPath), `${what}: the restored database differs from the committed one`);
}

describe('a new segment that never got its header (issue 9, item 4)', () => {
  test('an I/O error writing the header: the file is removed, the node stops, clnvault restore works at once', { timeout: 120_000 }, async () => {
    const d = mkdtempSync(join(tmpdir(), 'clnvault-fault-'));
    dirs.push(d);
    const spec = join(d, 'fault.json');
    const sc = segScratch(faultEnv(spec));
    const { node } = sc;
    const path = backupPath(sc.backupUrl, sc.dir);
    await node.boot();
    armFault(spec, { from: 'segment', thread: 'main', call: 'writeSync', at: 1 });
    const r = await runWorkload(node, Workload.fromDb(node.dbPath, 5, { datastoreSize: [500, 4096] }), 2000);
    const f = faultFired(spec);
    assert.ok(f !== null, 'the writer started a segment');
    assert.equal(f.call, 'writeSync', 'the header write failed');
    assert.ok(r.failure !== undefined, 'the write that needed the new segment was refused');
    assert.notEqual(node.state, 'running');
    for (const s of listSegmentFiles(path)) assert.doesNotThrow(() => readSegmentHeader(s.path), `${s.path} has its header`);
    // before any plugin start: the restore must not depend on the writer's clean-up
    await assertCliRestore(sc, 'after the failed segment start');
    armFault(spec, { at: 0 });
    await node.restart();
    await node.boot();
    assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 6, { datastoreSize: [500, 4096] }), 100)).failure, undefined);
    await assertCliRestore(sc, 'after a restart and more writes');
  });

  for (const [what, bytes] of [['an empty file', 0], ['a torn header (20 of 64 bytes)', 20]] as Array<[string, number]>) {
    test(`a crash while starting a segment leaves ${what}: clnvault restore passes over it`, { timeout: 120_000 }, async () => {
      const sc = segScratch();
      const { node } = sc;
      const path = backupPath(sc.backupUrl, sc.dir);
      await node.boot();
      while (listSegmentFiles(path).length < 2) {
        assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, listSegmentFiles(path).length + 10, { datastoreSize: [500, 4096] }), 50)).failure, undefined);
      }
      await node.stop();
      const set = readSegmentHeader(path).setId;
      const next = segmentPath(path, set, listSegmentFiles(path).length + 2);
      writeFileSync(next, Buffer.alloc(bytes, 0x43));
      await assertCliRestore(sc, `with ${what} as the last segment`);
      const v = await runCli(['verify', sc.backupUrl], { cwd: sc.dir });
      assert.equal(v.code, 0, show(v));
      assert.match(v.stdout, /a segment without its header .* passed over/, show(v));
    });
  }
});
