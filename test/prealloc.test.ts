/**
 * Format 4, preallocated segments (docs/format-v2.md, "Preallocation"): records are written into zeros
 * reserved ahead of the writer, the end of the data is found from the records themselves, and a record
 * left in the space by an earlier use (another set, another backup) never passes as new. Crashes are
 * simulated by the bytes a file can hold at the instant of a crash: every cut of the last records over
 * the reserve's zeros, or over the stale records of an earlier use, and pages of a write landing out of
 * order.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { crc32 } from 'node:zlib';
import { listHeaders } from '../src/backends/backend.js';
import { encodeSegmentHeader, listSegmentFiles, readSegmentHeader, SegmentedReader, SegmentedWriter } from '../src/backends/file/segments.js';
import {
  createV2,
  encodeChangeRecord,
  encodeFileHeader,
  FILE_FLAG_ENCRYPTED,
  FILE_HEADER_LEN,
  parseRecordHeader,
  RECORD_OVERHEAD,
  recordSeed,
  recordSeedOf,
  resealRecordHeader,
  RESERVE_MIN,
  SEAL_RECORD_LEN,
  seedOfRecordHeader,
  V2Reader,
  V2Writer,
} from '../src/backends/file/v2.js';
import { openReader } from '../src/backends/open.js';
import { compactFile, identityOf } from '../src/compact/compact.js';
import { unlockAndAuthenticate } from '../src/crypto/authenticate.js';
import { writeKeyFile, type BackupKey } from '../src/crypto/keys.js';
import { keyKindCode } from '../src/crypto/records.js';
import type { ChangeEntry } from '../src/engine/entries.js';
import { runCli, show } from './helpers/cli.js';

const dirs: string[] = [];
after(() => {
  if (!process.env.CLNVAULT_KEEP_TMP) for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'clnvault-prealloc-'));
  dirs.push(d);
  return d;
}

const stmts = (v: number): string[] => [`INSERT INTO t VALUES (${v}, '${'p'.repeat(40 + (v % 7) * 13)}')`, `UPDATE vars SET intval = ${v}`];

/** Versions and statements a reader returns, and what it reports. */
function readAll(path: string): { versions: number[]; statements: string[][]; problems: string[]; reserved: number; bytes: number } {
  const r = V2Reader.open(path);
  try {
    const hs = listHeaders(r, { beforeDamage: true });
    return {
      versions: hs.map((h) => h.version),
      statements: hs.map((h) => (r.read(h) as ChangeEntry).statements),
      problems: r.problems().map((p) => `${p.kind}@${p.offset}`),
      reserved: r.reservedBytes,
      bytes: r.stats().bytes,
    };
  } finally {
    r.close();
  }
}

/** A writer's file after `n` appends, with its reserve topped up as the plugin does between hooks. */
function writtenFile(path: string, n: number): { ends: number[] } {
  createV2(path);
  const w = V2Writer.open(path);
  const ends: number[] = [];
  try {
    assert.equal(w.prepare(), true, 'a fresh format-4 file gets its reserve');
    for (let v = 1; v <= n; v++) {
      w.appendChange(v, stmts(v));
      ends.push(w.endOffset());
      w.prepare();
    }
  } finally {
    w.close();
  }
  return { ends };
}

