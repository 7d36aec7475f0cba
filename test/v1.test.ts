import { listHeaders } from '../src/backends/backend.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { FIXTURES as FIXTURE_ROOT } from './helpers/fixtures.js';
import { BackupError } from '../src/engine/entries.js';
import type { EntryHeader } from '../src/engine/entries.js';
import { planRestore } from '../src/engine/plan.js';
import { createV1, isV1, V1Reader, V1Writer } from '../src/backends/file/v1.js';
import { referenceStream } from './helpers/reference-reader.js';
import type { ReferenceEntry } from './helpers/reference-reader.js';

const FIX = join(FIXTURE_ROOT, 'reference-backups');

function tempDir(t: { after: (fn: () => void) => void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'clnvault-v1-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

interface RawHeader {
  fileVersion: number;
  version: number;
  offsets0: number;
  prev: number;
  offsets1: number;
  count: number;
}

/** Decoded straight from the bytes, independently of v1.ts. */
function diskHeader(path: string): RawHeader {
  const b = readFileSync(path).subarray(0, 512);
  return {
    fileVersion: b.readUInt32BE(0),
    version: b.readUInt32BE(4),
    offsets0: Number(b.readBigUInt64BE(8)),
    prev: b.readUInt32BE(16),
    offsets1: Number(b.readBigUInt64BE(20)),
    count: Number(b.readBigUInt64BE(28)),
  };
}

function payloadLength(path: string, offset: number): number {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(4);
    readSync(fd, b, 0, 4, offset);
    return b.readUInt32BE(0);
  } finally {
    closeSync(fd);
  }
}

function dataVersionOf(dbPath: string): number {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare("SELECT intval FROM vars WHERE name='data_version'").get() as { intval: number };
    return row.intval;
  } finally {
    db.close();
  }
}

// ---------------------------------------------------------------------------------------------------
// 1. Reference fixtures

type Row = [index: number, offset: number, length: number, version: number, type: 1 | 2, firstStatement?: string];

interface FixtureSpec {
  file: string;
  size: number;
  /** file_version, version, offsets0, prev_version, offsets1, version_count */
  header: [number, number, number, number, number, number];
  entries: number;
  rows: Row[];
  droppedOffsets: number[];
  pragmaOffsets: number[];
}

// Values copied from the subset READMEs' tables.
const FIXTURES: FixtureSpec[] = [
  {
    file: 'empty-init/backup.dbak',
    size: 40064,
    header: [1, 24, 40064, 23, 39882, 26],
    entries: 26,
    rows: [
      [0, 512, 20564, 1, 1, 'CREATE TABLE version (version INTEGER)'],
      [1, 21085, 26, 1, 1, 'PRAGMA foreign_keys = OFF;'],
      [3, 22379, 25, 2, 1, 'PRAGMA foreign_keys = ON;'],
      [13, 29389, 1077, 12, 1],
      [22, 38563, 1010, 21, 1],
      [23, 39582, 141, 22, 1],
      [25, 39882, 173, 24, 1],
    ],
    droppedOffsets: [],
    pragmaOffsets: [21085, 22379],
  },
  {
    file: 'snapshot-init/backup.dbak',
    size: 319509,
    header: [1, 21, 319509, 20, 318534, 8],
    entries: 8,
    rows: [
      [0, 512, 315392, 14, 2],
      [1, 315913, 111, 15, 1, 'UPDATE version SET version=282;'],
      [5, 316584, 966, 19, 1],
      [7, 318534, 966, 21, 1],
    ],
    droppedOffsets: [],
    pragmaOffsets: [],
  },
  {
    file: 'after-rewind/backup.dbak',
    size: 36880,
    header: [1, 21, 35915, 20, 34948, 24],
    entries: 24,
    rows: [
      [0, 512, 20564, 1, 1],
      [13, 29389, 1027, 12, 1],
      [16, 32349, 954, 15, 1],
      [17, 33312, 956, 16, 1, "UPDATE vars SET intval=5 WHERE name='last_invoices_created_index';"],
      [18, 34277, 111, 16, 1, 'UPDATE version SET version=282;'],
      [22, 34948, 956, 20, 1],
      [23, 35913, 958, 21, 1],
    ],
    droppedOffsets: [33312],
    pragmaOffsets: [21085, 22379],
  },
  {
    file: 'after-rewind/backup-after-crash.dbak',
    size: 34277,
    header: [1, 16, 34277, 15, 33312, 18],
    entries: 18,
    rows: [
      [0, 512, 20564, 1, 1],
      [2, 21120, 1250, 2, 1, 'ALTER TABLE payments RENAME TO temp_payments;'],
      [15, 31386, 954, 14, 1],
      [17, 33312, 956, 16, 1],
    ],
    droppedOffsets: [],
    pragmaOffsets: [21085, 22379],
  },
  {
    file: 'after-rewind-decrement/backup.dbak',
    size: 34929,
    header: [1, 19, 33973, 18, 33010, 22],
    entries: 22,
    rows: [
      [0, 512, 20564, 1, 1],
      [14, 30420, 947, 13, 1],
      [15, 31376, 947, 14, 1],
      [16, 32332, 111, 14, 1, 'UPDATE version SET version=282;'],
      [20, 33003, 954, 18, 1],
      [21, 33966, 954, 19, 1],
    ],
    droppedOffsets: [31376],
    pragmaOffsets: [21085, 22379],
  },
  {
    file: 'compacted/backup.dbak',
    size: 330521,
    header: [1, 25, 330521, 24, 330325, 5],
    entries: 5,
    rows: [
      [0, 512, 327680, 21, 2],
      [1, 328201, 165, 22, 1],
      [2, 328375, 965, 23, 1],
      [4, 330325, 187, 25, 1],
    ],
    droppedOffsets: [],
    pragmaOffsets: [],
  },
  {
    file: 'compacted/pre-compaction.dbak',
    size: 39401,
    header: [1, 22, 39401, 21, 39227, 24],
    entries: 24,
    rows: [
      [0, 512, 20564, 1, 1],
      [4, 22413, 5255, 3, 1, 'ALTER TABLE outputs ADD is_in_coinbase INTEGER DEFAULT 0;'],
      [13, 29389, 1040, 12, 1],
      [22, 38246, 972, 21, 1],
      [23, 39227, 165, 22, 1],
    ],
    droppedOffsets: [],
    pragmaOffsets: [21085, 22379],
  },
  {
    file: 'pre-4090/backup.dbak',
    size: 79811,
    header: [1, 46, 79811, 45, 79482, 0],
    entries: 46,
    rows: [
      [0, 512, 13599, 1, 1, 'CREATE TABLE version (version INTEGER)'],
      [10, 17616, 231, 11, 1],
      [13, 21914, 231, 14, 1],
      [21, 27491, 7186, 22, 1],
      [45, 79482, 320, 46, 1],
    ],
    droppedOffsets: [],
    pragmaOffsets: [],
  },
];

