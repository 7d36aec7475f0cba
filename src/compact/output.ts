/**
 * Writing the compacted file: the snapshot record (whole, chunked over segments, or encrypted), the entries
 * copied after it (re-encrypted when the key rotates), the v1 header's tail, and the periodic fdatasync
 * that keeps a large write from piling up dirty pages. compact.ts decides what goes where.
 */
import { closeSync, fdatasyncSync, fstatSync, openSync, readSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { writeFully } from '../backends/file/fsutil.js';
import { writeV1Header, V1_ENTRY_HEADER_SIZE } from '../backends/file/v1.js';
import { FILE_HEADER_LEN, readU64, resealRecordHeader, RECORD_HEADER_LEN, RECORD_OVERHEAD, RECORD_TRAILER_LEN, TYPE_SNAPSHOT, TYPE_SNAPSHOT_PART } from '../backends/file/v2.js';
import { encodeRecordHeader, FLAG_ENCRYPTED, writeU64 } from '../backends/file/v2/codec.js';
import { BackupError, type BackupFormat } from '../engine/entries.js';
import { encOverhead, RecordCrypt, TAG_LEN } from '../crypto/records.js';
import { EntryWalker, type EntryDesc, type ReadAt } from './scan.js';

const COPY_CHUNK = 1 << 20;
const V1_MAX_PAYLOAD = 0xffff_ffff;

/** The new file is synced every this many bytes, for the same reason as the scratch database's NORMAL. */
const SYNC_EVERY = 8 << 20;

/** Counts bytes written to the new file and fdatasyncs it every SYNC_EVERY. */
export function paced(fd: number): (n: number) => void {
  let since = 0;
  return (n) => {
    since += n;
    if (since >= SYNC_EVERY) {
      fdatasyncSync(fd);
      since = 0;
    }
  };
}

/**
 * Appends the scratch database as a snapshot entry at `at`; returns the new end. v2 with a segment
 * `limit`: a database that does not fit in the room left is chunked into part records, each filling the
 * current file up to the limit, `next` starting the following segment (and returning its fd and end).
 */
export function writeSnapshot(
  out: number,
  at: number,
  format: BackupFormat,
  version: number,
  dbPath: string,
  backup: string,
  seed: number,
  limit: number | null = null,
  next: ((end: number) => { fd: number; at: number }) | null = null,
): number {
  if (format === 'v2' && limit !== null && next !== null) return writeSnapshotRecords(out, at, version, dbPath, seed, limit, next, null);
  const src = openSync(dbPath, 'r');
  const pace = paced(out);
  try {
    const size = fstatSync(src).size;
    const headerLen = format === 'v2' ? RECORD_HEADER_LEN : V1_ENTRY_HEADER_SIZE;
    if (format === 'v1' && size > V1_MAX_PAYLOAD) {
      throw new BackupError(
        `${backup}: the database is ${size} bytes, more than a v1 snapshot entry can hold (4 GiB - 1); use a v2 backup`,
        backup,
      );
    }
    const crc = copyPayload(src, 0, size, out, at + headerLen, Buffer.allocUnsafe(COPY_CHUNK), pace, dbPath);
    if (format === 'v2') return writeRecordFrame(out, at, TYPE_SNAPSHOT, version, size, crc, 0, seed);
    const h = Buffer.alloc(headerLen);
    h.writeUInt32BE(size, 0);
    h.writeUInt32BE(version, 4);
    h[8] = 2;
    writeFully(out, h, at);
    return at + headerLen + size;
  } finally {
    closeSync(src);
  }
}

/**
 * Copies `len` bytes of the database from `from` to `at` of `fd`, through `transform` if given (a cipher that
 * keeps lengths); returns the CRC-32 of what was written, continuing `crc`.
 */
function copyPayload(src: number, from: number, len: number, fd: number, at: number, chunk: Buffer, pace: (n: number) => void, dbPath: string, crc = 0, transform: ((b: Buffer) => Buffer) | null = null): number {
  for (let n = 0; n < len; ) {
    const r = readSync(src, chunk, 0, Math.min(chunk.length, len - n), from + n);
    if (r <= 0) throw new Error(`${dbPath} shrank while it was copied`);
    const part = transform === null ? chunk.subarray(0, r) : transform(chunk.subarray(0, r));
    crc = crc32(part, crc);
    writeFully(fd, part, at + n);
    pace(r);
    n += r;
  }
  return crc;
}

/**
 * Frames a v2 record whose `len` payload bytes are already written at `at` + RECORD_HEADER_LEN: the trailer
 * first, the header last, so that a crash in between leaves no valid header in front of a partial record.
 * Returns the record's end.
 */
function writeRecordFrame(fd: number, at: number, type: number, version: number, len: number, crc: number, parts: number, seed: number, flags = 0): number {
  const t = Buffer.allocUnsafe(RECORD_TRAILER_LEN);
  writeU64(t, len, 0);
  writeFully(fd, t, at + RECORD_HEADER_LEN + len);
  const h = Buffer.alloc(RECORD_HEADER_LEN);
  encodeRecordHeader(h, type, version, len, crc, parts, flags, seed);
  writeFully(fd, h, at);
  return at + RECORD_OVERHEAD + len;
}

/**
 * Copies whole entries [from, to) of the live file to `at` in the new one; returns the new end. With
 * `reencrypt` (key rotation) each record is decrypted and encrypted again under the new key, chained anew;
 * its size does not change. v2 headers are written for `newSeed`, the new set's record CRC seed.
 */
export function copyEntries(
  walker: EntryWalker,
  src: ReadAt,
  out: number,
  from: number,
  to: number,
  at: number,
  tracker: TailTracker,
  oldSeed = 0,
  newSeed = 0,
  reencrypt: RecordCrypt | null = null,
): number {
  const chunk = Buffer.allocUnsafe(COPY_CHUNK);
  const pace = paced(out);
  for (let off = from; off < to; ) {
    // record by record ([from, to) may split a chunked snapshot); its parts are not entries of their own
    const d = walker.recordAt(off, to);
    if (d.type !== TYPE_SNAPSHOT_PART) tracker.add(d.version, at + (d.offset - from));
    if (reencrypt) reencryptRecord(walker, d, out, at + (d.offset - from), reencrypt, newSeed);
    off = d.end;
  }
  // each record was checked (header under oldSeed, then authenticated) and written whole, header for newSeed
  if (reencrypt) return at + (to - from);
  // v2 into another set (format 4): each header's CRC is re-sealed for the new set's seed, checked for the old one
  // first, so that no damage is laundered; payloads and their CRCs are copied as they are (an encrypted
  // record's authentication does not cover the header CRC: docs/encryption.md)
  const reseal = walker.format === 'v2' && oldSeed !== newSeed;
  let rec = from;
  for (let done = 0; done < to - from; ) {
    let n = Math.min(COPY_CHUNK, to - from - done);
    const lo = from + done;
    // never cut a record header in two: it is re-sealed inside this chunk
    if (reseal && rec < lo + n && rec + RECORD_HEADER_LEN > lo + n) n = rec - lo;
    src(chunk, n, lo);
    while (reseal && rec < lo + n) {
      const i = rec - lo;
      if (crc32(chunk.subarray(i, i + 28), oldSeed) !== chunk.readUInt32BE(i + 28)) {
        throw new BackupError(`${walker.path}: cannot compact: the record at offset ${rec} changed while it was copied (header checksum)`, walker.path, rec);
      }
      resealRecordHeader(chunk, i, newSeed);
      rec += RECORD_OVERHEAD + readU64(chunk, i + 16);
    }
    writeFully(out, chunk.subarray(0, n), at + done);
    pace(n);
    done += n;
  }
  return at + (to - from);
}

/** Writes the encrypted record `d` again at `at` of `fd`, under `crypt` (the new key), the same size; its header for `seed`. */
function reencryptRecord(walker: EntryWalker, d: EntryDesc, fd: number, at: number, crypt: RecordCrypt, seed: number): void {
  const parts = d.type === TYPE_SNAPSHOT ? d.partCount! : 0;
  const enc = crypt.stream({ type: d.type!, flags: d.flags!, version: d.version, parts });
  let crc = crc32(enc.prefix);
  writeFully(fd, enc.prefix, at + RECORD_HEADER_LEN);
  let pos = at + RECORD_HEADER_LEN + enc.prefix.length;
  walker.decryptChunks(d, (plain) => {
    const c = enc.update(plain);
    crc = crc32(c, crc);
    writeFully(fd, c, pos);
    pos += c.length;
  });
  const tag = enc.finish();
  crc = crc32(tag, crc);
  writeFully(fd, tag, pos);
  const stored = pos + TAG_LEN - at - RECORD_HEADER_LEN;
  if (stored !== d.length) throw new Error(`internal: a re-encrypted record is ${stored} bytes, not ${d.length}`);
  const h = Buffer.alloc(RECORD_HEADER_LEN);
  encodeRecordHeader(h, d.type!, d.version, stored, crc, parts, d.flags!, seed);
  const t = Buffer.allocUnsafe(RECORD_TRAILER_LEN);
  writeU64(t, stored, 0);
  writeFully(fd, t, at + RECORD_HEADER_LEN + stored);
  writeFully(fd, h, at);
  crypt.committed();
}

/**
 * The scratch database as a snapshot at `at`: one record, or with a segment `limit` part records, each filling
 * the current file up to the limit, `next` starting the following segment (and returning its fd and end).
 * `enc`: an encrypted backup (docs/encryption.md), whose snapshot starts the file's chain (prev zeros);
 * `link` is what the record copied after it names as its predecessor (null: the snapshot's own tag).
 */
export function writeSnapshotRecords(
  out: number,
  at: number,
  version: number,
  dbPath: string,
  seed: number,
  limit: number | null,
  next: ((end: number) => { fd: number; at: number }) | null,
  enc: { crypt: RecordCrypt; link: Buffer | null } | null,
): number {
  const src = openSync(dbPath, 'r');
  try {
    const size = fstatSync(src).size;
    const chunk = Buffer.allocUnsafe(COPY_CHUNK);
    // the larger of a part's and a final record's encryption overhead
    const extra = enc === null ? 0 : encOverhead(TYPE_SNAPSHOT);
    const minPart = limit === null ? 0 : Math.min(COPY_CHUNK, Math.floor(limit / 8));
    let fd = out;
    let pace = paced(fd);
    let done = 0;
    let parts = 0;
    for (;;) {
      const rest = size - done;
      const room = limit === null ? Infinity : limit - at - RECORD_OVERHEAD - extra;
      const last = rest <= room;
      if (!last && next !== null && limit !== null && at > FILE_HEADER_LEN && ((parts === 0 && rest <= limit - FILE_HEADER_LEN - RECORD_OVERHEAD - extra) || room < minPart)) {
        ({ fd, at } = next(at));
        pace = paced(fd);
        continue;
      }
      const len = last ? rest : room;
      const type = last ? TYPE_SNAPSHOT : TYPE_SNAPSHOT_PART;
      if (enc === null) {
        const crc = copyPayload(src, done, len, fd, at + RECORD_HEADER_LEN, chunk, pace, dbPath);
        at = writeRecordFrame(fd, at, type, version, len, crc, last ? parts : 0, seed);
      } else {
        const c = enc.crypt.stream({ type, flags: FLAG_ENCRYPTED, version, parts: last ? parts : 0 }, { link: last ? enc.link : null });
        const pre = c.prefix.length;
        writeFully(fd, c.prefix, at + RECORD_HEADER_LEN);
        let crc = copyPayload(src, done, len, fd, at + RECORD_HEADER_LEN + pre, chunk, pace, dbPath, crc32(c.prefix), (b) => c.update(b));
        const tag = c.finish();
        crc = crc32(tag, crc);
        writeFully(fd, tag, at + RECORD_HEADER_LEN + pre + len);
        at = writeRecordFrame(fd, at, type, version, pre + len + TAG_LEN, crc, last ? parts : 0, seed, FLAG_ENCRYPTED);
        enc.crypt.committed();
      }
      done += len;
      if (last) return at;
      parts++;
    }
  } finally {
    closeSync(src);
  }
}

/** What the v1 header must say about the new file, and the entry count for the result. */
export class TailTracker {
  count = 0;
  last: number | null = null;
  private prev: number | null = null;
  private lastOffset = 0;

  constructor(private readonly format: BackupFormat) {}

  add(version: number, offset: number): void {
    this.prev = this.last;
    this.last = version;
    this.lastOffset = offset;
    this.count++;
  }

  v1Header(end: number): Buffer {
    if (this.format !== 'v1') throw new Error('internal: v1 header for a v2 file');
    return writeV1Header({
      version: this.last ?? 0,
      offsets0: end,
      prevVersion: this.prev ?? 0,
      offsets1: this.last === null ? 0 : this.lastOffset,
      versionCount: this.count,
    });
  }
}