test('appends land inside the reserve: the file size does not change, the data end is found from the records', () => {
  const path = join(tmp(), 'b.cv2');
  createV2(path);
  const w = V2Writer.open(path);
  w.prepare();
  const size = statSync(path).size;
  assert.ok(size >= RESERVE_MIN, `reserve of ${size} bytes`);
  assert.ok(readFileSync(path).subarray(FILE_HEADER_LEN).equals(Buffer.alloc(size - FILE_HEADER_LEN)), 'the reserve is zeros');
  for (let v = 1; v <= 200; v++) w.appendChange(v, stmts(v));
  // the point of it all: no append changed the file's size, so no fdatasync had a size change to commit
  assert.equal(statSync(path).size, size);
  const end = w.endOffset();
  assert.equal(w.reservedBytes(), size - end);
  assert.deepEqual(w.stats().bytes, end, 'status counts data, not reserved space');
  w.close();

  const w2 = V2Writer.open(path);
  try {
    assert.equal(w2.openStats.path, 'fast', 'the fast open finds the end through the reserve');
    assert.equal(w2.openStats.recordsValidated, 1);
    assert.equal(w2.endOffset(), end);
    assert.equal(w2.head(), 200);
    assert.deepEqual(w2.repaired(), []);
  } finally {
    w2.close();
  }
  const got = readAll(path);
  assert.deepEqual(got.versions, Array.from({ length: 200 }, (_, i) => i + 1));
  assert.deepEqual(got.problems, []);
  assert.equal(got.reserved, size - end);
  assert.equal(got.bytes, end);
});

test('a crash with reserved zeros after the last record: nothing to repair, every record kept, the reserve kept', () => {
  const dir = tmp();
  const path = join(dir, 'b.cv2');
  const { ends } = writtenFile(path, 30);
  const crashed = readFileSync(path);
  const copy = join(dir, 'crashed.cv2');
  writeFileSync(copy, crashed);
  const w = V2Writer.open(copy);
  try {
    assert.deepEqual(w.repaired(), []);
    assert.equal(w.head(), 30);
    assert.equal(w.endOffset(), ends.at(-1));
    assert.ok(w.reservedBytes() > 0);
  } finally {
    w.close();
  }
  assert.ok(readFileSync(copy).equals(crashed), 'the open changed nothing');
  assert.deepEqual(readAll(copy).problems, []);
});

/**
 * The file at the instant a crash interrupts the write of the last records: `full` is what the disk would
 * hold had the writes completed, `before` what the space held before (zeros, or an earlier use's bytes).
 * Every cut from the start of the second-to-last record to the end of the last, then what `before` held.
 * Expectation: the records that ended before the cut, nothing else; the open leaves zeros after them; an
 * append after it reads back.
 */
function cutEverywhere(dir: string, full: Buffer, before: Buffer, ends: number[], versions: number[]): number {
  assert.equal(full.length, before.length);
  const path = join(dir, 'cut.cv2');
  const from = ends.at(-3)!;
  let cases = 0;
  for (let cut = from; cut <= ends.at(-1)!; cut++) {
    cases++;
    const state = Buffer.concat([full.subarray(0, cut), before.subarray(cut)]);
    writeFileSync(path, state);
    // a record counts when the disk holds exactly its bytes (a cut after the last byte that differs from what
    // the space held before leaves it whole, as a write that completed but was never acknowledged)
    let whole = 0;
    while (whole < ends.length && state.subarray(whole === 0 ? FILE_HEADER_LEN : ends[whole - 1]!, ends[whole]!).equals(full.subarray(whole === 0 ? FILE_HEADER_LEN : ends[whole - 1]!, ends[whole]!))) whole++;
    const want = versions.slice(0, whole);
    const seen = readAll(path);
    assert.deepEqual(seen.versions, want, `cut ${cut}: reader`);
    assert.ok(seen.problems.every((p) => p.startsWith('torn-tail')), `cut ${cut}: ${seen.problems.join(', ')}`);
    const w = V2Writer.open(path);
    try {
      assert.equal(w.head(), want.at(-1) ?? 0, `cut ${cut}: writer head`);
      const end = w.endOffset();
      assert.equal(end, whole === 0 ? FILE_HEADER_LEN : ends[whole - 1]!);
      const after = readFileSync(path).subarray(end);
      assert.ok(after.equals(Buffer.alloc(after.length)), `cut ${cut}: only zeros after the data once opened`);
      w.appendChange(9_000, ['INSERT INTO t VALUES (9000)']);
    } finally {
      w.close();
    }
    const again = readAll(path);
    assert.deepEqual(again.versions, [...want, 9_000], `cut ${cut}: after an append`);
    assert.deepEqual(again.problems, []);
    assert.deepEqual(again.statements.at(-1), ['INSERT INTO t VALUES (9000)']);
  }
  return cases;
}

