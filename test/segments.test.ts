/**
 * Segments: a v2 backup split into files no larger than a configured size. The real plugin writes through
 * many 64 KiB segments under the simulator, restores equal the simulator's database, compaction works
 * across segments (while writing, and when SIGKILLed), and damaged or foreign segments are refused with
 * the file named.
 */
import { listHeaders } from '../src/backends/backend.js';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, openSync, closeSync, readdirSync, readSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { compactFile, identityOf } from '../src/compact/compact.js';
import { pathToFileURL } from 'node:url';
import { crc32 } from 'node:zlib';
import { after, describe, test } from 'node:test';
import { backupPath, createBackup, openReader } from '../src/backends/open.js';
import { listSegmentFiles, readSegmentHeader, SegmentedReader, SegmentedWriter, segmentPath } from '../src/backends/file/segments.js';
import { encodeChangeRecord, FILE_HEADER_LEN, SEAL_RECORD_LEN, V2Reader } from '../src/backends/file/v2.js';
import { listHistory } from '../src/compact/files.js';
import { BackupError } from '../src/engine/entries.js';
import { snapshotDatabase } from '../src/engine/live-db.js';
import { sqliteDump } from '../src/sim/db.js';
import { Prng, Workload, runWorkload } from '../src/sim/workload.js';
import { restoreBackup } from '../src/restore/restore.js';
import { rpc, startWriter } from './helpers/compact-sim.js';
import { runCli, show } from './helpers/cli.js';
import { simScratch, type SimScratch } from './helpers/sim-fixtures.js';

const SEG = 64 * 1024;
const scratches: SimScratch[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of scratches) await s.cleanup();
  if (!process.env.CLNVAULT_KEEP_TMP) for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'clnvault-seg-'));
  dirs.push(d);
  return d;
}

/** A sim scratch whose backup.lock asks for 64 KiB segments (and no automatic compaction unless asked). */
function segScratch(compaction: Record<string, unknown> = { auto: false }): SimScratch {
  const sc = simScratch({}, 'v2');
  scratches.push(sc);
  writeFileSync(join(sc.netDir, 'backup.lock'), JSON.stringify({ backend_url: sc.backupUrl, segment_bytes: SEG, compaction }));
  return sc;
}

function restoreDump(url: string, dir: string, toVersion?: number): string {
  const reader = openReader(url, dir);
  const dest = join(dir, `restored-${Date.now()}-${Math.random().toString(36).slice(2)}.sqlite3`);
  try {
    restoreBackup(reader, dest, toVersion === undefined ? {} : { toVersion });
  } finally {
    reader.close();
  }
  return sqliteDump(dest);
}

/**
 * Every segment is within the limit, unless it holds a single change record that alone is bigger (a
 * snapshot never exceeds it: a big one is chunked into part records).
 */
function assertWithinLimit(path: string, limit: number): number {
  const reader = SegmentedReader.open(path);
  try {
    for (const s of reader.segmentFiles()) {
      if (s.bytes > limit) {
        const r = V2Reader.open(s.path);
        try {
          assert.equal(r.stats().entries, 1, `${s.path} is ${s.bytes} bytes, over ${limit}, with more than one record`);
          assert.equal(listHeaders(r)[0]!.kind, 'change', `${s.path} is ${s.bytes} bytes, over ${limit}, and holds a snapshot`);
        } finally {
          r.close();
        }
      }
    }
    return reader.segmentCount;
  } finally {
    reader.close();
  }
}

/** A standalone backup for the file-level tests. */
function freshBackup(): string {
  const dir = tmp();
  const url = pathToFileURL(join(dir, 'b.clnvault')).href;
  return createBackup(url, dir, 'v2');
}

function stmt(i: number, size = 300): string[] {
  return [`INSERT INTO t VALUES (${i}, '${'x'.repeat(size)}')`];
}

