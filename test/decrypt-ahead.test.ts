/**
 * An encrypted restore decrypts its change records in a worker thread ahead of the apply
 * (src/crypto/decrypt-ahead.ts, docs/encryption.md "Cost"): the restored database is the plain backup's,
 * the worker really served the records, and a forged record inside the decrypted-ahead run is refused
 * exactly as without it (its offset, the last authenticated version, nothing left behind).
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { createV2 } from '../src/backends/file/v2.js';
import { SegmentedWriter } from '../src/backends/file/segments.js';
import { openReader } from '../src/backends/open.js';
import { unlockAndAuthenticate } from '../src/crypto/authenticate.js';
import { MIN_AHEAD_BYTES } from '../src/crypto/decrypt-ahead.js';
import { keyKindCode } from '../src/crypto/records.js';
import { writeKeyFile, type BackupKey } from '../src/crypto/keys.js';
import { restoreBackup } from '../src/restore/restore.js';
import { dump } from './helpers/sqlite.js';
import { fixChecksums } from './helpers/v2-bytes.js';

const dir = mkdtempSync(join(tmpdir(), 'clnvault-decrypt-ahead-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const LABEL = 'x'.repeat(1900);
// enough bytes after the first record for the worker to be worth starting
const N = Math.ceil((MIN_AHEAD_BYTES * 1.2) / LABEL.length);
// one change in the middle too big for a batch: read inline, and the batches go on after it
const BIG = Math.floor(N / 2);

function build(path: string, key: BackupKey | null): void {
  createV2(path, key ? { kind: keyKindCode(key.kind), fingerprint: Buffer.from(key.fingerprint, 'hex') } : null);
  const w = SegmentedWriter.open(path, key ? { key } : {});
  try {
    w.appendChange(1, ['CREATE TABLE vars (name TEXT, intval INTEGER)', "INSERT INTO vars VALUES ('data_version', 1)", 'CREATE TABLE t (v INTEGER, label TEXT)']);
    for (let v = 2; v <= N; v++) {
      const label = v === BIG ? 'y'.repeat(300_000) : LABEL;
      w.appendChange(v, [`INSERT INTO t VALUES (${v}, '${label}${v}')`, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${v - 1}`]);
    }
  } finally {
    w.close();
  }
}

/** [offset, end) of each record (the file's reserved zeros after them are not records). */
function records(b: Buffer): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let o = 64; o + 40 <= b.length && b.readUInt32BE(o + 20) > 0; ) {
    const end = o + 40 + b.readUInt32BE(o + 20);
    out.push([o, end]);
    o = end;
  }
  return out;
}

describe('encrypted restore: decryption ahead in a worker thread', () => {
  const key = writeKeyFile(join(dir, 'k'));
  const enc = join(dir, 'enc.bkp');
  const plain = join(dir, 'plain.bkp');
  build(enc, key);
  build(plain, null);

  it('restores the same database as the plain backup, every change record but the one too big for a batch decrypted by the worker', () => {
    const reader = openReader(`file://${enc}`, '/');
    const destE = join(dir, 'enc.sqlite3');
    const destP = join(dir, 'plain.sqlite3');
    try {
      const auth = unlockAndAuthenticate(reader, key, 'chain')!;
      assert.equal(auth.problem, null);
      // the test machine may be busy: the worker is started whether or not a core looks free
      reader.decryptAhead!({ always: true });
      const r = restoreBackup(reader, destE);
      assert.equal(r.head, N);
      assert.equal((reader as unknown as { decryptedAhead: number }).decryptedAhead, N - 1, 'the worker decrypted every other record');
    } finally {
      reader.close();
    }
    const pr = openReader(`file://${plain}`, '/');
    try {
      restoreBackup(pr, destP);
    } finally {
      pr.close();
    }
    assert.equal(dump(destE), dump(destP));
  });

  /** A copy of the backup with a ciphertext byte of record k = N - 50 changed and its checksums recomputed. */
  function forgedCopy(name: string): { path: string; start: number; k: number } {
    const good = readFileSync(enc);
    const recs = records(good);
    assert.equal(recs.length, N);
    const k = N - 50;
    const [start, end] = recs[k]!;
    const b = Buffer.from(good);
    // a ciphertext byte: the chain (prefix, tag) is untouched, only decryption can tell
    b[start + 32 + 48 + 100]! ^= 0x01;
    fixChecksums(b, start, end);
    const path = join(dir, name);
    writeFileSync(path, b);
    return { path, start, k };
  }

  /** The restore fails at the forged record, naming it and the version before it. */
  function refusedAt(restore: () => unknown, start: number, k: number): void {
    assert.throws(restore, (e: Error) => {
      assert.match(e.message, new RegExp(`offset ${start}\\b`));
      assert.match(e.message, /fails authentication/);
      assert.match(e.message, new RegExp(`last authenticated version ${k}, written at \\d{4}-`));
      return true;
    });
  }

  it('a forged record deep in the run (checksums recomputed) is refused with its offset and the version before it; nothing left behind', () => {
    const { path: forged, start, k } = forgedCopy('forged.bkp');
    const out = join(dir, 'out');
    mkdirSync(out);
    const reader = openReader(`file://${forged}`, '/');
    try {
      const auth = unlockAndAuthenticate(reader, key, 'chain')!;
      assert.equal(auth.problem, null, 'the chain does not see it: only decryption can');
      reader.decryptAhead!({ always: true });
      refusedAt(() => restoreBackup(reader, out), start, k);
      assert.equal((reader as unknown as { decryptedAhead: number }).decryptedAhead, k - 1, 'the records before it came from the worker (but the big one)');
    } finally {
      reader.close();
    }
    assert.deepEqual(readdirSync(out), [], 'nothing left behind');
  });

  it('the default mode (auto: the worker started whatever the load, given two CPUs, and given up if it falls behind): the same database, and a forged record refused alike', () => {
    const dest = join(dir, 'auto.sqlite3');
    const reader = openReader(`file://${enc}`, '/');
    try {
      assert.equal(unlockAndAuthenticate(reader, key, 'chain')!.problem, null);
      assert.equal(restoreBackup(reader, dest, { decryptAhead: 'auto' }).head, N);
      // started whatever the load average (the gate it had once kept it off on any busy machine); on a very
      // busy one it may give up after its first batch (LAG_SHARE) and the rest is decrypted inline
      const served = (reader as unknown as { decryptedAhead: number }).decryptedAhead;
      const at = `records the worker served at load ${loadavg()[0]!.toFixed(2)}: ${served}`;
      if (availableParallelism() >= 2) assert.ok(served > 0 && served <= N - 1, at);
      else assert.equal(served, 0, at);
    } finally {
      reader.close();
    }
    assert.equal(dump(dest), dump(join(dir, 'plain.sqlite3')));
    const { path: forged, start, k } = forgedCopy('forged-auto.bkp');
    const out = join(dir, 'out-auto');
    mkdirSync(out);
    const fr = openReader(`file://${forged}`, '/');
    try {
      assert.equal(unlockAndAuthenticate(fr, key, 'chain')!.problem, null);
      refusedAt(() => restoreBackup(fr, out, { decryptAhead: 'auto' }), start, k);
    } finally {
      fr.close();
    }
    assert.deepEqual(readdirSync(out), [], 'nothing left behind');
  });
});