test('torn tail over reserved zeros: a crash at every byte of the last two records recovers to the last whole one', () => {
  const dir = tmp();
  const path = join(dir, 'b.cv2');
  const { ends } = writtenFile(path, 12);
  const full = readFileSync(path);
  // before the last two records were written, their space held the reserve's zeros
  const before = Buffer.concat([full.subarray(0, ends.at(-3)!), Buffer.alloc(full.length - ends.at(-3)!)]);
  const cases = cutEverywhere(dir, full, before, ends, Array.from({ length: 12 }, (_, i) => i + 1));
  assert.ok(cases > 200);
});

test('pages of the last record landing out of order (a hole of zeros inside it) are a torn tail, never a record', () => {
  const dir = tmp();
  const path = join(dir, 'b.cv2');
  createV2(path);
  const w = V2Writer.open(path);
  w.prepare();
  w.appendChange(1, ['INSERT INTO t VALUES (1)']);
  const start = w.endOffset();
  w.appendChange(2, [`INSERT INTO t VALUES ('${'z'.repeat(20_000)}')`]);
  const end = w.endOffset();
  w.close();
  const full = readFileSync(path);
  const copy = join(dir, 'holes.cv2');
  for (const [a, b] of [
    [start + 4096, start + 8192],
    [end - 4096, end - 8],
    [start + 100, end - 100],
    [end - 8, end],
  ] as const) {
    const state = Buffer.from(full);
    state.fill(0, a, b);
    writeFileSync(copy, state);
    const seen = readAll(copy);
    assert.deepEqual(seen.versions, [1], `hole [${a}, ${b})`);
    const ww = V2Writer.open(copy);
    try {
      assert.equal(ww.head(), 1);
      assert.equal(ww.repaired().length, 1);
      assert.equal(ww.repaired()[0]!.offset, start);
    } finally {
      ww.close();
    }
  }
});

test('space that held records of an earlier use (another segment set, another backup) cut at every offset: no stale record is accepted, no acknowledged one lost', () => {
  const dir = tmp();
  const backupId = Buffer.alloc(16, 0x5a);
  const n = 14;
  const records = (seed: number): Buffer[] => Array.from({ length: n }, (_, i) => encodeChangeRecord(i + 1, stmts(i + 1), undefined, seed));
  const header = (id: Buffer, setId: number): Buffer => encodeSegmentHeader({ backupId: id, createdMs: 1_700_000_000_000, index: 0, setId, version: 4 });
  for (const [what, oldHeader] of [
    ['an earlier set of the same backup', header(backupId, 0x1111)],
    ['another backup', header(Buffer.alloc(16, 0x33), 0x2222)],
  ] as const) {
    // the old use: the same records byte for byte but for their seeds (what compaction copies), so the
    // stale ones sit exactly at the record boundaries of the new ones, the hardest case
    const old = Buffer.concat([oldHeader, ...records(recordSeedOf(oldHeader)), Buffer.alloc(4096)]);
    const newHeader = header(backupId, 0x3333);
    const fresh = records(recordSeedOf(newHeader));
    const k = 9;
    const newBytes = Buffer.concat([newHeader, ...fresh.slice(0, k)]);
    const full = Buffer.concat([newBytes, old.subarray(newBytes.length)]);
    const before = Buffer.concat([newHeader, old.subarray(FILE_HEADER_LEN)]);
    const ends: number[] = [];
    let at = FILE_HEADER_LEN;
    for (const r of fresh.slice(0, k)) ends.push((at += r.length));
    // the stale record right after the last new one is whole and well formed: only its seed tells it apart
    const stale = parseRecordHeader(full.subarray(ends.at(-1)!, ends.at(-1)! + 32), recordSeedOf(oldHeader));
    assert.equal(typeof stale, 'object', `${what}: the stale record is valid for its own seed`);
    assert.equal(typeof parseRecordHeader(full.subarray(ends.at(-1)!, ends.at(-1)! + 32), recordSeedOf(newHeader)), 'string');
    const cases = cutEverywhere(dir, full, before, ends, Array.from({ length: k }, (_, i) => i + 1));
    assert.ok(cases > 200, what);
  }
});

