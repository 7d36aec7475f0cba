import { rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BackupError, type ChangeEntry, type Entry, type EntryHeader, type Problem } from '../../engine/entries.js';
import type { BackupReader, BackupStats, HeaderVisitor, HeaderWalkOptions } from '../backend.js';
import { planBackup } from '../../engine/plan.js';
import type { KeyLike } from '../../crypto/backup-crypt.js';
import { AuthError, lastAuthText, parsePrefix, type RecordCrypt } from '../../crypto/records.js';
import type { FileEncryption } from '../file/v2/codec.js';
import { PgBridge } from './bridge.js';
import { decryptSnapshotFile, fileEncryptionOf, openChange, pgAuthenticate, pgCrypt, toBuffer, type PgAuthResult } from './crypt.js';
import type { HeaderRow, PgEncryption } from './protocol.js';
import type { PgTarget } from './url.js';

/**
 * Reads one backup inside a REPEATABLE READ transaction: headers, statements and snapshot chunks all
 * come from the same consistent view, while the plugin keeps writing and compaction deletes.
 *
 * An entry's `offset` is seq * 2 + kind: unique, and in the entries' order, also while a compaction
 * snapshot shares the seq of the last change it covers (it sorts right after it).
 *
 * Memory stays bounded like the file readers': headers are walked in pages, statements fetched in batches
 * of consecutive entries (one round trip per batch, not per entry), snapshots streamed chunk by chunk
 * into the destination file.
 *
 * An encrypted backup (crypt.ts) is read with its key (unlock): every change is decrypted and
 * authenticated as it is read, a snapshot's ciphertext is fetched into a scratch file beside the
 * destination and decrypted into it, the tag checked at the end (the destination is removed if it fails).
 */
const HEADER_PAGE = 8192;
const BATCH = 256;

export function offsetOf(seq: number, kind: 0 | 1): number {
  return seq * 2 + kind;
}

export class PgReader implements BackupReader {
  readonly format = 'postgresql' as const;
  readonly location: string;
  /** the backup's encryption as its row says (no key needed); null: plaintext */
  readonly encryption: FileEncryption | null;
  private readonly pgEnc: PgEncryption | null;
  /** the backups row's encryption as stored (compaction needs the id to write) */
  get pgEncryption(): PgEncryption | null {
    return this.pgEnc;
  }
  private crypt: RecordCrypt | null = null;
  private batch = new Map<number, string[] | Uint8Array>();
  /** snapshots met by walks (few), so that read() needs no extra round trip for them */
  private snapshots = new Map<number, HeaderRow>();
  private cachedStats: BackupStats | null = null;
  /** the entry decrypted and authenticated last, for messages ("last authenticated version V, written at T") */
  private lastGood: { version: number; timeMs: number } | null = null;

  /** the backups row's random id (hex), which a backup dropped and re-created under the same name does not keep; null for one made before schema version 3 */
  readonly uid: string | null;

  private constructor(private readonly bridge: PgBridge, target: PgTarget) {
    this.location = target.display;
    const opened = bridge.call<{ enc: PgEncryption | null; uid?: string | null }>({ op: 'openReader' });
    this.pgEnc = opened.enc;
    this.uid = opened.uid ?? null;
    this.encryption = fileEncryptionOf(this.pgEnc);
  }

  static open(target: PgTarget, timeoutMs: number): PgReader {
    const bridge = new PgBridge(target, timeoutMs, `clnvault reader ${target.backup}`);
    try {
      return new PgReader(bridge, target);
    } catch (e) {
      bridge.close();
      throw e;
    }
  }

  /**
   * Gives an encrypted backup's reader its key (a missing or wrong one fails with one line, before any row
   * is read) and authenticates the chain ('chain': prefixes and tags, and the newest entry; 'full': every
   * entry decrypted). Null for a plaintext backup.
   */
  unlock(key: KeyLike | null | undefined, mode: 'full' | 'chain' = 'full'): PgAuthResult | null {
    if (this.pgEnc === null) return null;
    this.crypt = pgCrypt(this.location, this.pgEnc, key, false);
    // what the pass authenticates is not "before" the entries a restore then reads, for their messages
    const saved = this.lastGood;
    try {
      return pgAuthenticate(
      {
        location: this.location,
        forEachRow: (visit) => this.forEachRow((r) => void visit(r)),
        authenticateRow: (row) => this.authenticateRow(row),
        },
        mode,
      );
    } finally {
      this.lastGood = saved;
    }
  }

  /** The header rows in order, with an encrypted entry's prefix and tag. */
  forEachRow(visit: (row: HeaderRow) => boolean | void, from = 0): void {
    for (;;) {
      const rows = this.bridge.call<HeaderRow[]>({ op: 'headers', from, limit: HEADER_PAGE }, null);
      for (const r of rows) {
        if (r.kind === 1) this.snapshots.set(offsetOf(r.seq, 1), r);
        if (visit(r) === false) return;
      }
      if (rows.length < HEADER_PAGE) return;
      const last = rows[rows.length - 1]!;
      from = offsetOf(last.seq, last.kind) + 1;
    }
  }