/** All headers and statements, to compare two readings of a backup. */
function contents(path: string): string {
  const r = openReader(pathToFileURL(path).href, '/');
  try {
    return JSON.stringify(listHeaders(r).map((h) => {
      const e = r.read(h);
      return [h.kind, h.version, e.kind === 'change' ? e.statements : e.size];
    }));
  } finally {
    r.close();
  }
}

describe('segments: the real plugin under the simulator', () => {
  test('writes spread over many 64 KiB segments; the restore equals the sim DB', { timeout: 180_000 }, async () => {
    const sc = segScratch();
    const { node } = sc;
    await node.boot();
    const r = await runWorkload(node, Workload.fromDb(node.dbPath, 3, { datastoreSize: [100, 8192] }), 500);
    assert.equal(r.failure, undefined);
    await node.stop();
    const path = backupPath(sc.backupUrl, sc.dir);
    const n = assertWithinLimit(path, SEG);
    assert.ok(n >= 5, `only ${n} segments`);
    // the first file is the one the URL names; the others carry its backup id and their index
    const first = readSegmentHeader(path);
    for (const f of listSegmentFiles(path)) {
      const h = readSegmentHeader(f.path);
      assert.ok(h.backupId.equals(first.backupId));
      assert.equal(h.index, f.index);
    }
    assert.equal(restoreDump(sc.backupUrl, sc.dir), sqliteDump(node.dbPath));
    // the plugin picks up in the last segment after a restart, and keeps going
    await node.boot();
    assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 4, { datastoreSize: [100, 8192] }), 100)).failure, undefined);
    await node.stop();
    assert.equal(restoreDump(sc.backupUrl, sc.dir), sqliteDump(node.dbPath));
    assert.deepEqual(node.violations, []);
  });

  test('a snapshot bigger than a segment is chunked across segments within the limit and restores', { timeout: 180_000 }, async () => {
    const sc = segScratch();
    const { node } = sc;
    await node.boot();
    assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 5, { datastoreSize: [4096, 16384] }), 150)).failure, undefined);
    await node.stop();
    assert.ok(statSync(node.dbPath).size > 2 * SEG, 'the database must be bigger than a segment');
    // what init and a start-up re-baseline do: a snapshot of the live DB appended by the writer
    const path = freshBackup();
    const snap = join(sc.dir, 'snap.sqlite3');
    const version = await snapshotDatabase(node.dbPath, snap);
    const w = SegmentedWriter.open(path, { segmentBytes: SEG });
    try {
      for (let i = 1; i <= 3; i++) w.appendChange(i, stmt(i));
      w.appendSnapshotFile(version, snap);
      assert.equal(w.head(), version);
      assert.ok(w.headIsSnapshot());
    } finally {
      w.close();
    }
    // the changes and the first slice share the first file; every file, the last slice's too, within the limit
    const n = assertWithinLimit(path, SEG);
    assert.ok(n >= 3, `${n} segments`);
    for (const f of [path, ...listSegmentFiles(path).map((s) => s.path)]) assert.ok(statSync(f).size <= SEG, `${f}: ${statSync(f).size} bytes`);
    assert.equal(restoreDump(pathToFileURL(path).href, sc.dir), sqliteDump(node.dbPath));
    // the next change goes on beside the last slice, or in a new segment when it does not fit
    const w2 = SegmentedWriter.open(path, { segmentBytes: SEG });
    try {
      w2.appendChange(version + 1, ['PRAGMA foreign_keys = ON']);
      assert.ok(w2.segmentFiles().length >= n);
      assert.equal(w2.head(), version + 1);
    } finally {
      w2.close();
    }
  });

  test('compaction of a multi-segment backup while the sim writes: every write answered, restore equal', { timeout: 240_000 }, async () => {
    const sc = segScratch({ auto: false, history: 1 });
    const { node } = sc;
    await node.boot();
    assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 7, { datastoreSize: [100, 8192] }), 600)).failure, undefined);
    const path = backupPath(sc.backupUrl, sc.dir);
    const segsBefore = listSegmentFiles(path).length;
    assert.ok(segsBefore >= 5, `only ${segsBefore + 1} segments`);
    const oldSet = readSegmentHeader(path).setId;
    for (let round = 0; round < 2; round++) {
      const writer = startWriter(node, 200 + round);
      await new Promise((res) => setTimeout(res, 150));
      const reply = await rpc(node, 'backup-compact');
      await new Promise((res) => setTimeout(res, 30));
      writer.stop();
      await writer.done;
      assert.equal(reply.error, undefined, JSON.stringify(reply.error));
      assert.equal(writer.failure, null);
      assert.ok(writer.transactions > 0);
      // entries, not bytes: a snapshot of a young database can be larger than the log it replaces
      const stats = reply.result as { before: { version_count: number }; after: { version_count: number } };
      assert.ok(stats.after.version_count < stats.before.version_count, JSON.stringify(stats));
    }
    await node.stop();
    // the compacted backup keeps the limit: the snapshot (bigger than a segment) chunked over the first
    // files, the newest entries and what was written meanwhile in segments of the new set
    const segsAfter = assertWithinLimit(path, SEG);
    assert.ok(segsAfter >= 2, `${segsAfter} segments after compaction`);
    const done = node.logs.map((l) => l.message).filter((m) => m.includes('compaction done'));
    assert.equal(done.length, 2);
    console.log(`# ${segsBefore + 1} segments before, ${segsAfter} after; ${done.join(' | ')}`);
    // the live backup is a new set; the old set's extra segments are gone from the live names
    const set = readSegmentHeader(path).setId;
    assert.notEqual(set, oldSet);
    assert.deepEqual(listSegmentFiles(path).filter((f) => f.setId !== set), []);
    assert.equal(restoreDump(sc.backupUrl, sc.dir), sqliteDump(node.dbPath));
    // the history copy keeps its segments together and still reads
    const hist = listHistory(path);
    assert.equal(hist.length, 1);
    const hr = openReader(pathToFileURL(hist[0]!.path).href, sc.dir);
    try {
      assert.ok(listHeaders(hr).length > 0);
    } finally {
      hr.close();
    }
    assert.deepEqual(node.violations, []);
  });

  test('SIGKILL during compaction of a multi-segment backup leaves a restorable backup', { timeout: 300_000 }, async () => {
    const sc = segScratch();
    const { node } = sc;
    const rng = new Prng(99);
    await node.boot();
    const path = backupPath(sc.backupUrl, sc.dir);
    const big: [number, number] = [2000, 16384];
    const phases = { beforeStart: 0, replaying: 0, writing: 0, done: 0 };
    for (let t = 0; t < 6; t++) {
      assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 50 + t, { datastoreSize: big, datastoreKeys: 300 }), 120)).failure, undefined);
      assert.ok(listSegmentFiles(path).length >= 2);
      const logsAt = node.logs.length;
      const writer = startWriter(node, 500 + t, { tolerateDeath: true, datastoreSize: [100, 4096] });
      const reply = rpc(node, 'backup-compact').catch((e: Error) => e);
      await new Promise((res) => setTimeout(res, rng.int(0, 400)));
      await node.killPlugin('SIGKILL');
      writer.stop();
      await writer.done;
      await reply;
      const seen = node.logs.slice(logsAt).map((l) => l.message);
      if (seen.some((m) => m.includes('compaction done'))) phases.done++;
      else if (seen.some((m) => m.includes('writing the snapshot'))) phases.writing++;
      else if (seen.some((m) => m.includes('compaction of'))) phases.replaying++;
      else phases.beforeStart++;
      await node.stop();
      const committed = node.dataVersion();
      const reader = openReader(sc.backupUrl, sc.dir);
      let head: number;
      try {
        head = reader.stats().head;
      } finally {
        reader.close();
      }
      assert.ok(head === committed || head === committed + 1, `trial ${t}: backup head ${head}, node committed ${committed}`);
      assert.equal(restoreDump(sc.backupUrl, sc.dir, committed), sqliteDump(node.dbPath), `trial ${t}`);
      await node.boot();
    }
    console.log(`# segmented backup, 6 kills; last log before the kill: ${JSON.stringify(phases)}`);
    const last = await rpc(node, 'backup-compact');
    assert.equal(last.error, undefined, JSON.stringify(last.error));
    assert.ok(!existsSync(`${path}.compacting`));
    await node.stop();
    const set = readSegmentHeader(path).setId;
    assert.deepEqual(listSegmentFiles(path).filter((f) => f.setId !== set), []);
    assert.equal(restoreDump(sc.backupUrl, sc.dir), sqliteDump(node.dbPath));
  });
});