for (const spec of FIXTURES) {
  test(`fixture ${spec.file}: header, entries and stale filtering match the README`, () => {
    const path = join(FIX, spec.file);
    const before = readFileSync(path);
    assert.equal(before.length, spec.size);
    assert.ok(isV1(before.subarray(0, 4), before.length));
    const r = V1Reader.open(path);
    try {
      const h = r.header();
      assert.deepEqual(
        [h.fileVersion, h.version, h.offsets0, h.prevVersion, h.offsets1, h.versionCount],
        spec.header,
      );
      assert.deepEqual(r.problems(), []);
      const hs = listHeaders(r);
      assert.equal(hs.length, spec.entries);
      assert.deepEqual(r.stats(), { format: 'v1', location: path, head: spec.header[1], entries: spec.entries, bytes: spec.size });
      // entries are contiguous from 512 to EOF
      for (let i = 0; i + 1 < hs.length; i++) {
        assert.equal(hs[i + 1]!.offset, hs[i]!.offset + 9 + payloadLength(path, hs[i]!.offset), `entry ${i} is followed by entry ${i + 1}`);
      }
      for (const [i, offset, length, version, type, first] of spec.rows) {
        const e = hs[i]!;
        assert.equal(e.offset, offset, `entry #${i} offset`);
        assert.equal(e.version, version, `entry #${i} version`);
        assert.equal(e.kind, type === 1 ? 'change' : 'snapshot', `entry #${i} type`);
        const full = r.read(e);
        if (full.kind === 'change') {
          assert.equal(Buffer.byteLength(full.statements.join('\u0000'), 'utf8'), length, `entry #${i} length`);
          if (first !== undefined) assert.equal(full.statements[0], first);
        } else {
          assert.equal(full.size, length, `entry #${i} length`);
        }
      }
      assert.deepEqual(hs.filter((e) => e.pragmaOnly).map((e) => e.offset), spec.pragmaOffsets);
      const plan = planRestore(hs);
      assert.deepEqual(hs.filter((_, i) => plan.dropped[i]).map((e) => e.offset), spec.droppedOffsets);
      assert.equal(plan.head, spec.header[1]);
    } finally {
      r.close();
    }
    assert.ok(readFileSync(path).equals(before), 'fixture untouched');
  });
}

test('fixture pre-4090: 46 change entries with versions 1..46 and the two unrewritten statements', () => {
  const r = V1Reader.open(join(FIX, 'pre-4090/backup.dbak'));
  try {
    const hs = listHeaders(r);
    assert.deepEqual(hs.map((e) => e.version), Array.from({ length: 46 }, (_, i) => i + 1));
    assert.ok(hs.every((e) => e.kind === 'change' && !e.pragmaOnly));
    // the reader hands statements over verbatim; the restore engine does the reserved_til rewrite
    const v11 = r.read(hs[10]!);
    assert.ok(v11.kind === 'change' && v11.statements[0]!.includes('reserved_til=174WHERE'));
    for (const e of hs) {
      const c = r.read(e);
      assert.ok(c.kind === 'change');
      assert.equal(c.statements[c.statements.length - 1], `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${e.version - 1}`);
    }
  } finally {
    r.close();
  }
});

for (const file of ['snapshot-init/backup.dbak', 'compacted/backup.dbak']) {
  test(`fixture ${file}: snapshot writeTo gives the payload bytes, an SQLite DB at the entry's version`, (t) => {
    const dir = tempDir(t);
    const path = join(FIX, file);
    const raw = readFileSync(path);
    const r = V1Reader.open(path);
    try {
      const snaps = listHeaders(r).filter((e) => e.kind === 'snapshot');
      assert.equal(snaps.length, 1);
      const e = r.read(snaps[0]!);
      assert.ok(e.kind === 'snapshot');
      const out = join(dir, 'snap.sqlite3');
      e.writeTo(out);
      const len = raw.readUInt32BE(e.offset);
      assert.equal(e.size, len);
      assert.ok(readFileSync(out).equals(raw.subarray(e.offset + 9, e.offset + 9 + len)));
      assert.equal(dataVersionOf(out), e.version);
      // created exclusively: never overwrites
      assert.throws(() => e.writeTo(out), /EEXIST|exists/);
    } finally {
      r.close();
    }
  });
}