test('dropHead clears the dropped records (newest first): they never come back, and a crash half-way leaves no damage', () => {
  const dir = tmp();
  const path = join(dir, 'b.cv2');
  createV2(path);
  const w = V2Writer.open(path);
  w.prepare();
  for (let v = 1; v <= 5; v++) w.appendChange(v, stmts(v));
  const groupStart = w.endOffset();
  w.appendChange(6, ['INSERT INTO t VALUES (6)']);
  const mid = w.endOffset();
  w.appendChange(6, ['PRAGMA foreign_keys = ON;']);
  const end = w.endOffset();
  w.close();
  const full = readFileSync(path);

  // a crash after the newest record was cleared, before the one before it
  const half = Buffer.from(full);
  half.fill(0, mid, end);
  const copy = join(dir, 'half.cv2');
  writeFileSync(copy, half);
  const seen = readAll(copy);
  assert.deepEqual(seen.problems, []);
  assert.deepEqual(seen.versions, [1, 2, 3, 4, 5, 6]);
  const w2 = V2Writer.open(copy);
  assert.equal(w2.dropHead(), 5, 'the rest of the group is dropped on the next start');
  w2.close();

  const w3 = V2Writer.open(path);
  assert.equal(w3.dropHead(), 5);
  assert.equal(w3.endOffset(), groupStart);
  w3.close();
  assert.ok(readFileSync(path).subarray(groupStart, end).equals(Buffer.alloc(end - groupStart)), 'cleared');
  const w4 = V2Writer.open(path);
  try {
    assert.equal(w4.head(), 5, 'the dropped records are gone for good');
    assert.equal(w4.endOffset(), groupStart);
  } finally {
    w4.close();
  }
  assert.deepEqual(readAll(path).versions, [1, 2, 3, 4, 5]);
});

test('bit rot in a preallocated file: every flip of the last record is cut as a suspect tail, of a middle record reported at its offset', () => {
  const dir = tmp();
  const path = join(dir, 'b.cv2');
  const { ends } = writtenFile(path, 4);
  const full = readFileSync(path);
  const copy = join(dir, 'flip.cv2');
  const check = (lo: number, hi: number, last: boolean): void => {
    for (let o = lo; o < hi; o++) {
      const b = Buffer.from(full);
      b[o]! ^= 0x20;
      writeFileSync(copy, b);
      const r = V2Reader.open(copy);
      try {
        const p = r.problems();
        assert.equal(p.length, 1, `flip at ${o}: ${JSON.stringify(p)}`);
        assert.equal(p[0]!.offset, lo, `flip at ${o}`);
        assert.equal(p[0]!.kind, last ? 'torn-tail' : 'corrupt', `flip at ${o}`);
        // a whole-length record that fails its payload check: said to be either a torn append or damage
        if (last && o >= lo + 32) assert.equal(p[0]!.suspect, true, `flip at ${o}`);
      } finally {
        r.close();
      }
    }
  };
  check(ends[2]!, ends[3]!, true);
  check(ends[0]!, ends[1]!, false);
});