describe('segments: files', () => {
  /** Appends versions 1..n, small records, with 4 KiB segments. */
  function filled(n: number, limit = 4096): string {
    const path = freshBackup();
    const w = SegmentedWriter.open(path, { segmentBytes: limit });
    try {
      for (let i = 1; i <= n; i++) w.appendChange(i, stmt(i));
    } finally {
      w.close();
    }
    return path;
  }

  test('reader and writer agree across segments; global offsets are unique and ordered', () => {
    const path = filled(60);
    const segs = listSegmentFiles(path);
    assert.ok(segs.length >= 4);
    const r = SegmentedReader.open(path);
    try {
      const hs = listHeaders(r);
      assert.deepEqual(hs.map((h) => h.version), Array.from({ length: 60 }, (_, i) => i + 1));
      for (let i = 1; i < hs.length; i++) assert.ok(hs[i]!.offset > hs[i - 1]!.offset);
      for (const h of hs) {
        const e = r.read(h);
        assert.equal(e.offset, h.offset);
        assert.deepEqual(e.kind === 'change' && e.statements, stmt(h.version));
      }
      const w = SegmentedWriter.open(path, { segmentBytes: 4096 });
      try {
        assert.equal(w.endOffset(), r.stats().bytes);
        assert.equal(w.stats().entries, 60);
        assert.equal(w.head(), 60);
      } finally {
        w.close();
      }
    } finally {
      r.close();
    }
  });

  test('a torn tail in the last segment is cut on open; a half-started segment is removed', () => {
    const path = filled(30);
    const before = contents(path);
    const segs = listSegmentFiles(path);
    const last = segs[segs.length - 1]!;
    // an append that never completed: the first 50 bytes of a record
    const fd = openSync(last.path, 'a');
    writeSync(fd, encodeChangeRecord(31, stmt(31)).subarray(0, 50));
    closeSync(fd);
    // and a crash while starting the next segment: a file without its full header
    const next = segmentPath(path, last.setId, last.index + 1);
    writeFileSync(next, Buffer.alloc(20));
    const w = SegmentedWriter.open(path, { segmentBytes: 4096 });
    try {
      const kinds = w.repaired().map((p) => p.kind);
      assert.deepEqual(kinds.sort(), ['torn-tail', 'torn-tail']);
      assert.ok(w.repaired().some((p) => p.message.includes(next)));
      assert.equal(w.head(), 30);
    } finally {
      w.close();
    }
    assert.ok(!existsSync(next));
    assert.equal(contents(path), before);
  });

  test('an empty last segment (a crash right after starting it) is dropped on open', () => {
    const path = filled(30);
    const segs = listSegmentFiles(path);
    const last = segs[segs.length - 1]!;
    const w0 = SegmentedWriter.open(path, { segmentBytes: 4096 });
    const endBefore = w0.endOffset();
    w0.close();
    const h = readSegmentHeader(last.path);
    const next = segmentPath(path, last.setId, last.index + 1);
    // a valid header and nothing else, as left by a kill between the segment's creation and its first record
    const raw = Buffer.alloc(FILE_HEADER_LEN);
    const fd = openSync(last.path, 'r');
    try {
      readSync(fd, raw, 0, FILE_HEADER_LEN, 0);
    } finally {
      closeSync(fd);
    }
    raw.writeUInt32BE(last.index + 1, 40);
    raw.writeUInt32BE(crc32(raw.subarray(0, 60)), 60);
    writeFileSync(next, raw);
    assert.equal(readSegmentHeader(next).index, h.index + 1);
    const w = SegmentedWriter.open(path, { segmentBytes: 4096 });
    try {
      assert.equal(w.head(), 30);
      assert.equal(w.endOffset(), endBefore);
    } finally {
      w.close();
    }
    assert.ok(!existsSync(next));
  });

  test('a missing middle segment, a foreign one and one out of order are refused, naming the file', () => {
    const path = filled(60);
    const segs = listSegmentFiles(path);
    assert.ok(segs.length >= 4);
    const url = pathToFileURL(path).href;
    const open = (): void => openReader(url, '/').close();
    const openW = (): void => SegmentedWriter.open(path, { segmentBytes: 4096 }).close();

    // another backup's segment under this backup's name
    const other = filled(60);
    const otherSegs = listSegmentFiles(other);
    const keep = `${segs[2]!.path}.keep`;
    renameSync(segs[2]!.path, keep);
    copyFileSync(otherSegs[2]!.path, segs[2]!.path);
    for (const f of [open, openW]) {
      assert.throws(f, (e: unknown) => e instanceof BackupError && e.message.includes(segs[2]!.path) && /belongs to another backup/.test(e.message));
    }
    // this backup's segment 3 copied in as segment 4 (segs[i] is segment i + 2: the first file is not a .seg- file)
    copyFileSync(segs[1]!.path, segs[2]!.path);
    for (const f of [open, openW]) {
      assert.throws(f, (e: unknown) => e instanceof BackupError && e.message.includes(segs[2]!.path) && /header says segment 3 .*name says segment 4/.test(e.message));
    }
    // segment 3 gone while 4 exists
    unlinkSync(segs[2]!.path);
    const gap = (e: unknown): boolean =>
      e instanceof BackupError && e.message.includes(segs[2]!.path) && e.message.includes(segs[3]!.path) && /missing/.test(e.message);
    assert.throws(openW, gap);
    // a reader reports it as damage (inspect and verify exit 1, issue 10 item 2) and refuses to list past it
    const r = openReader(url, '/');
    try {
      const p = r.problems().find((q) => q.kind === 'corrupt')!;
      assert.ok(gap(new BackupError(p.message, path)), p.message);
      assert.throws(() => listHeaders(r), gap);
    } finally {
      r.close();
    }
    renameSync(keep, segs[2]!.path);
    open();
    // the URL must name the first file
    assert.throws(
      () => SegmentedReader.open(segs[0]!.path),
      (e: unknown) => e instanceof BackupError && /segment 2 of a segmented backup/.test(e.message),
    );
  });

  test('damage inside a segment is reported with the segment file and its local offset', () => {
    const path = filled(60);
    const segs = listSegmentFiles(path);
    const victim = segs[1]!.path;
    const fd = openSync(victim, 'r+');
    writeSync(fd, Buffer.from('XX'), 0, 2, FILE_HEADER_LEN + 40 + 5);
    closeSync(fd);
    const r = openReader(pathToFileURL(path).href, '/');
    try {
      assert.throws(
        () => listHeaders(r),
        (e: unknown) => e instanceof BackupError && e.message.includes(victim) && /offset \d+/.test(e.message),
      );
    } finally {
      r.close();
    }
  });

  test('dropHead crosses back into the previous segment, with the head group split across the boundary', () => {
    const limit = 4096;
    const path = freshBackup();
    const w = SegmentedWriter.open(path, { segmentBytes: limit });
    try {
      let v = 0;
      while (w.segmentFiles()[0]!.bytes < limit - 600) w.appendChange(++v, stmt(v));
      // fill the first segment to 10 bytes short of the limit with version v+1...
      // (a segment keeps SEAL_RECORD_LEN bytes for the seal that ends it when the next one starts)
      const room = limit - SEAL_RECORD_LEN - w.segmentFiles()[0]!.bytes - 10;
      const pad = 'y'.repeat(room - 40 - 8 - `INSERT INTO t VALUES (${v + 1}, '')`.length);
      const big = [`INSERT INTO t VALUES (${v + 1}, '${pad}')`];
      assert.equal(encodeChangeRecord(v + 1, big).length, room);
      w.appendChange(++v, big);
      assert.equal(w.segmentFiles().length, 1);
      // ...so its PRAGMA companion (same version) starts segment 2
      w.appendChange(v, ['PRAGMA foreign_keys = ON']);
      assert.equal(w.segmentFiles().length, 2);
      const second = w.segmentFiles()[1]!.path;
      assert.equal(w.dropHead(), v - 1);
      assert.equal(w.segmentFiles().length, 1);
      assert.ok(!existsSync(second));
      assert.equal(w.head(), v - 1);
      // writing goes on, into a fresh segment 2 when needed
      w.appendChange(v, stmt(v));
      w.appendChange(v + 1, stmt(v + 1, 600));
    } finally {
      w.close();
    }
    const r = SegmentedReader.open(path);
    try {
      assert.equal(r.stats().head, listHeaders(r).at(-1)!.version);
      assert.equal(listHeaders(r).filter((h) => h.version === r.stats().head - 1).length, 1);
    } finally {
      r.close();
    }
  });

  test('compaction across segments while the writer starts new ones; the result keeps the limit, history its segments', () => {
    const limit = 4096;
    const path = freshBackup();
    const w = SegmentedWriter.open(path, { segmentBytes: limit });
    const row = (i: number): string[] => [`INSERT INTO t VALUES (${i}, '${'x'.repeat(300)}')`];
    try {
      w.appendChange(1, ['CREATE TABLE t(a, b)']);
      let v = 1;
      while (v < 80) w.appendChange(++v, row(v));
      const oldExtras = listSegmentFiles(path).length;
      assert.ok(oldExtras >= 5);
      let calls = 0;
      let atSwap = { extras: 0, head: 0 };
      const oldSet = readSegmentHeader(path).setId;
      const outcome = compactFile(
        path,
        {
          // the writer keeps appending while compaction runs (not inside exclusive(), as with the real lock), across segment boundaries
          committedEnd: () => {
            if (calls++ < 2) for (let k = 0; k < 25; k++) w.appendChange(++v, row(v));
            return w.endOffset();
          },
          committedFile: () => identityOf(path),
          failedAfterSwap: () => undefined,
          truncations: () => 0,
          exclusive: (fn) => {
            atSwap = { extras: listSegmentFiles(path).filter((f) => f.setId === oldSet).length, head: v };
            fn(() => undefined);
          },
          log: () => undefined,
        },
        { format: 'v2', history: 1, segmentBytes: limit },
      );
      assert.ok(outcome.compacted);
      assert.ok(outcome.caughtUp > limit, `only ${outcome.caughtUp} bytes carried over`);
      w.reopen();
      assert.equal(w.head(), v);
      w.appendChange(++v, row(v));
      const hist = listHistory(path);
      assert.equal(hist.length, 1);
      assert.ok(atSwap.extras > oldExtras, 'the writer started segments during the compaction');
      assert.equal(listSegmentFiles(hist[0]!.path).length, atSwap.extras);
      const set = readSegmentHeader(path).setId;
      assert.deepEqual(listSegmentFiles(path).filter((f) => f.setId !== set), []);
      assertWithinLimit(path, limit);
      const r = SegmentedReader.open(path);
      try {
        const hs = listHeaders(r);
        assert.equal(hs[0]!.kind, 'snapshot');
        const snapV = hs[0]!.version;
        assert.deepEqual(hs.slice(1).map((h) => h.version), Array.from({ length: v - snapV }, (_, i) => snapV + 1 + i));
        for (const h of hs.slice(1)) assert.deepEqual((r.read(h) as { statements: string[] }).statements, row(h.version));
        const db = join(dirname(path), 'snap.sqlite3');
        const e = r.read(hs[0]!);
        assert.ok(e.kind === 'snapshot');
        e.writeTo(db);
        const sdb = new Database(db, { readonly: true });
        try {
          assert.equal((sdb.prepare('SELECT count(*) AS n FROM t').get() as { n: number }).n, snapV - 1);
        } finally {
          sdb.close();
        }
      } finally {
        r.close();
      }
      // the history copy still reads as the backup before compaction, across its own segments
      const hr = openReader(pathToFileURL(hist[0]!.path).href, '/');
      try {
        assert.equal(listHeaders(hr).length, atSwap.head);
      } finally {
        hr.close();
      }
    } finally {
      w.close();
    }
  });

  test('clnvault inspect lists the segments; init and compact take --segment-bytes', async () => {
    const path = freshBackup();
    const w = SegmentedWriter.open(path, { segmentBytes: 4096 });
    try {
      w.appendChange(1, ['CREATE TABLE t(a, b)']);
      for (let v = 2; v <= 60; v++) w.appendChange(v, stmt(v));
    } finally {
      w.close();
    }
    const url = pathToFileURL(path).href;
    const text = await runCli(['inspect', url]);
    assert.equal(text.code, 0, show(text));
    const n = listSegmentFiles(path).length + 1;
    assert.match(text.stdout, new RegExp(`segments +${n} files`));
    for (const f of listSegmentFiles(path)) assert.ok(text.stdout.includes(f.path), show(text));
    const json = await runCli(['inspect', '--json', url]);
    const report = JSON.parse(json.stdout) as { segments: { index: number; file: string; bytes: number }[] };
    assert.deepEqual(report.segments.map((s) => s.index), Array.from({ length: n }, (_, i) => i + 1));
    assert.equal(report.segments[0]!.file, path);

    const c = await runCli(['compact', '--segment-bytes', '4096', url]);
    assert.equal(c.code, 0, show(c));
    assertWithinLimit(path, 4096);
    const bad = await runCli(['compact', '--segment-bytes', '12', url]);
    assert.equal(bad.code, 2, show(bad));

    const dir = tmp();
    const net = join(dir, 'net');
    mkdirSync(net);
    const i = await runCli(['init', '--lightning-dir', net, '--segment-bytes', '65536', pathToFileURL(join(dir, 'n.bkp')).href]);
    assert.equal(i.code, 0, show(i));
    assert.equal((JSON.parse(readFileSync(join(net, 'backup.lock'), 'utf8')) as { segment_bytes: number }).segment_bytes, 65536);
  });

  test('a first file with a damaged header is reported by the writer as before segments', () => {
    const path = freshBackup();
    writeFileSync(path, Buffer.from('CLNVAULT\u0000\u0002'));
    assert.throws(
      () => SegmentedWriter.open(path),
      (e: unknown) => e instanceof BackupError && /is not a usable clnvault v2 backup: it has 10 bytes/.test(e.message),
    );
    // and the lock was released: a second attempt gets the same answer, not "already open for writing"
    assert.throws(() => SegmentedWriter.open(path), (e: unknown) => e instanceof BackupError && /10 bytes/.test(e.message));
  });

  test('a single-file backup stays one file, byte for byte what it was before segments', () => {
    const path = filled(5, 1 << 20);
    assert.deepEqual(listSegmentFiles(path), []);
    assert.equal(readSegmentHeader(path).index, 0);
    assert.equal(readSegmentHeader(path).setId, 0);
    const r = openReader(pathToFileURL(path).href, '/');
    try {
      assert.ok(r instanceof V2Reader);
    } finally {
      r.close();
    }
    assert.ok(readdirSync(join(path, '..')).every((n) => !n.includes('.seg-')));
  });
});