test('reference reader: healthy fixtures stream exactly the entries V1Reader returns; after-rewind streams the stale entry', () => {
  for (const spec of FIXTURES) {
    const path = join(FIX, spec.file);
    const ref = referenceStream(path);
    const r = V1Reader.open(path);
    try {
      assert.deepEqual(ref.map(comparable), listHeaders(r).map((h) => comparable(toRef(r, h))), spec.file);
    } finally {
      r.close();
    }
  }
  // The reference applies the stale entry: it is in its stream. clnvault's plan drops it.
  const stale = referenceStream(join(FIX, 'after-rewind/backup.dbak')).filter((e) => e.version === 16);
  assert.deepEqual(stale.map((e) => e.offset), [33312, 34277]);
});

// ---------------------------------------------------------------------------------------------------
// helpers for writer tests

function comparable(e: ReferenceEntry): unknown {
  return e.kind === 'change'
    ? { kind: e.kind, version: e.version, offset: e.offset, statements: e.statements }
    : { kind: e.kind, version: e.version, offset: e.offset, bytes: e.snapshot };
}

let tmpCounter = 0;
function toRef(r: V1Reader, h: EntryHeader): ReferenceEntry {
  const e = r.read(h);
  if (e.kind === 'change') return { kind: 'change', version: e.version, offset: e.offset, statements: e.statements };
  const dir = mkdtempSync(join(tmpdir(), 'clnvault-v1-snap-'));
  try {
    const p = join(dir, `s${tmpCounter++}`);
    e.writeTo(p);
    return { kind: 'snapshot', version: e.version, offset: e.offset, snapshot: readFileSync(p) };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function makeDb(path: string, dataVersion: number): void {
  const db = new Database(path);
  db.exec("CREATE TABLE vars (name TEXT PRIMARY KEY, val TEXT, intval INTEGER, blobval BLOB)");
  db.prepare("INSERT INTO vars (name, intval) VALUES ('data_version', ?)").run(dataVersion);
  db.exec("CREATE TABLE t (s TEXT); INSERT INTO t VALUES ('snapshot row')");
  db.close();
}

function assertHeader(path: string, expect: Omit<RawHeader, 'fileVersion' | 'offsets0'>): void {
  const h = diskHeader(path);
  assert.deepEqual(h, { fileVersion: 1, offsets0: statSync(path).size, ...expect });
  const pad = readFileSync(path).subarray(36, 512);
  assert.ok(pad.every((b) => b === 0), 'header padding is zero');
}

// ---------------------------------------------------------------------------------------------------
// 2. Writer round trip

test('createV1: exactly the reference empty file; refuses to overwrite', (t) => {
  const dir = tempDir(t);
  const p = join(dir, 'b.dbak');
  createV1(p);
  const b = readFileSync(p);
  const expected = Buffer.alloc(512);
  expected.writeUInt32BE(1, 0);
  expected.writeBigUInt64BE(512n, 8);
  assert.ok(b.equals(expected));
  assert.throws(() => createV1(p), (e: unknown) => e instanceof BackupError && e.message.includes(p) && /already exists/.test(e.message));
  const r = V1Reader.open(p);
  assert.deepEqual(listHeaders(r), []);
  assert.deepEqual(r.problems(), []);
  assert.deepEqual(r.stats(), { format: 'v1', location: p, head: 0, entries: 0, bytes: 512 });
  r.close();
});

test('writer round trip: changes, PRAGMA pairs, unicode, 100 KB, empty batch, snapshot, dropHead, replacement', (t) => {
  const dir = tempDir(t);
  const p = join(dir, 'b.dbak');
  const db = join(dir, 'snap.sqlite3');
  makeDb(db, 6);
  createV1(p);

  const big = `INSERT INTO t VALUES ('${'x'.repeat(100 * 1024)}')`;
  type Exp = { kind: 'change'; version: number; statements: string[]; pragmaOnly: boolean } | { kind: 'snapshot'; version: number };
  const exp: Exp[] = [];
  const w = V1Writer.open(p);
  try {
    assert.equal(w.isEmpty(), true);
    assert.equal(w.head(), 0);
    assert.equal(w.headIsSnapshot(), false);
    assert.deepEqual(w.repaired(), []);

    let count = 0;
    let prevHead = 0;
    const change = (version: number, statements: string[], pragmaOnly = false): void => {
      const start = statSync(p).size;
      w.appendChange(version, statements);
      count++;
      exp.push({ kind: 'change', version, statements: statements.length === 0 ? [''] : statements, pragmaOnly });
      assertHeader(p, { version, prev: prevHead, offsets1: start, count });
      prevHead = version;
      assert.equal(w.head(), version);
    };
    change(1, ['CREATE TABLE t (s TEXT)', "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 0"]);
    change(1, ['PRAGMA foreign_keys = OFF;'], true);
    change(2, ['ALTER TABLE t RENAME TO temp_t;', 'CREATE TABLE t (s TEXT);']);
    change(2, ['PRAGMA foreign_keys = ON;'], true);
    change(3, ["INSERT INTO t VALUES ('O''Brien 🎉 \"dq\" ünïcödé 日本語 \\ back\\slash')", 'SELECT 1;']);
    change(4, [big]);
    change(5, []);
    assert.equal(w.headIsSnapshot(), false);

    const snapStart = statSync(p).size;
    w.appendSnapshotFile(6, db);
    count++;
    exp.push({ kind: 'snapshot', version: 6 });
    assertHeader(p, { version: 6, prev: 5, offsets1: snapStart, count });
    prevHead = 6;
    assert.equal(w.headIsSnapshot(), true);
    assert.throws(() => w.dropHead(), (e: unknown) => e instanceof BackupError && /refusing to drop the snapshot/.test(e.message));
    assert.equal(statSync(p).size, snapStart + 9 + statSync(db).size, 'a refused drop leaves the file alone');

    change(7, ["INSERT INTO t VALUES ('seven')"]);
    const sevenStart = diskHeader(p).offsets1;
    const endAfterSeven = statSync(p).size;
    w.appendChange(8, ["INSERT INTO t VALUES ('never committed')"]);
    assert.equal(w.head(), 8);

    // rewind: the uncommitted 8 goes away for good, the header describes entry 7 as the reference would
    assert.equal(w.dropHead(), 7);
    assert.equal(statSync(p).size, endAfterSeven);
    assertHeader(p, { version: 7, prev: 6, offsets1: sevenStart, count });
    assert.equal(w.head(), 7);
    assert.deepEqual(w.stats(), { format: 'v1', location: p, head: 7, entries: count, bytes: endAfterSeven });

    change(8, ["INSERT INTO t VALUES ('the replacement')"]);

    // a trailing transaction + PRAGMA pair with the same version is dropped as a whole
    change(9, ['UPDATE t SET s = s']);
    change(9, ['PRAGMA foreign_keys = OFF;'], true);
    const endAfterEight = exp.length - 2;
    assert.equal(w.dropHead(), 8);
    exp.length = endAfterEight;
    count -= 2;
    assertHeader(p, { version: 8, prev: 7, offsets1: diskHeader(p).offsets1, count });
    prevHead = 8;
    change(9, ['UPDATE t SET s = s || 1']);
    assert.equal(w.stats().entries, exp.length);
  } finally {
    w.close();
  }

  const r = V1Reader.open(p);
  try {
    assert.deepEqual(r.problems(), []);
    const hs = listHeaders(r);
    assert.deepEqual(
      hs.map((h) => [h.kind, h.version, h.pragmaOnly]),
      exp.map((e) => [e.kind, e.version, e.kind === 'change' && e.pragmaOnly]),
    );
    for (let i = 0; i < hs.length; i++) {
      const e = r.read(hs[i]!);
      const x = exp[i]!;
      if (x.kind === 'change') {
        assert.ok(e.kind === 'change');
        assert.deepEqual(e.statements, x.statements);
      } else {
        assert.ok(e.kind === 'snapshot');
        const out = join(dir, 'restored.sqlite3');
        e.writeTo(out);
        assert.ok(readFileSync(out).equals(readFileSync(db)));
        assert.equal(dataVersionOf(out), 6);
      }
    }
    assert.deepEqual(Array.from(planRestore(hs).dropped), new Array(hs.length).fill(0));
    assert.equal(r.stats().bytes, statSync(p).size);
  } finally {
    r.close();
  }

  // reopening a writer finds the same state and nothing to repair
  const w2 = V1Writer.open(p);
  try {
    assert.deepEqual(w2.repaired(), []);
    assert.equal(w2.head(), 9);
    assert.equal(w2.stats().entries, exp.length);
    // after a reopen the trailing run must be rebuilt from the file: 9 alone, then 8
    assert.equal(w2.dropHead(), 8);
    assert.equal(w2.dropHead(), 7);
    assert.equal(w2.dropHead(), 6);
    assert.equal(w2.headIsSnapshot(), true);
  } finally {
    w2.close();
  }
  assertHeader(p, { version: 6, prev: 5, offsets1: diskHeader(p).offsets1, count: exp.length - 3 });
});

test('dropHead down to empty gives back the reference empty header; a dropped first write is D9-free', (t) => {
  const dir = tempDir(t);
  const p = join(dir, 'b.dbak');
  createV1(p);
  const empty = readFileSync(p);
  const w = V1Writer.open(p);
  try {
    assert.equal(w.dropHead(), 0, 'nothing to drop on an empty backup');
    w.appendChange(1, ['CREATE TABLE a (x)']);
    w.appendChange(1, ['PRAGMA foreign_keys = OFF;']);
    assert.equal(w.dropHead(), 0);
    assert.equal(w.isEmpty(), true);
    assert.ok(readFileSync(p).equals(empty));
    w.appendChange(1, ['CREATE TABLE b (x)']);
  } finally {
    w.close();
  }
  assert.deepEqual(referenceStream(p).map((e) => e.kind === 'change' && e.statements), [['CREATE TABLE b (x)']]);
});

test('repeated dropHead on a long file keeps the header exactly as the reference would have it', (t) => {
  const dir = tempDir(t);
  const p = join(dir, 'b.dbak');
  createV1(p);
  // versions 1..40 with PRAGMA companions at 20 and 33: more entries than the writer keeps in memory
  const log: { version: number; offset: number }[] = [];
  let w = V1Writer.open(p);
  for (let v = 1; v <= 40; v++) {
    log.push({ version: v, offset: statSync(p).size });
    w.appendChange(v, [`INSERT INTO t VALUES (${v})`]);
    if (v === 20 || v === 33) {
      log.push({ version: v, offset: statSync(p).size });
      w.appendChange(v, ['PRAGMA foreign_keys = ON;']);
    }
  }
  try {
    for (let round = 0; log.length > 0; round++) {
      if (round === 10) {
        // a fresh writer must agree with one that has been dropping for a while
        w.close();
        w = V1Writer.open(p);
      }
      const head = log[log.length - 1]!.version;
      while (log.length > 0 && log[log.length - 1]!.version === head) log.pop();
      const last = log[log.length - 1];
      const expectHead = last?.version ?? 0;
      assert.equal(w.dropHead(), expectHead);
      assert.equal(w.stats().entries, log.length);
      assertHeader(p, { version: expectHead, prev: log[log.length - 2]?.version ?? 0, offsets1: last?.offset ?? 0, count: log.length });
    }
  } finally {
    w.close();
  }
  assert.equal(statSync(p).size, 512);
});

test('appendChange/appendSnapshotFile refuse what v1 cannot hold, without touching the file', (t) => {
  const dir = tempDir(t);
  const p = join(dir, 'b.dbak');
  createV1(p);
  const w = V1Writer.open(p);
  try {
    w.appendChange(1, ['SELECT 1']);
    const before = readFileSync(p);
    assert.throws(() => w.appendChange(2, ["INSERT INTO t VALUES ('a\u0000b')"]), (e: unknown) => e instanceof BackupError && /NUL/.test(e.message));
    assert.throws(() => w.appendChange(2, ['SELECT "\ud800"']), (e: unknown) => e instanceof BackupError && /surrogate/.test(e.message));
    assert.throws(() => w.appendChange(-1, ['SELECT 1']), BackupError);
    assert.throws(() => w.appendChange(2 ** 32, ['SELECT 1']), BackupError);
    // > 4 GiB - 1 bytes: a sparse file costs no disk space
    const huge = join(dir, 'huge.sqlite3');
    writeFileSync(huge, Buffer.from('SQLite format 3\0', 'latin1'));
    truncateSync(huge, 2 ** 32);
    assert.throws(() => w.appendSnapshotFile(2, huge), (e: unknown) => e instanceof BackupError && /at most 4294967295/.test(e.message));
    const notDb = join(dir, 'not.sqlite3');
    writeFileSync(notDb, 'hello');
    assert.throws(() => w.appendSnapshotFile(2, notDb), (e: unknown) => e instanceof BackupError && /not an SQLite database/.test(e.message));
    assert.ok(readFileSync(p).equals(before));
    // still usable: refusals are not I/O failures
    w.appendChange(2, ['SELECT 2']);
    assert.equal(w.head(), 2);
  } finally {
    w.close();
  }
});

// ---------------------------------------------------------------------------------------------------
// 3. Reference-reader compatibility of files clnvault writes

function keptByClnvault(p: string): unknown[] {
  const r = V1Reader.open(p);
  try {
    const hs = listHeaders(r);
    const plan = planRestore(hs);
    return hs.filter((_, i) => !plan.dropped[i]).map((h) => comparable(toRef(r, h)));
  } finally {
    r.close();
  }
}

test('reference reader streams a V1Writer file (with a rewind) to exactly the entries clnvault keeps', (t) => {
  const dir = tempDir(t);
  const p = join(dir, 'b.dbak');
  const db = join(dir, 'snap.sqlite3');
  makeDb(db, 3);
  createV1(p);
  const w = V1Writer.open(p);
  try {
    w.appendChange(1, ['CREATE TABLE t (s TEXT)']);
    w.appendChange(1, ['PRAGMA foreign_keys = OFF;']);
    w.appendChange(2, ["INSERT INTO t VALUES ('ü🎉')"]);
    w.appendSnapshotFile(3, db);
    w.appendChange(4, ["INSERT INTO t VALUES ('4')"]);
    w.appendChange(5, ["INSERT INTO t VALUES ('stale')"]);
    w.dropHead();
    w.appendChange(5, ["INSERT INTO t VALUES ('replacement')"]);
    w.appendChange(6, []);
  } finally {
    w.close();
  }
  const ref = referenceStream(p);
  assert.deepEqual(ref.map(comparable), keptByClnvault(p));
  assert.ok(!ref.some((e) => e.kind === 'change' && e.statements[0]!.includes('stale')), 'D1 fixed: no stale entry in the file');
  assert.deepEqual(ref.map((e) => e.version), [1, 1, 2, 3, 4, 5, 6]);
});

test('replaying the after-rewind crash with V1Writer yields what the reference should have written', (t) => {
  const dir = tempDir(t);
  const p = join(dir, 'backup.dbak');
  copyFileSync(join(FIX, 'after-rewind/backup-after-crash.dbak'), p);
  // the writes lightningd sent after the restart are entries #18..#23 of the final reference file
  const final = V1Reader.open(join(FIX, 'after-rewind/backup.dbak'));
  const later = listHeaders(final).slice(18).map((h) => final.read(h));
  final.close();

  const w = V1Writer.open(p);
  try {
    assert.equal(w.head(), 16);
    assert.equal(w.headIsSnapshot(), false);
    assert.equal(w.dropHead(), 15, 'the uncommitted dv 16 is removed');
    for (const e of later) {
      assert.ok(e.kind === 'change');
      w.appendChange(e.version, e.statements);
    }
  } finally {
    w.close();
  }
  const ref = referenceStream(p);
  const kept = keptByClnvault(p);
  assert.deepEqual(ref.map(comparable), kept);
  // ... and equals the reference file minus the stale entry #17, with every offset after it 965 bytes lower
  const expected = keptByClnvault(join(FIX, 'after-rewind/backup.dbak')) as { offset: number }[];
  assert.deepEqual(
    kept,
    expected.map((e) => (e.offset > 33312 ? { ...e, offset: e.offset - 965 } : e)),
  );
  assert.equal(statSync(p).size, 36880 - 965);
  assertHeader(p, { version: 21, prev: 20, offsets1: 35913 - 965, count: 23 });
});

test('appending to a reference file with D1-wrong offsets writes at the real end, not at offsets[0]', (t) => {
  const dir = tempDir(t);
  const p = join(dir, 'backup.dbak');
  const src = join(FIX, 'after-rewind/backup.dbak');
  copyFileSync(src, p);
  const orig = readFileSync(src);
  const w = V1Writer.open(p);
  try {
    assert.deepEqual(w.repaired(), []);
    assert.equal(w.stats().bytes, 36880);
    w.appendChange(22, ['SELECT 22']);
  } finally {
    w.close();
  }
  const now = readFileSync(p);
  assert.ok(now.subarray(512, 36880).equals(orig.subarray(512)), 'entry #23 (at 35913) not overwritten');
  assertHeader(p, { version: 22, prev: 21, offsets1: 36880, count: 25 });
  const ref = referenceStream(p);
  assert.equal(ref.length, 25);
  assert.deepEqual(ref[24], { kind: 'change', version: 22, offset: 36880, statements: ['SELECT 22'] });
  assert.ok(readFileSync(src).equals(orig), 'fixture untouched');
});

test('reference reader fails on an empty backup (D3) where V1Reader reports an empty one', (t) => {
  const dir = tempDir(t);
  const p = join(dir, 'b.dbak');
  createV1(p);
  assert.throws(() => referenceStream(p), /unpack requires a buffer of 9 bytes/);
  const r = V1Reader.open(p);
  assert.equal(listHeaders(r).length, 0);
  r.close();
});

test('the acknowledged end is the LAST entry holding the header version (stale + replacement, PRAGMA pair)', (t) => {
  const dir = tempDir(t);
  // The reference's state right after the restart's first write in after-rewind: the replacement dv 16
  // appended after the stale dv 16, header rewritten from the rewound bookkeeping (D1).
  const crash = readFileSync(join(FIX, 'after-rewind/backup-after-crash.dbak'));
  const final = readFileSync(join(FIX, 'after-rewind/backup.dbak'));
  const replacement = final.subarray(34277, 34277 + 9 + 111);
  const header = Buffer.from(crash.subarray(0, 512));
  header.writeBigUInt64BE(BigInt(33312 + 9 + 111), 8);
  header.writeUInt32BE(0, 16);
  header.writeBigUInt64BE(0n, 20);
  header.writeBigUInt64BE(19n, 28);
  const p = join(dir, 'mid-rewind.dbak');
  writeFileSync(p, Buffer.concat([header, crash.subarray(512), replacement]));
  const r = V1Reader.open(p);
  try {
    assert.deepEqual(r.problems(), []);
    const hs = listHeaders(r);
    assert.deepEqual(hs.slice(-2).map((h) => [h.offset, h.version]), [[33312, 16], [34277, 16]]);
    const plan = planRestore(hs);
    assert.deepEqual(hs.filter((_, i) => plan.dropped[i]).map((h) => h.offset), [33312]);
  } finally {
    r.close();
  }
  const w = V1Writer.open(p);
  try {
    assert.deepEqual(w.repaired(), []);
    assert.equal(w.stats().entries, 19);
    // both version-16 entries form the trailing run: a rewind now drops both
    assert.equal(w.dropHead(), 15);
  } finally {
    w.close();
  }
  assert.equal(statSync(p).size, 33312);
  assertHeader(p, { version: 15, prev: 14, offsets1: 32349, count: 17 });

  const q = join(dir, 'pragma-head.dbak');
  createV1(q);
  const w2 = V1Writer.open(q);
  w2.appendChange(1, ['CREATE TABLE a (x)']);
  w2.appendChange(1, ['PRAGMA foreign_keys = OFF;']);
  w2.close();
  const size = statSync(q).size;
  const w3 = V1Writer.open(q);
  try {
    assert.deepEqual(w3.repaired(), [], 'the PRAGMA entry sharing the head version is acknowledged');
    assert.equal(w3.stats().bytes, size);
    assert.equal(w3.stats().entries, 2);
  } finally {
    w3.close();
  }
});

// ---------------------------------------------------------------------------------------------------
// 4. Torn tails

interface Built {
  /** file bytes before the last append (its header describes the previous head) */
  before: Buffer;
  /** file bytes after the last append */
  after: Buffer;
  lastStart: number;
}

function buildFile(dir: string, name: string, last: (w: V1Writer) => void): Built {
  const p = join(dir, name);
  createV1(p);
  const w = V1Writer.open(p);
  try {
    for (let v = 250; v <= 255; v++) w.appendChange(v, [`INSERT INTO t VALUES (${v})`, 'UPDATE vars SET intval = intval + 1']);
    const before = readFileSync(p);
    last(w);
    return { before, after: readFileSync(p), lastStart: before.length };
  } finally {
    w.close();
  }
}

function checkRepair(dir: string, bytes: Buffer, expectBytes: Buffer, problemOffset: number, kind: 'torn-tail' | 'orphan', what: string): void {
  const p = join(dir, 'torn.dbak');
  rmSync(p, { force: true });
  writeFileSync(p, bytes);
  const r = V1Reader.open(p);
  try {
    assert.equal(r.stats().bytes, expectBytes.length, what);
    const probs = r.problems();
    assert.ok(probs.length >= 1, `${what}: a problem is reported`);
    assert.equal(probs[0]!.kind, kind, what);
    assert.equal(probs[0]!.offset, problemOffset, what);
    assert.ok(probs[0]!.message.length > 0);
  } finally {
    r.close();
  }
  const w = V1Writer.open(p);
  try {
    const rep = w.repaired();
    assert.equal(rep[0]!.kind, kind, what);
    assert.equal(rep[0]!.offset, problemOffset, what);
    assert.equal(w.stats().bytes, expectBytes.length);
  } finally {
    w.close();
  }
  assert.ok(readFileSync(p).equals(expectBytes), `${what}: repaired to the acknowledged entries`);
  const r2 = V1Reader.open(p);
  assert.deepEqual(r2.problems(), [], what);
  r2.close();
}

test('torn tail: a crash at every byte of the last change entry is repaired to the previous head', (t) => {
  const dir = tempDir(t);
  const b = buildFile(dir, 'src.dbak', (w) => w.appendChange(256, ["INSERT INTO t VALUES ('last 🎉')", 'UPDATE vars SET intval = intval + 1']));
  // the entry is durable before the header is rewritten, so a torn entry always sits behind the old header
  for (let cut = b.lastStart + 1; cut < b.after.length; cut++) {
    const bytes = Buffer.concat([b.before, b.after.subarray(b.lastStart, cut)]);
    checkRepair(dir, bytes, b.before, b.lastStart, 'torn-tail', `cut at ${cut}`);
  }
  // entry complete, header not yet rewritten: an orphan
  checkRepair(dir, Buffer.concat([b.before, b.after.subarray(b.lastStart)]), b.before, b.lastStart, 'orphan', 'orphan');
});

test('torn tail: a crash inside a snapshot entry (sampled offsets) is repaired', (t) => {
  const dir = tempDir(t);
  const db = join(dir, 'snap.sqlite3');
  makeDb(db, 256);
  const b = buildFile(dir, 'src.dbak', (w) => w.appendSnapshotFile(256, db));
  const cuts = new Set<number>();
  for (let c = b.lastStart + 1; c < b.after.length; c += 509) cuts.add(c);
  for (const c of [b.lastStart + 8, b.lastStart + 9, b.lastStart + 10, b.after.length - 1]) cuts.add(c);
  for (const cut of cuts) {
    checkRepair(dir, Buffer.concat([b.before, b.after.subarray(b.lastStart, cut)]), b.before, b.lastStart, 'torn-tail', `cut at ${cut}`);
  }
});

test('torn header rewrite: every split of old/new header bytes opens at the head its version field names', (t) => {
  const dir = tempDir(t);
  // 255 -> 256 changes two bytes of the version field, so some splits name a version no entry holds
  const b = buildFile(dir, 'src.dbak', (w) => w.appendChange(256, ['SELECT 256']));
  const oldHeader = b.before.subarray(0, 512);
  const newHeader = b.after.subarray(0, 512);
  const body = b.after.subarray(512);
  const p = join(dir, 'mixed.dbak');
  let sawOld = 0;
  let sawNew = 0;
  let sawCorrupt = 0;
  for (let k = 0; k <= 512; k++) {
    const header = Buffer.concat([newHeader.subarray(0, k), oldHeader.subarray(k)]);
    const bytes = Buffer.concat([header, body]);
    const version = header.readUInt32BE(4);
    if (version === 256) {
      sawNew++;
      rmSync(p, { force: true });
      writeFileSync(p, bytes);
      const r = V1Reader.open(p);
      assert.deepEqual(r.problems(), []);
      assert.equal(r.stats().head, 256);
      assert.equal(r.stats().bytes, b.after.length);
      r.close();
    } else if (version === 255) {
      sawOld++;
      checkRepair(dir, bytes, Buffer.concat([header, b.before.subarray(512)]), b.lastStart, 'orphan', `split at ${k}`);
    } else {
      // v1 has no header checksum: a torn version field can only be detected when no entry carries it
      sawCorrupt++;
      rmSync(p, { force: true });
      writeFileSync(p, bytes);
      assert.throws(
        () => V1Reader.open(p),
        (e: unknown) => e instanceof BackupError && e.message.includes(p) && e.message.includes(`header says version ${version} but no entry holds it`),
      );
      assert.throws(() => V1Writer.open(p), BackupError);
      assert.ok(readFileSync(p).equals(bytes), 'a corrupt file is never "repaired"');
    }
  }
  assert.ok(sawOld > 0 && sawNew > 0 && sawCorrupt > 0, `${sawOld}/${sawNew}/${sawCorrupt}`);
});

test('garbage after the acknowledged end is reported and cut', (t) => {
  const dir = tempDir(t);
  const b = buildFile(dir, 'src.dbak', (w) => w.appendChange(256, ['SELECT 256']));
  const end = b.after.length;
  const entryHeader = (len: number, version: number, type: number): Buffer => {
    const h = Buffer.alloc(9);
    h.writeUInt32BE(len, 0);
    h.writeUInt32BE(version, 4);
    h.writeUInt8(type, 8);
    return h;
  };
  const cases: [string, Buffer, 'torn-tail' | 'orphan', number][] = [
    ['1 zero byte', Buffer.alloc(1), 'torn-tail', end],
    ['8 bytes', Buffer.from('garbage!'), 'torn-tail', end],
    ['entry header claiming 1 GiB', entryHeader(1 << 30, 257, 1), 'torn-tail', end],
    ['unknown type', Buffer.concat([entryHeader(3, 257, 7), Buffer.from('abc')]), 'torn-tail', end],
    ['random 4 KiB', Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919 + 13) & 0xff)), 'torn-tail', end],
    ['complete orphan entry', Buffer.concat([entryHeader(3, 257, 1), Buffer.from('abc')]), 'orphan', end],
  ];
  for (const [what, tail, kind, offset] of cases) {
    checkRepair(dir, Buffer.concat([b.after, tail]), b.after, offset, kind, what);
  }
  // an orphan followed by a torn entry: both are reported, the torn one at its own offset
  const orphan = Buffer.concat([entryHeader(3, 257, 1), Buffer.from('abc')]);
  const p = join(dir, 'two.dbak');
  writeFileSync(p, Buffer.concat([b.after, orphan, entryHeader(100, 258, 1), Buffer.from('x')]));
  const r = V1Reader.open(p);
  assert.deepEqual(r.problems().map((x) => [x.kind, x.offset]), [['orphan', end], ['torn-tail', end + orphan.length]]);
  r.close();
});