test('format 3 files (earlier clnvault) are read and appended to as before: no reserve, unseeded records', () => {
  const dir = tmp();
  const path = join(dir, 'old.cv2');
  writeFileSync(path, encodeFileHeader(Buffer.alloc(16, 9), 1_700_000_000_000, null, 3));
  const w = V2Writer.open(path);
  assert.equal(w.prepare(), false);
  for (let v = 1; v <= 10; v++) w.appendChange(v, stmts(v));
  assert.equal(statSync(path).size, w.endOffset(), 'appends, no reserve');
  w.close();
  const file = readFileSync(path);
  assert.equal(file.readUInt32BE(FILE_HEADER_LEN + 28), crc32(file.subarray(FILE_HEADER_LEN, FILE_HEADER_LEN + 28)), 'unseeded header CRC');
  assert.deepEqual(readAll(path).versions, Array.from({ length: 10 }, (_, i) => i + 1));
});

test('compaction turns a format-3 backup into a format-4 set: every copied header re-sealed for the new set', () => {
  const dir = tmp();
  const path = join(dir, 'old.cv2');
  writeFileSync(path, encodeFileHeader(Buffer.alloc(16, 9), 1_700_000_000_000, null, 3));
  const w = SegmentedWriter.open(path);
  w.appendChange(1, ['CREATE TABLE t(a, b)']);
  for (let v = 2; v <= 60; v++) w.appendChange(v, [`INSERT INTO t VALUES (${v}, 'x')`]);
  const outcome = compactFile(
    path,
    {
      committedEnd: () => w.endOffset(),
      committedFile: () => identityOf(path),
      failedAfterSwap: () => undefined,
      truncations: () => 0,
      exclusive: (fn) => fn(() => undefined),
      log: () => undefined,
    },
    { format: 'v2', history: 0 },
  );
  assert.ok(outcome.compacted);
  w.reopen();
  w.prepare();
  w.appendChange(61, ['INSERT INTO t VALUES (61, \'x\')']);
  w.close();
  const h = readSegmentHeader(path);
  assert.equal(h.version, 4);
  const seed = recordSeed(h.backupId, h.setId);
  const file = readFileSync(path);
  let o = FILE_HEADER_LEN;
  let n = 0;
  while (o < file.length && file.readUInt32BE(o) !== 0) {
    assert.equal(file.readUInt32BE(o + 28), crc32(file.subarray(o, o + 28), seed), `record at ${o} sealed for the new set`);
    o += RECORD_OVERHEAD + Number(file.readBigUInt64BE(o + 16));
    n++;
  }
  assert.ok(n >= 2);
  const r = SegmentedReader.open(path);
  try {
    const hs = listHeaders(r);
    assert.equal(hs[0]!.kind, 'snapshot');
    assert.equal(hs.at(-1)!.version, 61);
    assert.deepEqual(r.problems(), []);
  } finally {
    r.close();
  }
});

test('segments with preallocation: no file past the limit, sealed segments hold no reserve, everything reads back', () => {
  const dir = tmp();
  const path = join(dir, 'b.cv2');
  createV2(path);
  const limit = 64 * 1024;
  const w = SegmentedWriter.open(path, { segmentBytes: limit });
  let v = 0;
  try {
    w.prepare();
    while (listSegmentFiles(path).length < 4) {
      w.appendChange(++v, stmts(v));
      w.prepare();
    }
  } finally {
    w.close();
  }
  const files = [path, ...listSegmentFiles(path).map((f) => f.path)];
  for (const f of files) assert.ok(statSync(f).size <= limit, `${f}: ${statSync(f).size} bytes`);
  for (const f of files.slice(0, -1)) {
    const b = readFileSync(f);
    // the segment ends with its seal, right after its data: no reserve left in a sealed segment
    assert.equal(b[b.length - SEAL_RECORD_LEN + 4], 4, `${f} ends with a seal`);
  }
  assert.ok(statSync(files.at(-1)!).size > FILE_HEADER_LEN, 'the newest segment has its reserve');
  const r = SegmentedReader.open(path);
  try {
    assert.deepEqual(listHeaders(r).map((h) => h.version), Array.from({ length: v }, (_, i) => i + 1));
    assert.deepEqual(r.problems(), []);
  } finally {
    r.close();
  }
  const w2 = SegmentedWriter.open(path, { segmentBytes: limit });
  try {
    assert.equal(w2.head(), v);
    assert.deepEqual(w2.repaired(), []);
  } finally {
    w2.close();
  }
});

