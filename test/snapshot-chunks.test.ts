/**
 * Chunked snapshots: a snapshot larger than a segment is split into part records so that no segment file
 * exceeds the limit (docs/format-v2.md, "Chunked snapshots"). Through `clnvault init`, the plugin's
 * re-baseline and compaction; torn parts are cut on open; a damaged part is reported and refused.
 */
import { listHeaders } from '../src/backends/backend.js';
import assert from 'node:assert/strict';
import { closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readSync, rmSync, statSync, truncateSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { backupPath, createBackup, openReader } from '../src/backends/open.js';
import { listSegmentFiles, sealOf, SegmentedReader, SegmentedWriter } from '../src/backends/file/segments.js';
import { FILE_HEADER_LEN, RECORD_HEADER_LEN, SEAL_RECORD_LEN, TYPE_SNAPSHOT, TYPE_SNAPSHOT_PART, V2Reader, V2Writer, type RecordInfo } from '../src/backends/file/v2.js';
import { compactFile, identityOf } from '../src/compact/compact.js';
import { BackupError } from '../src/engine/entries.js';
import { snapshotDatabase } from '../src/engine/live-db.js';
import { sqliteDump } from '../src/sim/db.js';
import { Workload, runWorkload } from '../src/sim/workload.js';
import { restoreBackup } from '../src/restore/restore.js';
import { runCli, show } from './helpers/cli.js';
import { simScratch, type SimScratch } from './helpers/sim-fixtures.js';
import { SimNode } from '../src/sim/lightningd.js';
import Database from 'better-sqlite3';

const SEG = 64 * 1024;
const scratches: SimScratch[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of scratches) await s.cleanup();
  if (!process.env.CLNVAULT_KEEP_TMP) for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'clnvault-chunks-'));
  dirs.push(d);
  return d;
}

/** The backup's files: the first one and its segments of the current set, in order. */
function files(path: string): string[] {
  const r = SegmentedReader.open(path);
  try {
    return r.segmentFiles().map((s) => s.path);
  } finally {
    r.close();
  }
}

/** No file of the backup is larger than the limit: not even one holding a snapshot. */
function assertAllWithin(path: string, limit: number): number {
  const fs = files(path);
  for (const f of fs) assert.ok(statSync(f).size <= limit, `${f} is ${statSync(f).size} bytes, over the ${limit}-byte limit`);
  return fs.length;
}

function restoreDump(path: string, toVersion?: number): string {
  const reader = openReader(pathToFileURL(path).href, '/');
  const dest = join(tmp(), 'restored.sqlite3');
  try {
    restoreBackup(reader, dest, toVersion === undefined ? {} : { toVersion });
  } finally {
    reader.close();
  }
  return sqliteDump(dest);
}

/** Every record of the backup with its global offset, parts included. */
function rawRecords(path: string): RecordInfo[] {
  const out: RecordInfo[] = [];
  let base = 0;
  for (const f of files(path)) {
    const b = base;
    const r = V2Reader.open(f, (rec) => out.push({ ...rec, offset: rec.offset + b }));
    try {
      // global offsets leave segment seals out
      base += r.dataEnd - FILE_HEADER_LEN;
    } finally {
      r.close();
    }
  }
  return out;
}

/** The snapshot entries as a reader presents them, with their part counts. */
function snapshots(path: string): { version: number; size: number; parts: number }[] {
  const r = openReader(pathToFileURL(path).href, '/');
  try {
    return listHeaders(r)
      .filter((h) => h.kind === 'snapshot')
      .map((h) => {
        const e = r.read(h);
        assert.equal(e.kind, 'snapshot');
        return { version: e.version, size: e.kind === 'snapshot' ? e.size : 0, parts: e.kind === 'snapshot' ? e.parts ?? 1 : 0 };
      });
  } finally {
    r.close();
  }
}

/** Copies a backup (first file and segments) into a fresh directory; returns the copy's path. */
function copyBackup(path: string): string {
  const d = tmp();
  const dest = join(d, basename(path));
  for (const f of [path, ...listSegmentFiles(path).map((s) => s.path)]) copyFileSync(f, join(d, basename(f)));
  return dest;
}