test('a crash between the dropHead header write and the truncate leaves an orphan the next open cuts', (t) => {
  const dir = tempDir(t);
  const b = buildFile(dir, 'src.dbak', (w) => w.appendChange(256, ['SELECT uncommitted']));
  const p = join(dir, 'src.dbak');
  const w = V1Writer.open(p);
  w.dropHead();
  w.close();
  const dropped = readFileSync(p);
  assert.ok(dropped.subarray(512).equals(b.before.subarray(512)));
  // the new header over the old, untruncated body
  checkRepair(dir, Buffer.concat([dropped.subarray(0, 512), b.after.subarray(512)]), dropped, b.lastStart, 'orphan', 'drop crash');
});

// ---------------------------------------------------------------------------------------------------
// 5. Single writer

test('a second writer in another process is refused and the file is unchanged', (t) => {
  const dir = tempDir(t);
  const p = join(dir, 'b.dbak');
  createV1(p);
  const modUrl = new URL('../src/backends/file/v1.js', import.meta.url).href;
  const child = (): { name: string; message: string } | 'opened' => {
    const code =
      `import { V1Writer } from ${JSON.stringify(modUrl)};` +
      `try { const w = V1Writer.open(process.argv[1]); w.appendChange(99, ['SELECT 99']); w.close(); console.log('"opened"'); }` +
      `catch (e) { console.log(JSON.stringify({ name: e.name, message: e.message })); }`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', code, p], { encoding: 'utf8' });
    return JSON.parse(out.trim()) as { name: string; message: string } | 'opened';
  };
  const w = V1Writer.open(p);
  try {
    w.appendChange(1, ['SELECT 1']);
    const before = readFileSync(p);
    const res = child();
    assert.notEqual(res, 'opened');
    assert.ok(typeof res === 'object');
    assert.equal(res.name, 'BackupError');
    assert.match(res.message, /already open for writing/);
    assert.ok(res.message.includes(p));
    assert.ok(readFileSync(p).equals(before));
    w.appendChange(2, ['SELECT 2']);
  } finally {
    w.close();
  }
  // released on close: now the other process may write
  assert.equal(child(), 'opened');
  assert.equal(V1Reader.open(p).stats().head, 99);
});