  forEachHeader(visit: HeaderVisitor, opts: HeaderWalkOptions = {}): void {
    this.forEachRow((r) => visit({ kind: r.kind === 1 ? 'snapshot' : 'change', version: r.version, offset: offsetOf(r.seq, r.kind), pragmaOnly: r.pragmaOnly }), opts.from ?? 0);
  }

  private needKey(offset: number): RecordCrypt {
    if (this.crypt === null) {
      throw new BackupError(`${this.location} is encrypted: its entries can be read only with its key (--key-file, --hsm-secret or --mnemonic-file)`, this.location, offset);
    }
    return this.crypt;
  }

  private authenticateRow(row: HeaderRow): void {
    if (row.kind === 1) this.snapshotInto(row, null);
    else void this.read({ kind: 'change', version: row.version, offset: offsetOf(row.seq, 0), pragmaOnly: row.pragmaOnly });
  }

  /** Streams a snapshot's chunks into `path`, decrypting an encrypted one (path null: authenticate only). */
  private snapshotInto(r: HeaderRow, path: string | null): void {
    if (this.pgEnc === null) {
      if (path !== null) this.bridge.call({ op: 'snapshotTo', seq: r.seq, chunks: r.chunks, path }, null);
      return;
    }
    const offset = offsetOf(r.seq, 1);
    const crypt = this.needKey(offset);
    const scratch = `${path ?? join(tmpdir(), `clnvault-pgauth-${process.pid}`)}.ciphertext-${Date.now()}`;
    try {
      this.bridge.call({ op: 'snapshotTo', seq: r.seq, chunks: r.chunks, path: scratch }, null);
      try {
        if (r.head == null || r.tag == null) throw new AuthError('the snapshot row has no record (prefix and tag)');
        decryptSnapshotFile(crypt, r.version, Buffer.concat([toBuffer(r.head), toBuffer(r.tag)]), scratch, path);
        this.lastGood = { version: r.version, timeMs: parsePrefix(toBuffer(r.head), 2).timeMs };
      } catch (e) {
        if (!(e instanceof AuthError)) throw e;
        throw new BackupError(
          `the snapshot at entry ${offset} (version ${r.version}) of ${this.location} fails authentication: wrong key, or damaged or forged (${e.message}; ${lastAuthText(this.lastGood)})`,
          this.location,
          offset,
        );
      }
    } finally {
      rmSync(scratch, { force: true });
    }
  }

  read(h: EntryHeader): Entry {
    const seq = Math.floor(h.offset / 2);
    if (h.kind === 'snapshot') {
      let row = this.snapshots.get(h.offset);
      if (row === undefined) {
        row = this.bridge.call<HeaderRow | null>({ op: 'entryRow', seq, kind: 1 }) ?? undefined;
        if (row === undefined) throw new BackupError(`no snapshot at entry ${h.offset}`, this.location, h.offset);
      }
      const r = row;
      if (this.pgEnc !== null) this.needKey(h.offset);
      return {
        kind: 'snapshot',
        version: r.version,
        offset: h.offset,
        size: r.bytes,
        parts: r.chunks,
        writeTo: (path: string): void => this.snapshotInto(r, path),
      };
    }
    let stored = this.batch.get(seq);
    if (stored === undefined) {
      this.batch = new Map(this.bridge.call<Array<[number, string[] | Uint8Array]>>({ op: 'changes', fromSeq: seq, limit: BATCH }, null));
      stored = this.batch.get(seq);
      if (stored === undefined) throw new BackupError(`entry ${h.offset} is gone from the backup`, this.location, h.offset);
    }
    this.batch.delete(seq);
    let statements: string[];
    if (Array.isArray(stored)) {
      if (this.pgEnc !== null) throw new BackupError(`entry ${h.offset} of the encrypted ${this.location} holds plaintext statements: it was not written by its plugin`, this.location, h.offset);
      statements = stored;
    } else {
      const crypt = this.needKey(h.offset);
      try {
        const rec = toBuffer(stored as Uint8Array);
        statements = openChange(crypt, h.version, h.pragmaOnly === true, rec);
        this.lastGood = { version: h.version, timeMs: parsePrefix(rec, 1).timeMs };
      } catch (e) {
        if (!(e instanceof AuthError)) throw e;
        throw new BackupError(
          `the entry at offset ${h.offset} (version ${h.version}) of ${this.location} fails authentication: wrong key, or damaged or forged (${e.message}; ${lastAuthText(this.lastGood)})`,
          this.location,
          h.offset,
        );
      }
    }
    const e: ChangeEntry = { kind: 'change', version: h.version, offset: h.offset, statements };
    return e;
  }

  problems(): Problem[] {
    return [];
  }

  stats(): BackupStats {
    if (this.cachedStats === null) {
      const { entries, bytes } = this.bridge.call<{ entries: number; bytes: number }>({ op: 'stats' }, null);
      const head = entries === 0 ? 0 : planBackup(this).plan().head;
      this.cachedStats = { format: 'postgresql', location: this.location, head, entries, bytes };
    }
    return this.cachedStats;
  }

  close(): void {
    this.bridge.close();
  }
}
