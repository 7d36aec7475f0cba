import { closeSync, fsyncSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { BackupError } from '../../engine/entries.js';
import { cryptFor, type KeyLike } from '../../crypto/backup-crypt.js';
import { AuthError, ChainCheck, LINK_LEN, parsePrefix, prefixLen, TAG_LEN, type RecordCrypt, type RecordMeta } from '../../crypto/records.js';
import { CHUNK, changePayloadLength, decodeChangePayload, encodeChangePayloadAt, FLAG_ENCRYPTED, FLAG_PRAGMA_ONLY, TYPE_CHANGE, TYPE_SNAPSHOT, type FileEncryption } from '../file/v2/codec.js';
import type { HeaderRow, PgEncryption } from './protocol.js';

/**
 * Encrypted PostgreSQL backups (docs/encryption.md, "PostgreSQL"): the v2 record construction, unchanged.
 * A change row's `record` is exactly the stored payload of an encrypted v2 change record (prefix,
 * ciphertext of the v2 change payload, tag); a snapshot row's `record` is a v2 snapshot record's 64-byte
 * prefix and its tag, its ciphertext in the snapshot_chunks rows. The AAD is the v2 one: the backup's
 * random id (backups.uid), the record type (1 change, 2 snapshot), its flags (encrypted, PRAGMA-only),
 * version and part count (0), and the prefix; the rows' order (seq) is authenticated by the chain.
 *
 * One rule differs from files, for compaction inside the database: a snapshot whose prev is zeros starts
 * the chain anew (compaction's covering snapshot, committed before the rows it covers are deleted, and
 * sorting right after the last of them). It cannot be forged without the key, and the record after it must
 * name its link, so it can stand only where a compaction put it: dropping the rows before it loses nothing a
 * restore uses, and serving an older whole copy is the stale-copy case every restore reports with the
 * newest authenticated version and time.
 */

const ZERO_LINK = Buffer.alloc(LINK_LEN);

export function toBuffer(u: Uint8Array): Buffer {
  return Buffer.isBuffer(u) ? u : Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}

/** The backups row's encryption as a v2 file header would describe it (inspect, status, key checks). */
export function fileEncryptionOf(e: PgEncryption | null): FileEncryption | null {
  return e === null ? null : { kind: e.kind, fingerprint: Buffer.from(e.fingerprint, 'hex') };
}

/** The record cipher for a PostgreSQL backup, or null for a plaintext one; a missing or wrong key fails here with one line. */
export function pgCrypt(location: string, enc: PgEncryption | null, key: KeyLike | null | undefined, forWriting: boolean): RecordCrypt | null {
  return cryptFor(location, fileEncryptionOf(enc), enc === null ? Buffer.alloc(16) : Buffer.from(enc.uid, 'hex'), key, forWriting);
}

export function changeMeta(version: number, pragmaOnly: boolean): RecordMeta {
  return { type: TYPE_CHANGE, flags: FLAG_ENCRYPTED | (pragmaOnly ? FLAG_PRAGMA_ONLY : 0), version, parts: 0 };
}

export function snapshotMeta(version: number): RecordMeta {
  return { type: TYPE_SNAPSHOT, flags: FLAG_ENCRYPTED, version, parts: 0 };
}

/** An encrypted change row's record; crypt.committed() once the row is stored. */
export function sealChange(crypt: RecordCrypt, version: number, statements: readonly string[], pragmaOnly: boolean): Buffer {
  const ptLen = changePayloadLength(statements);
  const p = prefixLen(TYPE_CHANGE);
  const buf = Buffer.allocUnsafe(p + ptLen + TAG_LEN);
  encodeChangePayloadAt(buf, p, statements, ptLen);
  const n = crypt.sealInPlace(buf, 0, changeMeta(version, pragmaOnly), ptLen);
  return buf.subarray(0, n);
}

/** The statements of an encrypted change row; AuthError when it does not authenticate. */
export function openChange(crypt: RecordCrypt, version: number, pragmaOnly: boolean, record: Buffer): string[] {
  const { plain } = crypt.open(changeMeta(version, pragmaOnly), record);
  try {
    return decodeChangePayload(plain);
  } catch (e) {
    // authenticated, so written like this by a writer holding the key: a bug, not an attack
    throw new AuthError(`its authenticated payload does not decode: ${(e as Error).message}`);
  }
}

/**
 * Encrypts the database file `src` into `dst` (a scratch file the worker then stores in chunks) in
 * bounded memory. Returns the snapshot row's record: the prefix and the tag. `chainStart`: compaction's
 * covering snapshot, prev zeros and `link` the link of the last row it covers.
 */
export function encryptSnapshotFile(crypt: RecordCrypt, version: number, src: string, dst: string, chainStart?: { link: Buffer }): Buffer {
  const s = crypt.stream(snapshotMeta(version), chainStart ? { prev: ZERO_LINK, link: chainStart.link } : {});
  const inFd = openSync(src, 'r');
  let outFd: number | null = null;
  try {
    outFd = openSync(dst, 'wx', 0o600);
    const buf = Buffer.allocUnsafe(CHUNK);
    for (let pos = 0; ; ) {
      const n = readSync(inFd, buf, 0, CHUNK, pos);
      if (n === 0) break;
      pos += n;
      const ct = s.update(buf.subarray(0, n));
      writeSync(outFd, ct);
    }
    const tag = s.finish();
    return Buffer.concat([s.prefix, tag]);
  } catch (e) {
    if (outFd !== null) rmSync(dst, { force: true });
    throw e;
  } finally {
    closeSync(inFd);
    if (outFd !== null) closeSync(outFd);
  }
}

/**
 * Decrypts a snapshot's ciphertext `src` into `dst` (null: authenticate only), checking the tag at the end;
 * on failure `dst` is removed and AuthError thrown. `record`: the row's prefix and tag.
 */
export function decryptSnapshotFile(crypt: RecordCrypt, version: number, record: Buffer, src: string, dst: string | null): void {
  const p = prefixLen(TYPE_SNAPSHOT);
  if (record.length !== p + TAG_LEN) throw new AuthError(`a snapshot's record is ${record.length} bytes, not its ${p + TAG_LEN}-byte prefix and tag`);
  const d = crypt.decipher(snapshotMeta(version), record.subarray(0, p));
  d.setAuthTag(record.subarray(p));
  const inFd = openSync(src, 'r');
  let outFd: number | null = null;
  let ok = false;
  try {
    if (dst !== null) outFd = openSync(dst, 'wx', 0o600);
    const buf = Buffer.allocUnsafe(CHUNK);
    for (let pos = 0; ; ) {
      const n = readSync(inFd, buf, 0, CHUNK, pos);
      if (n === 0) break;
      pos += n;
      const pt = d.update(buf.subarray(0, n));
      if (outFd !== null) writeSync(outFd, pt);
    }
    try {
      d.final();
    } catch {
      throw new AuthError('authentication failed (wrong key, or the snapshot was damaged or forged)');
    }
    if (outFd !== null) fsyncSync(outFd);
    ok = true;
  } finally {
    closeSync(inFd);
    if (outFd !== null) closeSync(outFd);
    if (!ok && dst !== null) rmSync(dst, { force: true });
  }
}

/** The chain link of a row (what the row after it names as prev), from its header row alone. */
export function rowLink(row: HeaderRow): Buffer {
  const head = toBuffer(row.head!);
  if (row.kind === 1 && head.length >= 64) {
    const link = head.subarray(48, 64);
    if (!link.equals(ZERO_LINK)) return Buffer.from(link);
  }
  return Buffer.from(toBuffer(row.tag!));
}

/** What a PostgreSQL reader offers the authentication pass. */
export interface PgAuthSource {
  readonly location: string;
  forEachRow(visit: (row: HeaderRow) => void): void;
  /** decrypts and authenticates one entry (a whole snapshot streamed); AuthError or BackupError when it fails */
  authenticateRow(row: HeaderRow): void;
}

export interface PgAuthResult {
  records: number;
  newestVersion: number | null;
  newestTimeMs: number | null;
  problem: { kind: 'corrupt'; offset: number; message: string } | null;
}

/**
 * The chain over every row in order and, in 'full' mode, every row decrypted and authenticated; in
 * 'chain' mode only the newest (a restore authenticates each row it applies as it reads it). A problem
 * names the row (entry offset seq * 2 + kind) and the last authenticated version and time.
 */
export function pgAuthenticate(src: PgAuthSource, mode: 'full' | 'chain'): PgAuthResult {
  const chain = new ChainCheck();
  const res: PgAuthResult = { records: 0, newestVersion: null, newestTimeMs: null, problem: null };
  let lastAuth: { version: number; timeMs: number } | null = null;
  let newest: HeaderRow | null = null;
  const last = (): string =>
    lastAuth === null ? 'no record before it authenticated' : `last authenticated version ${lastAuth.version}, written at ${new Date(lastAuth.timeMs).toISOString()}`;
  const authOne = (row: HeaderRow): string | null => {
    try {
      src.authenticateRow(row);
      return null;
    } catch (e) {
      if (!(e instanceof AuthError) && !(e instanceof BackupError)) throw e;
      return (e as Error).message;
    }
  };
  class Stop extends Error {}
  try {
    src.forEachRow((row) => {
      const offset = row.seq * 2 + row.kind;
      const where = `the entry at offset ${offset} (seq ${row.seq}, ${row.kind === 1 ? 'snapshot' : 'change'}, version ${row.version})`;
      const p = prefixLen(row.kind === 1 ? TYPE_SNAPSHOT : TYPE_CHANGE);
      if (row.head == null || row.tag == null || row.recordBytes == null || row.recordBytes < p + TAG_LEN || row.head.length < p) {
        res.problem = { kind: 'corrupt', offset, message: `${where} is not an encrypted record (no record, or one too short for its frame) (${last()})` };
        throw new Stop();
      }
      const prefix = parsePrefix(toBuffer(row.head), row.kind === 1 ? TYPE_SNAPSHOT : TYPE_CHANGE);
      let why = chain.follows(prefix);
      // compaction's covering snapshot starts the chain anew (see above)
      if (why !== null && row.kind === 1 && prefix.prev.equals(ZERO_LINK)) why = null;
      if (mode === 'full') {
        const bad = authOne(row);
        if (bad !== null) {
          res.problem = { kind: 'corrupt', offset, message: `${where} fails authentication: wrong key, or damaged or forged: ${bad} (${last()})` };
          throw new Stop();
        }
      }
      if (why !== null) {
        let before = last();
        if (mode === 'chain' && newest !== null) {
          // the message's "last authenticated" must be true: authenticate the row before the break
          const n = newest as HeaderRow;
          before =
            authOne(n) === null
              ? `last authenticated version ${n.version}, written at ${new Date(chain.newestTimeMs!).toISOString()}`
              : `and the entry before it, at offset ${n.seq * 2 + n.kind} (version ${n.version}), fails authentication too`;
        }
        res.problem = { kind: 'corrupt', offset, message: `${where} breaks the chain: ${why} (${before})` };
        throw new Stop();
      }
      chain.accept(prefix, rowLink(row), row.version);
      newest = row;
      if (mode === 'full') lastAuth = { version: row.version, timeMs: prefix.timeMs };
    });
  } catch (e) {
    if (!(e instanceof Stop)) throw e;
  }
  if (mode === 'chain' && res.problem === null && newest !== null) {
    const n = newest as HeaderRow;
    const bad = authOne(n);
    if (bad !== null) {
      res.problem = { kind: 'corrupt', offset: n.seq * 2 + n.kind, message: `the newest entry, at offset ${n.seq * 2 + n.kind} (version ${n.version}), fails authentication: wrong key, or damaged or forged: ${bad}` };
    }
  }
  res.records = chain.records;
  res.newestVersion = chain.newestVersion;
  res.newestTimeMs = chain.newestTimeMs;
  return res;
}
