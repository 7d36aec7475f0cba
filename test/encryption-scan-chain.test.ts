/**
 * An encrypted backup's chain is followed by the reader's open scan (src/crypto/scan-chain.ts), so a
 * restore makes no second pass over the records for it (docs/encryption.md, "The chain", "Cost"). What a
 * restore is told must be exactly what the walk of the records said before: the same break, offset,
 * last authenticated version, newest version and count, in a single file and across segment files.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { createV2, V2Reader, type FileEncryption } from '../src/backends/file/v2.js';
import { SegmentedWriter } from '../src/backends/file/segments.js';
import { openReader } from '../src/backends/open.js';
import { authenticate, unlockAndAuthenticate, type AuthResult, type EncryptableReader } from '../src/crypto/authenticate.js';
import { keyKindCode } from '../src/crypto/records.js';
import type { ScanChain } from '../src/crypto/scan-chain.js';
import { writeKeyFile, type BackupKey } from '../src/crypto/keys.js';
import { fixChecksums, recordsEnd } from './helpers/v2-bytes.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'clnvault-scan-chain-'));
  dirs.push(d);
  return d;
}

function encOf(k: BackupKey): FileEncryption {
  return { kind: keyKindCode(k.kind), fingerprint: Buffer.from(k.fingerprint, 'hex') };
}

function write(path: string, key: BackupKey, n: number, segmentBytes?: number): void {
  createV2(path, encOf(key));
  const w = SegmentedWriter.open(path, { key, ...(segmentBytes !== undefined ? { segmentBytes } : {}) });
  w.appendChange(1, ['CREATE TABLE vars (name TEXT, intval INTEGER)', "INSERT INTO vars VALUES ('data_version', 1)"]);
  for (let v = 2; v <= n; v++) {
    w.appendChange(v, [`INSERT INTO vars VALUES ('label ${v} ${'x'.repeat(200)}', ${v})`, `UPDATE vars SET intval = ${v} WHERE name = 'data_version'`]);
  }
  w.close();
}

/** Each record's [offset, end) in the bytes of a v2 file whose records end at `end`. */
function recordsOf(b: Buffer, end: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let o = 64; o < end; ) {
    const e = o + 40 + b.readUInt32BE(o + 20);
    out.push([o, e]);
    o = e;
  }
  return out;
}

/** Where the data records of the v2 file `path` end (a seal or reserved zeros may follow). */
function dataEnd(path: string): number {
  const r = V2Reader.open(path);
  try {
    return r.dataEnd;
  } finally {
    r.close();
  }
}

/** The same reader without the scan's chain: the chain-mode authentication then walks the records (as before). */
function walkOnly(r: EncryptableReader): EncryptableReader {
  return {
    location: r.location,
    backupId: r.backupId,
    encryption: r.encryption,
    setCrypt: (c) => r.setCrypt(c),
    forEachRecord: (v) => r.forEachRecord(v),
    firstDamage: () => r.firstDamage(),
  };
}

function withReader<T>(path: string, use: (r: EncryptableReader) => T): T {
  const reader = openReader(`file://${path}`, '/');
  try {
    return use(reader as unknown as EncryptableReader);
  } finally {
    reader.close();
  }
}

/** The restore's chain-mode result from the scan, and from a walk of the same reader: they must agree. */
function both(path: string, key: BackupKey): { scan: AuthResult; walk: AuthResult; chain: ScanChain } {
  return withReader(path, (reader) => {
    const scan = unlockAndAuthenticate(reader, key, 'chain')!;
    const walk = authenticate(walkOnly(reader), 'chain');
    return { scan, walk, chain: reader.scannedChain!()!.chain };
  });
}

/** A new encrypted backup of `n` versions, in files of `segmentBytes` if given. */
function setup(n: number, segmentBytes?: number): { dir: string; key: BackupKey; path: string } {
  const dir = tmp();
  const key = writeKeyFile(join(dir, 'k'));
  const path = join(dir, 'b.bkp');
  write(path, key, n, segmentBytes);
  return { dir, key, path };
}

