import { BackupError, type Problem } from '../engine/entries.js';
import type { FileEncryption } from '../backends/file/v2/codec.js';
import type { RecordInfo } from '../backends/file/v2/scan.js';
import type { V2Reader } from '../backends/file/v2/reader.js';
import { cryptFor, keyAdvice, type KeyLike } from './backup-crypt.js';
import { ChainCheck } from './records.js';
import type { ScanChain } from './scan-chain.js';

/** A reader of an encrypted v2 backup (V2Reader or SegmentedReader). */
export interface EncryptableReader {
  readonly location: string;
  readonly backupId: Buffer;
  readonly encryption: FileEncryption | null;
  setCrypt(c: ReturnType<typeof cryptFor>): void;
  forEachRecord(visit: (reader: V2Reader, rec: RecordInfo, offset: number) => void): void;
  firstDamage(): number | null;
  /** the chain as the open scan followed it, with the reader of each file (src/crypto/scan-chain.ts) */
  scannedChain?(): { chain: ScanChain; readers: readonly V2Reader[] } | null;
}

export function isEncryptable(r: unknown): r is EncryptableReader {
  return typeof (r as EncryptableReader).setCrypt === 'function' && 'encryption' in (r as object);
}

/**
 * A reader that authenticates itself (a postgresql: backup, src/backends/postgres/crypt.ts): the same
 * construction and chain over rows instead of file records.
 */
export interface SelfAuthenticating {
  readonly encryption: FileEncryption | null;
  unlock(key: KeyLike | null | undefined, mode: AuthMode): Omit<AuthResult, 'stoppedAtDamage'> | null;
}

function isSelfAuthenticating(r: unknown): r is SelfAuthenticating {
  return typeof (r as SelfAuthenticating).unlock === 'function' && 'encryption' in (r as object);
}

/** The backup's encryption as its header says (no key needed), or null for a plain or non-v2 backup. */
export function encryptionOf(r: unknown): FileEncryption | null {
  return isEncryptable(r) || isSelfAuthenticating(r) ? r.encryption : null;
}

export interface AuthResult {
  /** records authenticated, in chain order */
  records: number;
  /** the newest version and its write time that the chain vouches for (null: none authenticated) */
  newestVersion: number | null;
  newestTimeMs: number | null;
  /** the first record that fails (authentication or chain), with the last authenticated version */
  problem: Problem | null;
  /** the chain stopped before the end because of damage the scan found (reported by the reader) */
  stoppedAtDamage: number | null;
}

export function newestLine(a: AuthResult): string {
  if (a.newestVersion === null) return 'no record authenticated';
  return `newest authenticated version ${a.newestVersion}, written at ${new Date(a.newestTimeMs!).toISOString()}`;
}

/**
 * Gives an encrypted backup's reader its key (checked against the header's fingerprint first: a wrong
 * key fails with one line, before anything is read) and authenticates every record and the chain between
 * them, in bounded memory. A plain backup: returns null and ignores the key. Throws BackupError for a
 * missing or wrong key.
 */
export function unlockAndAuthenticate(reader: unknown, key: KeyLike | null | undefined, mode: AuthMode = 'full'): AuthResult | null {
  if (isSelfAuthenticating(reader)) {
    const r = reader.unlock(key, mode);
    return r === null ? null : { ...r, stoppedAtDamage: null };
  }
  if (!isEncryptable(reader) || reader.encryption === null) return null;
  const crypt = cryptFor(reader.location, reader.encryption, reader.backupId, key, false);
  reader.setCrypt(crypt);
  return authenticate(reader, mode);
}

/**
 * 'full': every record decrypted and authenticated, and the chain (verify, inspect). 'chain': the chain
 * from the stored prefixes and tags, and the newest record authenticated; for a restore, which then
 * decrypts (authenticates) every record it applies: the applied records are a contiguous, authenticated
 * run of the chain ending at the newest record, at about half the cost (docs/encryption.md, "The chain").
 */
export type AuthMode = 'full' | 'chain';