test('inspect reports reserved space apart from data; its byte count is the data', async () => {
  const dir = tmp();
  const path = join(dir, 'b.cv2');
  const { ends } = writtenFile(path, 20);
  const json = await runCli(['inspect', '--json', path]);
  assert.equal(json.code, 0, show(json));
  const rep = JSON.parse(json.stdout) as { bytes: number; fileBytes: number; reservedBytes: number; entries: number; problems: unknown[] };
  assert.equal(rep.bytes, ends.at(-1));
  assert.equal(rep.fileBytes, statSync(path).size);
  assert.equal(rep.reservedBytes, rep.fileBytes - rep.bytes);
  assert.ok(rep.reservedBytes > 0);
  assert.equal(rep.entries, 20);
  assert.deepEqual(rep.problems, []);
  const text = await runCli(['inspect', path]);
  assert.equal(text.code, 0, show(text));
  assert.match(text.stdout, /reserved for the next records/);
});

test('the record CRC seed of a damaged file header is recovered from the first record (CRC-32 run backwards)', () => {
  for (const seed of [0, 1, 0xdeadbeef, 0xffffffff, recordSeed(Buffer.alloc(16, 0x42), 7)]) {
    const rec = encodeChangeRecord(3, ['INSERT INTO t VALUES (3)'], undefined, seed);
    assert.equal(seedOfRecordHeader(rec.subarray(0, 32)), seed);
  }
});

// ---------------------------------------------------------------------------------------------------
// Encrypted backups (docs/encryption.md) are preallocated too: the file header carries both the encrypted
// flag with its key description and format 4, and the seeded header CRC is what keeps stale records out

/** What a restore sees of an encrypted backup: its chain authenticated first, then every entry decrypted. */
function readAllEncrypted(path: string, key: BackupKey): { versions: number[]; statements: string[][]; problems: string[]; auth: string | null; records: number } {
  const r = openReader(`file://${path}`, '/');
  try {
    const problems = r.problems().map((p) => `${p.kind}@${p.offset}`);
    const a = unlockAndAuthenticate(r, key);
    assert.ok(a, 'an encrypted backup');
    const hs = listHeaders(r, { beforeDamage: true });
    return {
      versions: hs.map((h) => h.version),
      statements: hs.map((h) => (r.read(h) as ChangeEntry).statements),
      problems,
      auth: a.problem?.message ?? null,
      records: a.records,
    };
  } finally {
    r.close();
  }
}