describe('encrypted: the chain followed by the open scan', () => {
  const { dir, key, path } = setup(6);
  const good = readFileSync(path).subarray(0, recordsEnd(path));
  const recs = recordsOf(good, good.length);
  const head = good.subarray(0, 64);
  const at = (k: number): Buffer => good.subarray(recs[k]![0], recs[k]![1]);

  function check(name: string, bytes: Buffer, broken: { offset: number; lastVersion: number | null } | null): void {
    const p = join(dir, `${name}.bkp`);
    writeFileSync(p, bytes);
    const { scan, walk, chain } = both(p, key);
    assert.deepEqual(scan, walk, `${name}: the scan and the walk disagree`);
    if (broken === null) {
      assert.equal(chain.broken, null, name);
      assert.equal(scan.problem, null, name);
      return;
    }
    assert.equal(chain.broken?.offset, broken.offset, `${name}: where the scan saw the break`);
    assert.equal(scan.problem?.offset, broken.offset, name);
    assert.match(scan.problem!.message, broken.lastVersion === null ? /no record before it authenticated/ : new RegExp(`last authenticated version ${broken.lastVersion}, written at \\d{4}-`));
    assert.equal(scan.records, broken.lastVersion ?? 0, `${name}: records before the break`);
  }

  it('an untouched backup: the chain holds, the newest record is authenticated', () => {
    check('good', good, null);
    const { scan, chain } = both(join(dir, 'good.bkp'), key);
    assert.equal(scan.records, 6);
    assert.equal(scan.newestVersion, 6);
    assert.ok(scan.newestTimeMs !== null && scan.newestTimeMs > Date.now() - 600_000);
    assert.equal(chain.newest?.offset, recs[5]![0]);
  });

  it('dropped, swapped, replayed, first dropped: the same break as the walk, found at open', () => {
    check('dropped', Buffer.concat([head, at(0), at(1), at(3), at(4), at(5)]), { offset: recs[2]![0], lastVersion: 2 });
    check('swapped', Buffer.concat([head, at(0), at(2), at(1), at(3), at(4), at(5)]), { offset: recs[1]![0], lastVersion: 1 });
    check('replayed', Buffer.concat([head, at(0), at(1), at(1), at(2), at(3), at(4), at(5)]), { offset: recs[2]![0], lastVersion: 2 });
    check('first-dropped', Buffer.concat([head, at(1), at(2), at(3), at(4), at(5)]), { offset: 64, lastVersion: null });
  });

  it('a forged newest record (checksums recomputed): refused up front, as by the walk', () => {
    const b = Buffer.from(good);
    const [start, end] = recs[5]!;
    b[start + 32 + 70] ^= 0x01;
    fixChecksums(b, start, end);
    const p = join(dir, 'forged-newest.bkp');
    writeFileSync(p, b);
    const { scan, walk } = both(p, key);
    assert.deepEqual(scan, walk);
    assert.equal(scan.problem?.offset, start);
    assert.match(scan.problem!.message, /the newest record, at offset \d+ \(version 6\), fails authentication/);
  });

  it('damage in the middle: the chain stops there, by the walk, as before', () => {
    const b = Buffer.from(good);
    b[recs[3]![0] + 32 + 10] ^= 0x01;
    const p = join(dir, 'damaged.bkp');
    writeFileSync(p, b);
    withReader(p, (reader) => {
      assert.equal(reader.firstDamage(), recs[3]![0]);
      const a = unlockAndAuthenticate(reader, key, 'chain')!;
      assert.equal(a.problem, null);
      assert.equal(a.records, 3);
      assert.equal(a.newestVersion, 3);
      assert.equal(a.stoppedAtDamage, recs[3]![0]);
    });
  });
});

describe('encrypted: the scan follows the chain across segment files', () => {
  const { dir, key, path } = setup(40, 4096);
  const segs = readdirSync(dir).filter((f) => f.startsWith('b.bkp.seg-')).sort();

  it('an untouched segmented backup: one chain over every file', () => {
    assert.ok(segs.length >= 2, `expected several segments: ${readdirSync(dir).join(', ')}`);
    const { scan, walk, chain } = both(path, key);
    assert.deepEqual(scan, walk);
    assert.equal(scan.problem, null);
    assert.equal(scan.records, 40);
    assert.equal(scan.newestVersion, 40);
    assert.equal(chain.newest?.file, segs.length);
  });

  it("a segment's first record dropped: the break at its global offset, in that file", () => {
    const segPath = join(dir, segs[0]!);
    const saved = readFileSync(segPath);
    const end = dataEnd(segPath);
    const recs = recordsOf(saved, end);
    assert.ok(recs.length >= 2);
    try {
      // the records after it move up; its seal stays last
      const cut = Buffer.concat([saved.subarray(0, recs[0]![0]), saved.subarray(recs[1]![0])]);
      writeFileSync(segPath, cut);
      const { scan, walk, chain } = both(path, key);
      assert.deepEqual(scan, walk, 'the scan and the walk disagree');
      assert.equal(chain.broken?.file, 1, 'in the second file');
      assert.ok(scan.problem !== null);
      assert.equal(scan.problem.offset, chain.broken!.offset);
      // global offsets: the second file's first record comes right after the first file's data
      assert.equal(scan.problem.offset, dataEnd(path));
      assert.match(scan.problem.message, /breaks the chain: .*last authenticated version \d+, written at/);
    } finally {
      writeFileSync(segPath, saved);
    }
  });
});