export function authenticate(reader: EncryptableReader, mode: AuthMode = 'full'): AuthResult {
  if (mode === 'chain') return authenticateChain(reader);
  const chain = new ChainCheck();
  const res: AuthResult = { records: 0, newestVersion: null, newestTimeMs: null, problem: null, stoppedAtDamage: reader.firstDamage() };
  const last = (): string =>
    chain.newestVersion === null
      ? 'no record before it authenticated'
      : `last authenticated version ${chain.newestVersion}, written at ${new Date(chain.newestTimeMs!).toISOString()}`;
  class Stop extends Error {}
  try {
    reader.forEachRecord((r, rec, offset) => {
      let got;
      try {
        got = r.authenticateRecord(rec);
      } catch (e) {
        if (!(e instanceof BackupError)) throw e;
        res.problem = { kind: 'corrupt', offset, message: `the record at offset ${offset} (version ${rec.version}) fails authentication: wrong key, or damaged or forged (${last()})` };
        throw new Stop();
      }
      const why = chain.follows(got.prefix);
      if (why !== null) {
        res.problem = { kind: 'corrupt', offset, message: `the record at offset ${offset} (version ${rec.version}) breaks the chain: ${why} (${last()})` };
        throw new Stop();
      }
      chain.accept(got.prefix, got.tag, rec.version);
    });
  } catch (e) {
    if (!(e instanceof Stop)) throw e;
  }
  res.records = chain.records;
  res.newestVersion = chain.newestVersion;
  res.newestTimeMs = chain.newestTimeMs;
  return res;
}

interface Located {
  r: V2Reader;
  rec: RecordInfo;
  offset: number;
}

/**
 * The chain from the stored prefixes and tags, and the newest record authenticated (a restore, which
 * authenticates every record it applies as it reads it). Without damage the reader's open scan has followed
 * the chain already (ScanChain): no pass over the records here. With damage (the chain stops at the first
 * damaged record, which only the whole scan knows) or a reader without it, one walk of the records does it.
 */
function authenticateChain(reader: EncryptableReader): AuthResult {
  const firstDamage = reader.firstDamage();
  const res: AuthResult = { records: 0, newestVersion: null, newestTimeMs: null, problem: null, stoppedAtDamage: firstDamage };
  let newest: Located | null = null;
  let broken: { rec: RecordInfo; offset: number; why: string } | null = null;
  const scanned = firstDamage === null ? (reader.scannedChain?.() ?? null) : null;
  if (scanned !== null) {
    const c = scanned.chain;
    const located = (x: { file: number; rec: RecordInfo; offset: number }): Located => ({ r: scanned.readers[x.file]!, rec: x.rec, offset: x.offset });
    newest = c.newest === null ? null : located(c.newest);
    broken = c.broken;
    res.records = c.records;
    res.newestVersion = c.newestVersion;
  } else {
    const chain = new ChainCheck();
    class Stop extends Error {}
    try {
      reader.forEachRecord((r, rec, offset) => {
        const why = r.chainStep(rec, chain);
        if (why !== null) {
          broken = { rec, offset, why };
          throw new Stop();
        }
        newest = { r, rec, offset };
      });
    } catch (e) {
      if (!(e instanceof Stop)) throw e;
    }
    res.records = chain.records;
    res.newestVersion = chain.newestVersion;
  }
  const n = newest as Located | null;
  if (broken !== null) {
    const b = broken as { rec: RecordInfo; offset: number; why: string };
    // the record before the break is authenticated now, so the message's "last authenticated" is true
    let before = 'no record before it authenticated';
    if (n !== null) {
      try {
        const got = n.r.authenticateRecord(n.rec);
        before = `last authenticated version ${n.rec.version}, written at ${new Date(got.prefix.timeMs).toISOString()}`;
      } catch {
        before = `and the record before it, at offset ${n.offset}, fails authentication too`;
      }
    }
    res.problem = { kind: 'corrupt', offset: b.offset, message: `the record at offset ${b.offset} (version ${b.rec.version}) ${b.why.startsWith('its payload') ? `is malformed: ${b.why}` : `breaks the chain: ${b.why}`} (${before})` };
    return res;
  }
  // the newest record's version and time are reported as authenticated: authenticate it
  if (n !== null) {
    try {
      const got = n.r.authenticateRecord(n.rec);
      res.newestTimeMs = got.prefix.timeMs;
      res.newestVersion = n.rec.version;
    } catch (e) {
      if (!(e instanceof BackupError)) throw e;
      res.problem = { kind: 'corrupt', offset: n.offset, message: `the newest record, at offset ${n.offset} (version ${n.rec.version}), fails authentication: wrong key, or damaged or forged` };
    }
  }
  return res;
}

export { keyAdvice };

/** The --json shape of an authentication pass. */
export function authJson(a: AuthResult): Record<string, unknown> {
  return {
    records: a.records,
    newestVersion: a.newestVersion,
    newestWrittenAt: a.newestTimeMs === null ? null : new Date(a.newestTimeMs).toISOString(),
    problem: a.problem,
  };
}