/** Cuts the backup's virtual file at global offset `g`: that segment is truncated, later ones removed. */
function cutAt(path: string, g: number): void {
  let base = 0;
  const fs = files(path);
  for (let i = 0; i < fs.length; i++) {
    // global offsets leave segment seals out
    const size = statSync(fs[i]!).size - (sealOf(fs[i]!) ? SEAL_RECORD_LEN : 0);
    const local = g - base;
    if (local < size) {
      assert.ok(local >= FILE_HEADER_LEN || i === 0);
      truncateSync(fs[i]!, Math.max(local, FILE_HEADER_LEN));
      for (const f of fs.slice(i + 1)) unlinkSync(f);
      return;
    }
    base += size - FILE_HEADER_LEN;
  }
  throw new Error(`cut offset ${g} is past the end`);
}

let dbPath = '';
let dbDir = '';

describe('chunked snapshots', () => {
  before(async () => {
    // a real lightningd-shaped database a few times bigger than a 64 KiB segment
    const sc = simScratch({}, 'v2');
    scratches.push(sc);
    await sc.node.boot();
    assert.equal((await runWorkload(sc.node, Workload.fromDb(sc.node.dbPath, 11, { datastoreSize: [4096, 16384] }), 220)).failure, undefined);
    await sc.node.stop();
    dbDir = tmp();
    dbPath = join(dbDir, 'lightningd.sqlite3');
    copyFileSync(sc.node.dbPath, dbPath);
    assert.ok(statSync(dbPath).size > 3 * SEG, `the database (${statSync(dbPath).size} bytes) must be bigger than three segments`);
  });

  test('clnvault init --segment-bytes with a big database: every file within the limit, restore equal, inspect shows one snapshot', { timeout: 120_000 }, async () => {
    const d = tmp();
    const net = join(d, 'regtest');
    mkdirSync(net);
    copyFileSync(dbPath, join(net, 'lightningd.sqlite3'));
    const url = pathToFileURL(join(d, 'b.clnvault')).href;
    const r = await runCli(['init', '--segment-bytes', String(SEG), '--lightning-dir', net, url]);
    assert.equal(r.code, 0, show(r));
    const path = backupPath(url, d);
    const n = assertAllWithin(path, SEG);
    assert.ok(n >= 4, `${n} files`);
    const snaps = snapshots(path);
    assert.equal(snaps.length, 1);
    assert.equal(snaps[0]!.size, statSync(dbPath).size);
    assert.ok(snaps[0]!.parts >= 4, `${snaps[0]!.parts} records`);
    assert.equal(restoreDump(path), sqliteDump(dbPath));
    const ins = await runCli(['inspect', url]);
    assert.equal(ins.code, 0, show(ins));
    assert.match(ins.stdout, /entries\s+1 \(0 changes, 1 snapshots\)/);
    assert.match(ins.stdout, new RegExp(`in ${snaps[0]!.parts} records`));
    const js = await runCli(['inspect', '--json', url]);
    const report = JSON.parse(js.stdout) as { snapshots: { parts?: number }[]; entries: number };
    assert.equal(report.entries, 1);
    assert.equal(report.snapshots[0]!.parts, snaps[0]!.parts);
    // the writer opens it cleanly (nothing to repair) and goes on in a new segment
    const w = SegmentedWriter.open(path, { segmentBytes: SEG });
    try {
      assert.deepEqual(w.repaired(), []);
      assert.ok(w.headIsSnapshot());
      assert.equal(w.stats().entries, 1);
    } finally {
      w.close();
    }
  });

  test("the plugin's re-baseline of a big database, then changes and compaction: every file within the limit, restores equal", { timeout: 240_000 }, async () => {
    const sc = simScratch({}, 'v2');
    scratches.push(sc);
    SimNode.writeBackupLock(sc.netDir, sc.backupUrl);
    writeFileSync(join(sc.netDir, 'backup.lock'), JSON.stringify({ backend_url: sc.backupUrl, segment_bytes: SEG, compaction: { auto: false } }));
    // the node's database is ahead of the (empty) backup: the plugin re-baselines at start
    copyFileSync(dbPath, sc.node.dbPath);
    await sc.node.boot();
    assert.equal((await runWorkload(sc.node, Workload.fromDb(sc.node.dbPath, 12, { datastoreSize: [100, 4096] }), 60)).failure, undefined);
    await sc.node.stop();
    assert.ok(sc.node.logs.some((l) => /re-baselined/.test(l.message)), 'no re-baseline');
    const path = backupPath(sc.backupUrl, sc.dir);
    assertAllWithin(path, SEG);
    const snaps = snapshots(path);
    assert.equal(snaps.length, 1);
    assert.ok(snaps[0]!.parts >= 4, `${snaps[0]!.parts} records`);
    const want = sqliteDump(sc.node.dbPath);
    assert.equal(restoreDump(path), want);

    // compaction reads the chunked snapshot as one and writes its own snapshot chunked
    const w = SegmentedWriter.open(path, { segmentBytes: SEG });
    let outcome;
    try {
      outcome = compactFile(
        path,
        { committedEnd: () => w.endOffset(), committedFile: () => identityOf(path), truncations: () => 0, exclusive: (fn) => fn(() => undefined), failedAfterSwap: () => undefined, log: () => undefined },
        { format: 'v2', history: 0, segmentBytes: SEG },
      );
      assert.ok(outcome.compacted);
      w.reopen();
      assert.deepEqual(w.repaired(), []);
    } finally {
      w.close();
    }
    assertAllWithin(path, SEG);
    const after = snapshots(path);
    assert.equal(after.length, 1);
    assert.equal(after[0]!.version, outcome.snapshotVersion);
    assert.ok(after[0]!.parts >= 4, `${after[0]!.parts} records after compaction`);
    assert.equal(restoreDump(path), want);
    // and compacting the compacted backup again (its input now starts with a chunked snapshot) keeps it equal
    const w2 = SegmentedWriter.open(path, { segmentBytes: SEG });
    try {
      compactFile(
        path,
        { committedEnd: () => w2.endOffset(), committedFile: () => identityOf(path), truncations: () => 0, exclusive: (fn) => fn(() => undefined), failedAfterSwap: () => undefined, log: () => undefined },
        { format: 'v2', history: 0, segmentBytes: SEG },
      );
    } finally {
      w2.close();
    }
    assertAllWithin(path, SEG);
    assert.equal(restoreDump(path), want);
  });

  /** A backup: snapshot A (chunked), a few changes, then snapshot B (chunked). Returns where B starts. */
  async function twoSnapshots(): Promise<{ path: string; before: string; beforeHead: number; bStart: number; bRecords: RecordInfo[] }> {
    const dir = tmp();
    const path = createBackup(pathToFileURL(join(dir, 'b.clnvault')).href, dir, 'v2');
    const snap = join(dir, 'snap.sqlite3');
    const version = await snapshotDatabase(dbPath, snap);
    const w = SegmentedWriter.open(path, { segmentBytes: SEG });
    try {
      w.appendSnapshotFile(version, snap);
      const dv = (v: number): string => `UPDATE vars SET intval = ${v} WHERE name = 'data_version'`;
      w.appendChange(version + 1, ['CREATE TABLE chunk_test(a INTEGER, b TEXT)', dv(version + 1)]);
      for (let i = 2; i <= 6; i++) w.appendChange(version + i, [`INSERT INTO chunk_test VALUES (${i}, '${'y'.repeat(2000)}')`, dv(version + i)]);
    } finally {
      w.close();
    }
    const beforeDump = restoreDump(path);
    const bStart = rawRecords(path).at(-1)!;
    // snapshot B: the database as restored, one version on
    const bSrc = join(dir, 'b-src.sqlite3');
    const reader = openReader(pathToFileURL(path).href, '/');
    try {
      restoreBackup(reader, bSrc, {});
    } finally {
      reader.close();
    }
    const db = new Database(bSrc);
    db.prepare(`UPDATE vars SET intval = ? WHERE name = 'data_version'`).run(version + 7);
    db.close();
    const w2 = SegmentedWriter.open(path, { segmentBytes: SEG });
    try {
      w2.appendSnapshotFile(version + 7, bSrc);
    } finally {
      w2.close();
    }
    const all = rawRecords(path);
    const bRecords = all.filter((r) => r.offset > bStart.offset);
    return { path, before: beforeDump, beforeHead: version + 6, bStart: bStart.offset + 40 + bStart.length, bRecords };
  }

  test('a torn tail inside the parts (and after the last part) is cut on open; the backup restores to the previous head', { timeout: 120_000 }, async () => {
    const t = await twoSnapshots();
    const parts = t.bRecords.filter((r) => r.type === TYPE_SNAPSHOT_PART);
    const final = t.bRecords.at(-1)!;
    assert.ok(parts.length >= 3, `${parts.length} parts`);
    assertAllWithin(t.path, SEG);
    assert.equal(snapshots(t.path).at(-1)!.parts, parts.length + 1);
    assert.equal(restoreDump(t.path, t.beforeHead), t.before);
    assert.equal(final.type, TYPE_SNAPSHOT);
    assert.equal(final.parts, parts.length);
    const cuts = new Set<number>([
      t.bStart + 10, // inside the first part's header
      parts[0]!.offset + RECORD_HEADER_LEN + 1000, // inside the first part's payload
      parts[1]!.offset, // right after the first part (at a segment boundary)
      parts[1]!.offset + 5000, // inside a middle part
      parts.at(-1)!.offset + 77, // inside the last part
      final.offset, // after the last part, before the final record
      final.offset + 20, // inside the final record's header
      final.offset + RECORD_HEADER_LEN + 3, // inside the final record's payload
    ]);
    for (const g of cuts) {
      const copy = copyBackup(t.path);
      cutAt(copy, g);
      const w = SegmentedWriter.open(copy, { segmentBytes: SEG });
      try {
        const rep = w.repaired();
        assert.ok(rep.length >= 1 && rep.every((p) => p.kind === 'torn-tail'), `cut at ${g}: ${JSON.stringify(rep)}`);
        assert.ok(
          rep.some((p) => p.offset === t.bStart || /snapshot part record/.test(p.message)),
          `cut at ${g}: the parts were not reported: ${JSON.stringify(rep)}`,
        );
        assert.equal(w.head(), t.beforeHead, `cut at ${g}`);
        assert.equal(w.headIsSnapshot(), false);
        assert.equal(w.endOffset(), t.bStart, `cut at ${g}`);
      } finally {
        w.close();
      }
      // nothing of the unfinished snapshot is left: no part record, no extra segment
      assert.ok(rawRecords(copy).every((r) => r.offset < t.bStart), `cut at ${g}`);
      const r = openReader(pathToFileURL(copy).href, '/');
      try {
        assert.deepEqual(r.problems(), [], `cut at ${g}`);
      } finally {
        r.close();
      }
      assertAllWithin(copy, SEG);
      assert.equal(restoreDump(copy), t.before, `cut at ${g}`);
    }
  });

  test('a reader of parts without their final record reports a torn tail and restores the previous head', { timeout: 120_000 }, async () => {
    const t = await twoSnapshots();
    const final = t.bRecords.at(-1)!;
    const copy = copyBackup(t.path);
    cutAt(copy, final.offset);
    const r = openReader(pathToFileURL(copy).href, '/');
    try {
      const torn = r.problems().filter((p) => p.kind === 'torn-tail');
      assert.ok(torn.some((p) => p.offset === t.bStart && /without their final snapshot record/.test(p.message)), JSON.stringify(r.problems()));
      assert.equal(r.problems().filter((p) => p.kind === 'corrupt').length, 0);
      assert.equal(r.stats().head, t.beforeHead);
      assert.equal(r.stats().bytes, t.bStart);
    } finally {
      r.close();
    }
    assert.equal(restoreDump(copy), t.before);
  });

  test('a flipped byte in a middle part: corruption reported with its offset, restore refuses, the writer refuses', { timeout: 120_000 }, async () => {
    const t = await twoSnapshots();
    const parts = t.bRecords.filter((r) => r.type === TYPE_SNAPSHOT_PART);
    const victim = parts[1]!;
    // find the segment holding it and flip one payload byte
    let base = 0;
    let hit = '';
    let local = 0;
    for (const f of files(t.path)) {
      const size = statSync(f).size - (sealOf(f) ? SEAL_RECORD_LEN : 0);
      if (victim.offset - base < size) {
        hit = f;
        local = victim.offset - base;
        break;
      }
      base += size - FILE_HEADER_LEN;
    }
    const fd = openSync(hit, 'r+');
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, local + RECORD_HEADER_LEN + 500);
    b[0] = b[0]! ^ 0x5a;
    writeSync(fd, b, 0, 1, local + RECORD_HEADER_LEN + 500);
    closeSync(fd);
    // a part fills its segment up to the seal that ends it, so the damaged record is followed by that seal:
    // corruption, reported by the segment's reader with the segment file and the offset in it
    const refused = (e: unknown): boolean =>
      e instanceof BackupError && e.message.includes(hit) && e.offset === local && /payload checksum mismatch/.test(e.message);
    const seg = openReader(pathToFileURL(t.path).href, '/');
    try {
      assert.ok(seg.problems().some((p) => p.kind === 'corrupt'), JSON.stringify(seg.problems()));
      assert.throws(() => listHeaders(seg), refused);
    } finally {
      seg.close();
    }
    assert.throws(() => restoreDump(t.path), (e: unknown) => e instanceof Error && e.message.includes(hit) && /payload checksum mismatch/.test(e.message));
    const v = await runCli(['verify', pathToFileURL(t.path).href]);
    assert.notEqual(v.code, 0, show(v));
    assert.ok(v.stdout.includes(hit) || v.stderr.includes(hit), show(v));

    // the same damage in a single file (parts written directly): corruption in problems() with the offset
    const dir = tmp();
    const path = createBackup(pathToFileURL(join(dir, 'one.clnvault')).href, dir, 'v2');
    const snap = join(dir, 'snap.sqlite3');
    const version = await snapshotDatabase(dbPath, snap);
    const size = statSync(snap).size;
    const w = V2Writer.open(path);
    const at: number[] = [];
    try {
      const src = openSync(snap, 'r');
      try {
        const slice = Math.ceil(size / 4);
        for (let k = 0; k < 3; k++) {
          at.push(w.endOffset());
          w.appendSnapshotSlice(TYPE_SNAPSHOT_PART, version, 0, src, k * slice, slice, snap);
        }
        w.appendSnapshotSlice(TYPE_SNAPSHOT, version, 3, src, 3 * slice, size - 3 * slice, snap);
      } finally {
        closeSync(src);
      }
    } finally {
      w.close();
    }
    assert.equal(restoreDump(path), sqliteDump(dbPath));
    const fd2 = openSync(path, 'r+');
    readSync(fd2, b, 0, 1, at[1]! + RECORD_HEADER_LEN + 77);
    b[0] = b[0]! ^ 0x01;
    writeSync(fd2, b, 0, 1, at[1]! + RECORD_HEADER_LEN + 77);
    closeSync(fd2);
    const r = openReader(pathToFileURL(path).href, '/');
    try {
      const corrupt = r.problems().filter((p) => p.kind === 'corrupt');
      assert.ok(corrupt.some((p) => p.offset === at[1] && /payload checksum mismatch/.test(p.message)), JSON.stringify(corrupt));
      // the final record's part count no longer matches the intact parts before it
      assert.ok(corrupt.some((p) => /says 3 snapshot part record\(s\) precede it/.test(p.message)), JSON.stringify(corrupt));
      assert.throws(() => listHeaders(r), (e: unknown) => e instanceof BackupError && e.offset === at[1] && e.message.includes(`offset ${at[1]}`) && /payload checksum/.test(e.message));
      assert.throws(() => restoreBackup(r, join(tmp(), 'x.sqlite3'), {}), (e: unknown) => e instanceof Error && /damaged/.test(e.message));
    } finally {
      r.close();
    }
    assert.throws(() => V2Writer.open(path, { fullCheck: true }).close(), (e: unknown) => e instanceof BackupError && /damaged/.test(e.message));
  });

  test('parts followed by a change instead of their final record are corruption, with the offset', () => {
    const dir = tmp();
    const path = createBackup(pathToFileURL(join(dir, 'b.clnvault')).href, dir, 'v2');
    const src = join(dir, 'src.bin');
    writeFileSync(src, Buffer.alloc(10_000, 7));
    const w = V2Writer.open(path);
    let partAt = 0;
    try {
      w.appendChange(1, ['CREATE TABLE t(a)']);
      partAt = w.endOffset();
      const fd = openSync(src, 'r');
      try {
        w.appendSnapshotSlice(TYPE_SNAPSHOT_PART, 2, 0, fd, 0, 5000, src);
      } finally {
        closeSync(fd);
      }
      w.appendChange(3, ['INSERT INTO t VALUES (1)']);
    } finally {
      w.close();
    }
    const r = V2Reader.open(path);
    try {
      const c = r.problems().filter((p) => p.kind === 'corrupt');
      assert.equal(c.length, 1);
      assert.equal(c[0]!.offset, partAt);
      assert.match(c[0]!.message, /followed by a change record at offset \d+ instead of their final snapshot record/);
      assert.throws(() => listHeaders(r), (e: unknown) => e instanceof BackupError && e.offset === partAt);
    } finally {
      r.close();
    }
    // a final record whose count does not match: 1 part, but it says 2
    const path2 = createBackup(pathToFileURL(join(dir, 'c.clnvault')).href, dir, 'v2');
    const w2 = V2Writer.open(path2);
    try {
      const fd = openSync(src, 'r');
      try {
        w2.appendSnapshotSlice(TYPE_SNAPSHOT_PART, 2, 0, fd, 0, 5000, src);
        w2.appendSnapshotSlice(TYPE_SNAPSHOT, 2, 2, fd, 5000, 5000, src);
      } finally {
        closeSync(fd);
      }
    } finally {
      w2.close();
    }
    const r2 = V2Reader.open(path2);
    try {
      const c = r2.problems().filter((p) => p.kind === 'corrupt');
      assert.equal(c.length, 1);
      assert.equal(c[0]!.offset, FILE_HEADER_LEN + 40 + 5000);
      assert.match(c[0]!.message, new RegExp(`snapshot record at offset ${FILE_HEADER_LEN + 40 + 5000} \\(version 2\\) says 2 snapshot part record\\(s\\) precede it, but 1 snapshot part record\\(s\\) \\(version 2\\) at offsets ${FILE_HEADER_LEN}\\.\\.${FILE_HEADER_LEN} do`));
    } finally {
      r2.close();
    }
  });

  test('a snapshot that fits a segment stays one ordinary record (readable by an older clnvault)', async () => {
    const dir = tmp();
    const path = createBackup(pathToFileURL(join(dir, 'b.clnvault')).href, dir, 'v2');
    const snap = join(dir, 'snap.sqlite3');
    const version = await snapshotDatabase(dbPath, snap);
    // room for the snapshot in a fresh segment, but not beside the change before it
    const big = statSync(snap).size + 40 + FILE_HEADER_LEN + SEAL_RECORD_LEN + 10;
    const w = SegmentedWriter.open(path, { segmentBytes: big });
    try {
      w.appendChange(1, ['CREATE TABLE x(a)']);
      w.appendSnapshotFile(version, snap);
    } finally {
      w.close();
    }
    const recs = rawRecords(path);
    assert.deepEqual(
      recs.map((r) => [r.type, r.parts]),
      [
        [1, 0],
        [TYPE_SNAPSHOT, 0],
      ],
    );
    assert.equal(files(path).length, 2, 'the snapshot went to a fresh segment rather than being chunked');
    assert.deepEqual(snapshots(path).map((s) => s.parts), [1]);
    assert.equal(restoreDump(path), sqliteDump(dbPath));
  });
});

