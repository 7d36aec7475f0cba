import { readSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { BackupError, type BackupFormat } from '../engine/entries.js';
import { isPragmaOnly } from '../engine/versions.js';
import {
  changeStatementsAt,
  decodeChangePayload,
  FILE_HEADER_LEN,
  RECORD_HEADER_LEN,
  RECORD_MAGIC,
  RECORD_OVERHEAD,
  RECORD_TRAILER_LEN,
  TYPE_CHANGE,
  TYPE_SNAPSHOT,
  TYPE_SNAPSHOT_PART,
  FLAG_ENCRYPTED,
} from '../backends/file/v2.js';
import { FLAG_PRAGMA_ONLY } from '../backends/file/v2/codec.js';
import { AuthError, parsePrefix, prefixLen, TAG_LEN, type Prefix, type RecordCrypt } from '../crypto/records.js';
import { V1_ENTRY_HEADER_SIZE, V1_HEADER_SIZE } from '../backends/file/v1.js';

/**
 * A forward walk over the entries of a backup file between two offsets, for compaction. Unlike the
 * readers it keeps nothing per entry: a backup of any length is walked in constant memory, and it never
 * looks past the end it is given (the writer may be appending beyond it).
 */

const WINDOW = 1 << 20;
const TWO_32 = 0x1_0000_0000;
/** below this a change's payload is decoded as it is walked; pragmaOnly() decides for larger ones */
const PRAGMA_PROBE_MAX = 256;
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export interface EntryDesc {
  offset: number;
  /** offset just past the entry */
  end: number;
  kind: 'change' | 'snapshot';
  version: number;
  /** decided while walking for small payloads only: ask EntryWalker.pragmaOnly() */
  pragmaOnly: boolean;
  payloadAt: number;
  length: number;
  /** v2 only: the payload checksum from the record header */
  crc: number | null;
  /** v2 only: the record type (TYPE_SNAPSHOT_PART for a part of a chunked snapshot) */
  type?: number;
  /** v2 snapshot record: how many part records precede it */
  partCount?: number;
  /** a chunked snapshot (from entryAt): its part records and final record, whose payloads make the database */
  records?: EntryDesc[];
  /** v2: the record header's flags (encrypted backups: FLAG_ENCRYPTED, and FLAG_PRAGMA_ONLY on PRAGMA batches) */
  flags?: number;
}

export function firstEntryOffset(format: BackupFormat): number {
  return format === 'v2' ? FILE_HEADER_LEN : V1_HEADER_SIZE;
}

export function readFully(fd: number, buf: Buffer, n: number, pos: number): void {
  let done = 0;
  while (done < n) {
    const r = readSync(fd, buf, done, n - done, pos + done);
    if (r <= 0) throw new Error(`unexpected end of file at offset ${pos + done}`);
    done += r;
  }
}

/** Positioned reads of exactly `n` bytes: a file descriptor, or a segmented backup read as one file. */
export type ReadAt = (buf: Buffer, n: number, pos: number) => void;

export class EntryWalker {
  private readonly buf = Buffer.allocUnsafe(WINDOW);
  private winStart = 0;
  private winLen = 0;
  private readonly readAt: ReadAt;

  constructor(
    src: number | ReadAt,
    readonly path: string,
    readonly format: BackupFormat,
    /** an encrypted backup's cipher: payloads are decrypted and authenticated as they are read */
    private readonly crypt: RecordCrypt | null = null,
    /** v2: the record header CRC seed of the backup's set (recordSeedOf its first file's header; 0 before format 4) */
    readonly seed = 0,
  ) {
    this.readAt = typeof src === 'number' ? (buf, n, pos) => readFully(src, buf, n, pos) : src;
  }

  private view(off: number, n: number, limit: number): Buffer {
    if (!(off >= this.winStart && off + n <= this.winStart + this.winLen)) {
      const len = Math.min(WINDOW, limit - off);
      this.readAt(this.buf, len, off);
      this.winStart = off;
      this.winLen = len;
    }
    return this.buf.subarray(off - this.winStart, off - this.winStart + n);
  }

  private damaged(off: number, why: string): BackupError {
    return new BackupError(
      `${this.path}: cannot compact: the entry at offset ${off} ${why}. Run 'clnvault verify' on the backup; nothing was changed`,
      this.path,
      off,
    );
  }

  /**
   * The entry at `off`, which must lie entirely before `limit`. A chunked snapshot (part records, then
   * the final snapshot record) is one entry spanning all its records.
   */
  entryAt(off: number, limit: number): EntryDesc {
    if (this.format !== 'v2') return this.v1At(off, limit);
    const d = this.v2At(off, limit);
    if (d.type === TYPE_SNAPSHOT && d.partCount !== 0) throw this.damaged(off, `is a snapshot record that says ${d.partCount} part record(s) precede it, but none do`);
    if (d.type !== TYPE_SNAPSHOT_PART) return d;
    // the parts are kept as descriptors only (a handful: one per segment the database spans)
    const records = [d];
    let length = d.length;
    for (let at = d.end; ; ) {
      if (at >= limit) throw this.damaged(off, `is a chunked snapshot whose final snapshot record is missing (the data ends at offset ${limit})`);
      const r = this.v2At(at, limit);
      if (r.version !== d.version || r.type === TYPE_CHANGE) {
        throw this.damaged(off, `is a chunked snapshot (version ${d.version}) whose parts are followed by a ${r.type === TYPE_CHANGE ? 'change' : 'snapshot'} record of version ${r.version} at offset ${at} instead of their final record`);
      }
      records.push(r);
      length += r.length;
      at = r.end;
      if (r.type === TYPE_SNAPSHOT) {
        if (r.partCount !== records.length - 1) {
          throw this.damaged(off, `is a chunked snapshot whose final record at offset ${r.offset} says ${r.partCount} part record(s) precede it, but ${records.length - 1} do`);
        }
        return { offset: off, end: r.end, kind: 'snapshot', version: d.version, pragmaOnly: false, payloadAt: d.payloadAt, length, crc: null, type: TYPE_SNAPSHOT, partCount: r.partCount, records };
      }
    }
  }

  /** One record at `off` as it is (a snapshot part is not followed to its final record): for byte-range copies. */
  recordAt(off: number, limit: number): EntryDesc {
    return this.format === 'v2' ? this.v2At(off, limit) : this.v1At(off, limit);
  }

  private v2At(off: number, limit: number): EntryDesc {
    if (limit - off < RECORD_OVERHEAD) throw this.damaged(off, `is cut short (${limit - off} bytes before the end)`);
    const h = this.view(off, RECORD_HEADER_LEN, limit);
    if (h.readUInt32BE(0) !== RECORD_MAGIC) throw this.damaged(off, 'has no record magic');
    if (crc32(h.subarray(0, 28), this.seed) !== h.readUInt32BE(28)) throw this.damaged(off, 'fails its header checksum');
    const type = h[4]!;
    const version = h.readUInt32BE(8);
    const length = h.readUInt32BE(16) * TWO_32 + h.readUInt32BE(20);
    const crc = h.readUInt32BE(24);
    // read now: a later view() may refill the window under `h`
    const partCount = type === TYPE_SNAPSHOT ? h.readUInt32BE(12) : 0;
    // offset 12 is a snapshot record's part count, reserved (0) in the other types
    const known = type === TYPE_CHANGE || type === TYPE_SNAPSHOT || type === TYPE_SNAPSHOT_PART;
    const flags = h[5]!;
    const okFlags = this.crypt
      ? (flags & FLAG_ENCRYPTED) !== 0 && (flags & ~(FLAG_ENCRYPTED | (type === TYPE_CHANGE ? FLAG_PRAGMA_ONLY : 0))) === 0
      : flags === 0;
    if (!known || !okFlags || h.readUInt16BE(6) !== 0 || (type !== TYPE_SNAPSHOT && h.readUInt32BE(12) !== 0)) {
      throw this.damaged(off, 'uses a type or flags this clnvault does not know (written by a newer clnvault?)');
    }
    if (length > limit - off - RECORD_OVERHEAD) throw this.damaged(off, `claims ${length} bytes, past the end of the data`);
    const end = off + RECORD_OVERHEAD + length;
    const t = this.view(end - RECORD_TRAILER_LEN, RECORD_TRAILER_LEN, limit);
    if (t.readUInt32BE(0) * TWO_32 + t.readUInt32BE(4) !== length) throw this.damaged(off, 'has a trailer that does not match its length');
    const payloadAt = off + RECORD_HEADER_LEN;
    let pragmaOnly = false;
    if (this.crypt) {
      // the header says it (authenticated with the record); the payload is ciphertext
      pragmaOnly = type === TYPE_CHANGE && (flags & FLAG_PRAGMA_ONLY) !== 0;
      if (length < prefixLen(type) + TAG_LEN) throw this.damaged(off, 'is too short for an encrypted record');
    } else if (type === TYPE_CHANGE && length < PRAGMA_PROBE_MAX) {
      const p = this.view(payloadAt, length, limit);
      if (crc32(p) !== crc) throw this.damaged(off, 'fails its payload checksum');
      pragmaOnly = isPragmaOnly(decodeChangePayload(p));
    }
    return { offset: off, end, kind: type === TYPE_CHANGE ? 'change' : 'snapshot', version, pragmaOnly, payloadAt, length, crc, type, partCount, flags };
  }

  private v1At(off: number, limit: number): EntryDesc {
    if (limit - off < V1_ENTRY_HEADER_SIZE) throw this.damaged(off, `is cut short (${limit - off} bytes before the end)`);
    const h = this.view(off, V1_ENTRY_HEADER_SIZE, limit);
    const length = h.readUInt32BE(0);
    const version = h.readUInt32BE(4);
    const type = h[8]!;
    if (type !== 1 && type !== 2) throw this.damaged(off, `has unknown type ${type}`);
    if (length > limit - off - V1_ENTRY_HEADER_SIZE) throw this.damaged(off, `claims ${length} bytes, past the end of the data`);
    const payloadAt = off + V1_ENTRY_HEADER_SIZE;
    let pragmaOnly = false;
    if (type === 1 && length < PRAGMA_PROBE_MAX) {
      try {
        pragmaOnly = isPragmaOnly(utf8.decode(this.view(payloadAt, length, limit)).split('\u0000'));
      } catch {
        pragmaOnly = false; // decoding errors surface when the entry is applied
      }
    }
    return { offset: off, end: payloadAt + length, kind: type === 1 ? 'change' : 'snapshot', version, pragmaOnly, payloadAt, length, crc: null };
  }

  /**
   * Whether the change entry is PRAGMA-only, at any size (versions.ts's rule, as the readers apply it).
   * Compaction asks only where a restore's plan would (a version that does not move past the one before).
   */
  pragmaOnly(d: EntryDesc): boolean {
    if (d.kind !== 'change') return false;
    if (this.crypt) return d.pragmaOnly;
    if (d.length < PRAGMA_PROBE_MAX) return d.pragmaOnly;
    try {
      // a record the window holds is checked (CRC) and decoded whole; a larger one statement by statement
      if (this.format === 'v2' && d.length > WINDOW) return isPragmaOnly(changeStatementsAt(this.readAt, d.payloadAt, d.length));
      return isPragmaOnly(this.statements(d));
    } catch (e) {
      throw this.damaged(d.offset, `does not decode: ${(e as Error).message}`);
    }
  }

  /** The statements of a change entry, checked. */
  statements(d: EntryDesc): string[] {
    let p: Buffer = Buffer.allocUnsafe(d.length);
    this.readAt(p, d.length, d.payloadAt);
    if (d.crc !== null && crc32(p) !== d.crc) throw this.damaged(d.offset, 'fails its payload checksum');
    if (this.crypt) {
      try {
        p = this.crypt.open(this.meta(d), p).plain;
      } catch (e) {
        if (e instanceof AuthError) throw this.damaged(d.offset, `fails authentication (${e.message})`);
        throw e;
      }
    }
    try {
      if (this.format === 'v2') return decodeChangePayload(p);
      return utf8.decode(p).split('\u0000');
    } catch (e) {
      throw this.damaged(d.offset, `does not decode: ${(e as Error).message}`);
    }
  }

  /** Streams a snapshot's payload to `sink` in chunks, verifying the checksum (v2) of each record. */
  snapshotChunks(d: EntryDesc, sink: (chunk: Buffer) => void): void {
    if (d.records) {
      for (const r of d.records) this.snapshotChunks(r, sink);
      return;
    }
    if (this.crypt) {
      this.decryptChunks(d, sink);
      return;
    }
    const chunk = Buffer.allocUnsafe(Math.min(WINDOW, Math.max(1, d.length)));
    let crc = 0;
    for (let done = 0; done < d.length; ) {
      const n = Math.min(chunk.length, d.length - done);
      this.readAt(chunk, n, d.payloadAt + done);
      const part = chunk.subarray(0, n);
      if (d.crc !== null) crc = crc32(part, crc);
      sink(part);
      done += n;
    }
    if (d.crc !== null && crc !== d.crc) throw this.damaged(d.offset, 'fails its payload checksum');
  }

  /** The record's header fields its encryption authenticates. */
  private meta(d: EntryDesc): { type: number; flags: number; version: number; parts: number } {
    return { type: d.type!, flags: d.flags!, version: d.version, parts: d.type === TYPE_SNAPSHOT ? d.partCount! : 0 };
  }

  /** An encrypted record's prefix (salt, counter, time, prev, link) and tag, read without decrypting: for the chain. */
  chainOf(d: EntryDesc): { prefix: Prefix; tag: Buffer } {
    const p = prefixLen(d.type!);
    const prefix = Buffer.allocUnsafe(p);
    this.readAt(prefix, p, d.payloadAt);
    const tag = Buffer.allocUnsafe(TAG_LEN);
    this.readAt(tag, TAG_LEN, d.payloadAt + d.length - TAG_LEN);
    return { prefix: parsePrefix(prefix, d.type!), tag };
  }

  /**
   * Streams an encrypted record's plaintext to `sink`, checking its CRC and authenticating it (the sink
   * may see plaintext before the tag is checked at the end: callers discard their output on a throw).
   */
  decryptChunks(d: EntryDesc, sink: (chunk: Buffer) => void): void {
    const crypt = this.crypt!;
    const p = prefixLen(d.type!);
    const prefix = Buffer.allocUnsafe(p);
    this.readAt(prefix, p, d.payloadAt);
    const tag = Buffer.allocUnsafe(TAG_LEN);
    this.readAt(tag, TAG_LEN, d.payloadAt + d.length - TAG_LEN);
    let crc = crc32(prefix);
    const dec = crypt.decipher(this.meta(d), prefix);
    dec.setAuthTag(tag);
    const ctLen = d.length - p - TAG_LEN;
    const chunk = Buffer.allocUnsafe(Math.min(WINDOW, Math.max(1, ctLen)));
    for (let done = 0; done < ctLen; ) {
      const n = Math.min(chunk.length, ctLen - done);
      this.readAt(chunk, n, d.payloadAt + p + done);
      crc = crc32(chunk.subarray(0, n), crc);
      sink(dec.update(chunk.subarray(0, n)));
      done += n;
    }
    crc = crc32(tag, crc);
    if (d.crc !== null && crc !== d.crc) throw this.damaged(d.offset, 'fails its payload checksum');
    try {
      dec.final();
    } catch {
      throw this.damaged(d.offset, 'fails authentication (wrong key, or damaged or forged)');
    }
  }
}