test('an encrypted format-4 backup: a crash with reserved zeros after the last record, and a cut at every offset over space that held the same records of an earlier set', () => {
  const dir = tmp();
  const key = writeKeyFile(join(dir, 'k'));
  const path = join(dir, 'b.cv2');
  createV2(path, { kind: keyKindCode(key.kind), fingerprint: Buffer.from(key.fingerprint, 'hex') });
  const header = readFileSync(path).subarray(0, FILE_HEADER_LEN);
  assert.equal(header.readUInt16BE(8), 4, 'format 4');
  assert.equal(header.readUInt32BE(12) & FILE_FLAG_ENCRYPTED, FILE_FLAG_ENCRYPTED, 'encrypted');
  assert.ok(header.subarray(52, 60).equals(Buffer.from(key.fingerprint, 'hex')), "the key's fingerprint");
  const n = 14;
  const w = SegmentedWriter.open(path, { key });
  assert.equal(w.prepare(), true, 'an encrypted backup gets its reserve');
  const size = statSync(path).size;
  const ends: number[] = [];
  for (let v = 1; v <= n; v++) {
    w.appendChange(v, stmts(v));
    ends.push(w.endOffset());
    w.prepare();
  }
  w.close();
  assert.equal(statSync(path).size, size, 'every encrypted append landed inside the reserve');
  const full = readFileSync(path);
  assert.ok(full.indexOf(Buffer.from(stmts(5)[0]!)) < 0, 'no statement in clear');

  // a crash with the reserve's zeros after the last record: nothing repaired, every record authenticated
  const crashed = join(dir, 'crashed.cv2');
  writeFileSync(crashed, full);
  const w1 = SegmentedWriter.open(crashed, { key });
  try {
    assert.deepEqual(w1.repaired(), []);
    assert.equal(w1.head(), n);
    assert.equal(w1.endOffset(), ends.at(-1));
    assert.ok(w1.reservedBytes() > 0);
  } finally {
    w1.close();
  }
  assert.ok(readFileSync(crashed).equals(full), 'the open changed nothing');
  const seen = readAllEncrypted(crashed, key);
  assert.deepEqual(seen.problems, []);
  assert.equal(seen.auth, null);
  assert.equal(seen.records, n);
  assert.deepEqual(seen.versions, Array.from({ length: n }, (_, i) => i + 1));
  assert.deepEqual(seen.statements[4], stmts(5));

  // the space held the same records for an earlier set of this backup (compaction copies encrypted records
  // byte for byte): they decrypt, authenticate and chain like the new ones; only the header CRC's seed,
  // which a new set id changes, tells them apart. Cut at every offset of the last new records
  const oldSeed = recordSeed(header.subarray(16, 32), header.readUInt32BE(44) ^ 0x5a5a5a5a);
  const old = Buffer.from(full);
  for (let at = FILE_HEADER_LEN, i = 0; i < n; at = ends[i++]!) resealRecordHeader(old, at, oldSeed);
  const k = 9;
  const mixed = Buffer.concat([full.subarray(0, ends[k - 1]!), old.subarray(ends[k - 1]!)]);
  const before = Buffer.concat([header, old.subarray(FILE_HEADER_LEN)]);
  const cut = join(dir, 'cut.cv2');
  let cases = 0;
  for (let c = ends[k - 3]!; c <= ends[k - 1]!; c++) {
    cases++;
    const state = Buffer.concat([mixed.subarray(0, c), before.subarray(c)]);
    writeFileSync(cut, state);
    let whole = 0;
    while (whole < k && state.subarray(whole === 0 ? FILE_HEADER_LEN : ends[whole - 1]!, ends[whole]!).equals(full.subarray(whole === 0 ? FILE_HEADER_LEN : ends[whole - 1]!, ends[whole]!))) whole++;
    const want = Array.from({ length: whole }, (_, i) => i + 1);
    const got = readAllEncrypted(cut, key);
    assert.deepEqual(got.versions, want, `cut ${c}: no stale record read`);
    assert.equal(got.auth, null, `cut ${c}`);
    assert.ok(got.problems.every((p) => p.startsWith('torn-tail')), `cut ${c}: ${got.problems.join(', ')}`);
    const w2 = SegmentedWriter.open(cut, { key });
    try {
      assert.equal(w2.head(), whole, `cut ${c}: writer head`);
      const end = w2.endOffset();
      assert.equal(end, whole === 0 ? FILE_HEADER_LEN : ends[whole - 1]!);
      const rest = readFileSync(cut).subarray(end);
      assert.ok(rest.equals(Buffer.alloc(rest.length)), `cut ${c}: only zeros after the data once opened`);
      // a new writer session goes on from the last whole record's link
      w2.appendChange(9_000, ['INSERT INTO t VALUES (9000)']);
    } finally {
      w2.close();
    }
    const again = readAllEncrypted(cut, key);
    assert.deepEqual(again.versions, [...want, 9_000], `cut ${c}: after an append`);
    assert.deepEqual(again.problems, []);
    assert.equal(again.auth, null, `cut ${c}: the chain goes on`);
    assert.equal(again.records, whole + 1);
    assert.deepEqual(again.statements.at(-1), ['INSERT INTO t VALUES (9000)']);
  }
  assert.ok(cases > 200, `${cases} cuts`);
});