// ---------------------------------------------------------------------------------------------------
// 6. Bad input

test('bad input: each is a BackupError naming the path', (t) => {
  const dir = tempDir(t);
  const cases: [string, Buffer | null, RegExp][] = [];
  const short = Buffer.alloc(100);
  short.writeUInt32BE(1, 0);
  cases.push(['short.dbak', short, /expected 512 bytes, got 100/]);
  const seven = Buffer.alloc(600);
  seven.writeUInt32BE(7, 0);
  cases.push(['seven.dbak', seven, /file_version is 7/]);
  const noEntry = Buffer.alloc(512 + 9 + 3);
  noEntry.writeUInt32BE(1, 0);
  noEntry.writeUInt32BE(5, 4);
  noEntry.writeBigUInt64BE(BigInt(noEntry.length), 8);
  noEntry.writeUInt32BE(3, 512);
  noEntry.writeUInt32BE(4, 516);
  noEntry.writeUInt8(1, 520);
  cases.push(['noentry.dbak', noEntry, /header says version 5 but no entry holds it/]);
  const emptyButVersion = Buffer.alloc(512);
  emptyButVersion.writeUInt32BE(1, 0);
  emptyButVersion.writeUInt32BE(3, 4);
  cases.push(['noentries.dbak', emptyButVersion, /header says version 3 but no entry holds it/]);
  cases.push(['missing.dbak', null, /does not exist/]);
  for (const [name, bytes, re] of cases) {
    const p = join(dir, name);
    if (bytes) writeFileSync(p, bytes);
    for (const open of [(x: string) => V1Reader.open(x), (x: string) => V1Writer.open(x)]) {
      assert.throws(
        () => open(p),
        (e: unknown) => e instanceof BackupError && e.path === p && e.message.includes(p) && re.test(e.message),
        name,
      );
    }
    if (bytes) assert.ok(readFileSync(p).equals(bytes), `${name} untouched`);
    else assert.ok(!existsSync(p) && !existsSync(`${p}.writer`), 'no files created for a missing backup');
  }
  assert.throws(() => V1Reader.open(dir), (e: unknown) => e instanceof BackupError && e.message.includes(dir));
  assert.equal(isV1(seven.subarray(0, 4), seven.length), false);
  assert.equal(isV1(short.subarray(0, 4), short.length), false);
});

test('read() rejects a header that is not an acknowledged entry, and a file changed underneath', (t) => {
  const dir = tempDir(t);
  const p = join(dir, 'b.dbak');
  createV1(p);
  const w = V1Writer.open(p);
  w.appendChange(1, ['SELECT 1']);
  w.close();
  const r = V1Reader.open(p);
  try {
    const [h] = listHeaders(r);
    assert.throws(() => r.read({ ...h!, offset: 9999 }), BackupError);
    assert.throws(() => r.read({ ...h!, version: 2 }), BackupError);
    // corrupt the payload to invalid UTF-8 behind the reader's back
    const fd = openSync(p, 'r+');
    writeSync(fd, Buffer.from([0xff]), 0, 1, 512 + 9);
    closeSync(fd);
    assert.throws(() => r.read(h!), (e: unknown) => e instanceof BackupError && /not valid UTF-8/.test(e.message) && e.offset === 512);
  } finally {
    r.close();
  }
  assert.throws(() => r.read({ kind: 'change', version: 1, offset: 512, pragmaOnly: false }), /closed/);
});
