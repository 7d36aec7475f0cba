import { closeSync, fdatasyncSync, fstatSync, fsyncSync, ftruncateSync, openSync, readSync, unlinkSync } from 'node:fs';
import { randomBytes } from '../../engine/random.js';
import { crc32 } from 'node:zlib';
import type { BackupStats, BackupReader, BackupWriter } from '../backend.js';
import { BackupError, type Entry, type EntryHeader, type Problem, type SnapshotEntry } from '../../engine/entries.js';
import { isPragmaOnly, isValidDataVersion } from '../../engine/versions.js';
import { assertStillNamed, fsyncDir, identityOf, writeFully, type FileIdentity } from './fsutil.js';
import { WriterLock } from './writer-lock.js';

/**
 * clnvault's own backup format ("v2"): a 64-byte file header, then self-checking records back to back.
 * The layout, the reasons for each field and the recovery rules are in docs/format-v2.md.
 *
 * Every record carries its own length, a checksum over its header and one over its payload, and repeats
 * its length in a trailer. So an append is one write plus one fdatasync (nothing else is ever rewritten),
 * a crash mid-append leaves a tail that the next open recognises and cuts, and the newest record can be
 * found from the end of the file without reading the rest.
 */

export const FILE_MAGIC = Buffer.from('CLNVAULT', 'ascii');
export const FORMAT_VERSION = 2;
export const FILE_HEADER_LEN = 64;
/** 'CVR1' */
export const RECORD_MAGIC = 0x43565231;
export const RECORD_HEADER_LEN = 32;
export const RECORD_TRAILER_LEN = 8;
export const RECORD_OVERHEAD = RECORD_HEADER_LEN + RECORD_TRAILER_LEN;
export const TYPE_CHANGE = 1;
export const TYPE_SNAPSHOT = 2;
/**
 * A slice of a snapshot too big for one segment: one or more of these, then the type-2 record holding the
 * last slice, whose header field at offset 12 says how many parts precede it (docs/format-v2.md).
 */
export const TYPE_SNAPSHOT_PART = 3;
/** Reserved for later versions; this one writes neither and refuses to read records that use them. */
export const FLAG_DEFLATE = 0x01;
export const FLAG_ENCRYPTED = 0x02;

/** Upper bound for every read and copy buffer, so memory never grows with the size of a record. */
const CHUNK = 1 << 20;
/** The hot-path record buffer starts here, grows for big batches and falls back after a huge one. */
const SCRATCH_INITIAL = 64 << 10;
const SCRATCH_KEEP = 1 << 20;
/** Change payloads below this are decoded during a scan to tell PRAGMA-only batches apart. */
const PRAGMA_PROBE_MAX = 256;
const TWO_32 = 0x1_0000_0000;

const MAGIC_BYTES = Buffer.from([0x43, 0x56, 0x52, 0x31]);
/** fatal: invalid UTF-8 is damage, not something to paper over; ignoreBOM: keep a leading U+FEFF as data. */
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export function isV2(head: Buffer): boolean {
  return head.length >= 8 && head.subarray(0, 8).equals(FILE_MAGIC);
}

/**
 * Index of the entry at `offset` in offset-ordered `ents` (-1 if none): `hint` first, since readers
 * mostly go in file order, else a binary search (scans only move forward, so offsets strictly increase).
 */
export function indexAtOffset(ents: readonly { offset: number }[], hint: number, offset: number): number {
  if (hint < ents.length && ents[hint]!.offset === offset) return hint;
  let lo = 0;
  let hi = ents.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const o = ents[mid]!.offset;
    if (o === offset) return mid;
    if (o < offset) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

// ---------------------------------------------------------------------------------------------------
// Encoding

/** u64 as two u32 halves: avoids a BigInt per call on the hot path; lengths never exceed 2^53. */
function writeU64(buf: Buffer, n: number, at: number): void {
  buf.writeUInt32BE(Math.floor(n / TWO_32), at);
  buf.writeUInt32BE(n >>> 0, at + 4);
}

/** Values above 2^53 lose precision, which is harmless: they are larger than any file and get rejected. */
function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_32 + buf.readUInt32BE(at + 4);
}

export function encodeFileHeader(backupId: Buffer, createdMs: number): Buffer {
  if (backupId.length !== 16) throw new RangeError('backup id must be 16 bytes');
  const h = Buffer.alloc(FILE_HEADER_LEN);
  FILE_MAGIC.copy(h, 0);
  h.writeUInt16BE(FORMAT_VERSION, 8);
  h.writeUInt16BE(FILE_HEADER_LEN, 10);
  h.writeUInt32BE(0, 12);
  backupId.copy(h, 16);
  writeU64(h, createdMs, 32);
  h.writeUInt32BE(crc32(h.subarray(0, 60)), 60);
  return h;
}

/** Fills bytes 0..31 of `buf` with a record header. */
function encodeRecordHeader(buf: Buffer, type: number, version: number, payloadLen: number, payloadCrc: number, parts = 0): void {
  buf.writeUInt32BE(RECORD_MAGIC, 0);
  buf[4] = type;
  buf[5] = 0;
  buf.writeUInt16BE(0, 6);
  buf.writeUInt32BE(version, 8);
  // a snapshot record's count of preceding part records; reserved (0) in every other type
  buf.writeUInt32BE(type === TYPE_SNAPSHOT ? parts : 0, 12);
  writeU64(buf, payloadLen, 16);
  buf.writeUInt32BE(payloadCrc, 24);
  buf.writeUInt32BE(crc32(buf.subarray(0, 28)), 28);
}

/** Size of a change payload: u32 count, then u32 length + UTF-8 bytes per statement. */
export function changePayloadLength(statements: readonly string[]): number {
  let n = 4;
  for (let i = 0; i < statements.length; i++) n += 4 + Buffer.byteLength(statements[i]!, 'utf8');
  return n;
}

/**
 * Writes a whole change record (header, payload, trailer) into `buf` from offset 0, which must hold at
 * least RECORD_OVERHEAD + payloadLen bytes. Statements are encoded straight into the buffer: no per-
 * statement allocation.
 */
export function encodeChangeRecordInto(buf: Buffer, version: number, statements: readonly string[], payloadLen: number): number {
  const end = RECORD_HEADER_LEN + payloadLen;
  buf.writeUInt32BE(statements.length, RECORD_HEADER_LEN);
  let off = RECORD_HEADER_LEN + 4;
  for (let i = 0; i < statements.length; i++) {
    const n = buf.write(statements[i]!, off + 4, end - off - 4, 'utf8');
    buf.writeUInt32BE(n, off);
    off += 4 + n;
  }
  // byteLength and write must agree, or every later length in the record would be off
  if (off !== end) throw new Error(`change record encoding mismatch: ${off - RECORD_HEADER_LEN} bytes written, ${payloadLen} expected`);
  encodeRecordHeader(buf, TYPE_CHANGE, version, payloadLen, crc32(buf.subarray(RECORD_HEADER_LEN, end)));
  writeU64(buf, payloadLen, end);
  return end + RECORD_TRAILER_LEN;
}

/** A complete change record; written into `out` (and a view of it returned) when `out` is big enough. */
export function encodeChangeRecord(version: number, statements: readonly string[], out?: Buffer): Buffer {
  const payloadLen = changePayloadLength(statements);
  const total = RECORD_OVERHEAD + payloadLen;
  const buf = out && out.length >= total ? out : Buffer.allocUnsafe(total);
  encodeChangeRecordInto(buf, version, statements, payloadLen);
  return buf.subarray(0, total);
}

/**
 * Decodes a change payload. Every count and length is checked against the bytes actually present before
 * anything is allocated from it: a damaged or hostile length must produce an error, not a huge buffer.
 */
export function decodeChangePayload(p: Uint8Array): string[] {
  if (p.length < 4) throw new Error(`change payload of ${p.length} bytes cannot hold its statement count`);
  const dv = new DataView(p.buffer, p.byteOffset, p.byteLength);
  const count = dv.getUint32(0);
  if (count > (p.length - 4) / 4) throw new Error(`change payload claims ${count} statements but has only ${p.length} bytes`);
  const out: string[] = [];
  let off = 4;
  for (let i = 0; i < count; i++) {
    if (p.length - off < 4) throw new Error(`statement ${i} length runs past the end of the payload`);
    const n = dv.getUint32(off);
    off += 4;
    if (n > p.length - off) throw new Error(`statement ${i} claims ${n} bytes but only ${p.length - off} remain`);
    try {
      out.push(utf8.decode(p.subarray(off, off + n)));
    } catch {
      throw new Error(`statement ${i} is not valid UTF-8`);
    }
    off += n;
  }
  if (off !== p.length) throw new Error(`${p.length - off} stray bytes after the last statement`);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Reading

function readFully(fd: number, buf: Buffer, n: number, pos: number): void {
  let done = 0;
  while (done < n) {
    const r = readSync(fd, buf, done, n - done, pos + done);
    if (r <= 0) throw new Error(`unexpected end of file at offset ${pos + done}`);
    done += r;
  }
}

/**
 * A read buffer over [0, size) of a file. Records are mostly small, so one read fills the window with
 * many of them; `ahead` reads forward (scans), `behind` reads backward (walking trailers from the end).
 * A returned view is valid until the next call.
 */
class FileWindow {
  private readonly buf: Buffer;
  private start = 0;
  private len = 0;

  constructor(
    private readonly fd: number,
    readonly size: number,
    capacity: number,
  ) {
    this.buf = Buffer.allocUnsafe(capacity);
  }

  get capacity(): number {
    return this.buf.length;
  }

  ahead(off: number, n: number): Buffer {
    if (!this.has(off, n)) this.fill(off, Math.min(this.buf.length, this.size - off), n);
    return this.buf.subarray(off - this.start, off - this.start + n);
  }

  behind(off: number, n: number): Buffer {
    if (!this.has(off, n)) {
      const from = Math.max(0, off + n - this.buf.length);
      this.fill(from, off + n - from, n);
    }
    return this.buf.subarray(off - this.start, off - this.start + n);
  }

  private has(off: number, n: number): boolean {
    return off >= this.start && off + n <= this.start + this.len;
  }

  private fill(from: number, len: number, need: number): void {
    if (need > this.buf.length || from < 0 || from + len > this.size) {
      throw new Error(`internal: window read of ${need} bytes at ${from} outside [0, ${this.size})`);
    }
    readFully(this.fd, this.buf, len, from);
    this.start = from;
    this.len = len;
  }
}

function crcOfRange(win: FileWindow, off: number, len: number): number {
  let c = 0;
  while (len > 0) {
    const n = Math.min(len, win.capacity);
    c = crc32(win.ahead(off, n), c);
    off += n;
    len -= n;
  }
  return c;
}

interface RecordHeader {
  type: number;
  flags: number;
  reserved16: number;
  keyId: number;
  version: number;
  length: number;
  payloadCrc: number;
}

/** The header at `b[0..32)`, or why it is not one. Only magic and checksum decide validity. */
function parseRecordHeader(b: Buffer): RecordHeader | string {
  if (b.readUInt32BE(0) !== RECORD_MAGIC) return 'no record magic';
  if (crc32(b.subarray(0, 28)) !== b.readUInt32BE(28)) return 'record header checksum mismatch';
  return {
    type: b[4]!,
    flags: b[5]!,
    reserved16: b.readUInt16BE(6),
    version: b.readUInt32BE(8),
    keyId: b.readUInt32BE(12),
    length: readU64(b, 16),
    payloadCrc: b.readUInt32BE(24),
  };
}

/** Why this clnvault cannot use a well-formed record, or null when it can. */
function unsupportedReason(h: RecordHeader): string | null {
  const what: string[] = [];
  if (h.type !== TYPE_CHANGE && h.type !== TYPE_SNAPSHOT && h.type !== TYPE_SNAPSHOT_PART) what.push(`record type ${h.type}`);
  if (h.flags & FLAG_DEFLATE) what.push('a deflate-compressed payload');
  if (h.flags & FLAG_ENCRYPTED) what.push('an encrypted payload');
  if (h.flags & ~(FLAG_DEFLATE | FLAG_ENCRYPTED)) what.push(`unknown flag bits 0x${(h.flags & 0xfc).toString(16)}`);
  // offset 12 of a snapshot record holds its part count; elsewhere it is still reserved
  if (h.reserved16 !== 0 || (h.keyId !== 0 && h.type !== TYPE_SNAPSHOT)) what.push('reserved header fields');
  return what.length === 0 ? null : what.join(', ');
}

function unsupportedError(path: string, offset: number, reason: string): BackupError {
  return new BackupError(
    `${path}: the record at offset ${offset} uses ${reason}, which this clnvault does not support: ` +
      `the backup was written by a newer clnvault; upgrade clnvault to use it`,
    path,
    offset,
  );
}

type RecordCheck =
  | { kind: 'ok'; h: RecordHeader }
  | { kind: 'bad-header'; why: string }
  | { kind: 'past-eof'; h: RecordHeader }
  | { kind: 'bad-payload'; h: RecordHeader; why: string };

/** Full check of the record at `o` (header, bounds, payload checksum, trailer); at least 40 bytes must remain. */
function checkRecordAt(win: FileWindow, o: number): RecordCheck {
  const h = parseRecordHeader(win.ahead(o, RECORD_HEADER_LEN));
  if (typeof h === 'string') return { kind: 'bad-header', why: h };
  if (h.length > win.size - o - RECORD_OVERHEAD) return { kind: 'past-eof', h };
  if (crcOfRange(win, o + RECORD_HEADER_LEN, h.length) !== h.payloadCrc) {
    return { kind: 'bad-payload', h, why: 'payload checksum mismatch' };
  }
  const trailer = readU64(win.ahead(o + RECORD_HEADER_LEN + h.length, RECORD_TRAILER_LEN), 0);
  if (trailer !== h.length) {
    return { kind: 'bad-payload', h, why: `trailer says ${trailer} bytes, header says ${h.length}` };
  }
  return { kind: 'ok', h };
}

/**
 * First offset >= from holding a complete valid record, or -1. This is what tells damage in the middle
 * (good records follow) from an unfinished append at the end (nothing good follows).
 */
function findNextValidRecord(fd: number, size: number, from: number): number {
  const buf = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(0, size - from)));
  const win = new FileWindow(fd, size, CHUNK);
  let pos = from;
  while (size - pos >= RECORD_OVERHEAD) {
    const n = Math.min(buf.length, size - pos);
    readFully(fd, buf, n, pos);
    const view = buf.subarray(0, n);
    for (let i = view.indexOf(MAGIC_BYTES); i >= 0; i = view.indexOf(MAGIC_BYTES, i + 1)) {
      if (size - (pos + i) < RECORD_OVERHEAD) break;
      if (checkRecordAt(win, pos + i).kind === 'ok') return pos + i;
    }
    if (pos + n >= size) break;
    // keep 3 bytes so a magic that straddles two reads is still seen
    pos += n - (MAGIC_BYTES.length - 1);
  }
  return -1;
}

export interface RecordInfo {
  offset: number;
  type: number;
  version: number;
  length: number;
  pragmaOnly: boolean;
  /** type 2: how many part records precede it (0: a whole snapshot); 0 otherwise */
  parts: number;
}

/** One entry as readers present it: a change record, or a snapshot made of its part records and final record. */
export interface GroupedEntry {
  offset: number;
  kind: 'change' | 'snapshot';
  version: number;
  pragmaOnly: boolean;
  /** payload bytes (the database size for a snapshot) */
  size: number;
  /** indices into the record list: first..last (one record unless a chunked snapshot) */
  first: number;
  last: number;
}

export interface Grouping {
  entries: GroupedEntry[];
  /** parts not followed by their final record, or a final record whose part count does not match */
  corrupt: Problem[];
  /** a run of parts at the very end without its final record: an unfinished snapshot (torn tail) */
  dangling: Problem | null;
}

/**
 * Presents a chunked snapshot (part records, then the final type-2 record that counts them) as one
 * entry. `recs` is every valid record in file order (global offsets for a segmented backup).
 */
export function groupRecords(recs: readonly RecordInfo[]): Grouping {
  const entries: GroupedEntry[] = [];
  const corrupt: Problem[] = [];
  let run = -1;
  let runSize = 0;
  const runDesc = (to: number): string => {
    const n = to - run;
    return `${n} snapshot part record(s) (version ${recs[run]!.version}) at offsets ${recs[run]!.offset}..${recs[to - 1]!.offset}`;
  };
  for (let i = 0; i < recs.length; i++) {
    const r = recs[i]!;
    if (r.type === TYPE_SNAPSHOT_PART) {
      if (run >= 0 && recs[run]!.version !== r.version) {
        corrupt.push({
          kind: 'corrupt',
          offset: recs[run]!.offset,
          message: `${runDesc(i)} are followed by a snapshot part of version ${r.version} at offset ${r.offset} instead of their final snapshot record`,
        });
        run = -1;
      }
      if (run < 0) {
        run = i;
        runSize = 0;
      }
      runSize += r.length;
      continue;
    }
    const n = run < 0 ? 0 : i - run;
    if (r.type === TYPE_SNAPSHOT) {
      if (r.parts !== n || (n > 0 && recs[run]!.version !== r.version)) {
        corrupt.push({
          kind: 'corrupt',
          // the final record's offset: a damaged part before it is then reported first, where the damage is
          offset: r.offset,
          message:
            `the snapshot record at offset ${r.offset} (version ${r.version}) says ${r.parts} snapshot part record(s) precede it, but ` +
            (n > 0 ? `${runDesc(i)} do` : 'none do'),
        });
      } else {
        entries.push({ offset: n > 0 ? recs[run]!.offset : r.offset, kind: 'snapshot', version: r.version, pragmaOnly: false, size: (n > 0 ? runSize : 0) + r.length, first: n > 0 ? run : i, last: i });
      }
      run = -1;
      continue;
    }
    if (n > 0) {
      corrupt.push({ kind: 'corrupt', offset: recs[run]!.offset, message: `${runDesc(i)} are followed by a change record at offset ${r.offset} instead of their final snapshot record` });
      run = -1;
    }
    entries.push({ offset: r.offset, kind: 'change', version: r.version, pragmaOnly: r.pragmaOnly, size: r.length, first: i, last: i });
  }
  const dangling: Problem | null =
    run < 0
      ? null
      : {
          kind: 'torn-tail',
          offset: recs[run]!.offset,
          message: `${runDesc(recs.length)} without their final snapshot record at the end: a snapshot that never completed`,
        };
  return { entries, corrupt, dangling };
}

interface ScanResult {
  records: RecordInfo[];
  corrupt: Problem[];
  /** the tail an unfinished append left behind, if any */
  torn: Problem | null;
  unsupported: BackupError | null;
  /** end of the last good record (the file size when nothing is torn) */
  validEnd: number;
  recordsValidated: number;
}

/** The forward scan: validates every record from the file header on (see docs/format-v2.md, "Recovery"). */
function scanRecords(fd: number, size: number, path: string): ScanResult {
  const win = new FileWindow(fd, size, CHUNK);
  const records: RecordInfo[] = [];
  const corrupt: Problem[] = [];
  let torn: Problem | null = null;
  let unsupported: BackupError | null = null;
  let validated = 0;
  const tornAt = (o: number, why: string): Problem => ({
    kind: 'torn-tail',
    offset: o,
    message: `cut ${size - o} bytes at offset ${o}: ${why} (an append that never completed)`,
  });

  let o = FILE_HEADER_LEN;
  while (o < size) {
    if (size - o < RECORD_OVERHEAD) {
      torn = tornAt(o, `only ${size - o} bytes left, less than a record's ${RECORD_OVERHEAD}-byte frame`);
      break;
    }
    const c = checkRecordAt(win, o);
    validated++;
    if (c.kind === 'ok') {
      const h = c.h;
      let pragmaOnly = false;
      const reason = unsupportedReason(h);
      if (reason !== null) {
        unsupported ??= unsupportedError(path, o, reason);
      } else if (h.type === TYPE_CHANGE && h.length < PRAGMA_PROBE_MAX) {
        try {
          pragmaOnly = isPragmaOnly(decodeChangePayload(win.ahead(o + RECORD_HEADER_LEN, h.length)));
        } catch (e) {
          // the checksum vouches for these bytes, so the writer itself produced them: still unusable
          corrupt.push({ kind: 'corrupt', offset: o, message: `change record at offset ${o} does not decode: ${(e as Error).message}` });
          o += RECORD_OVERHEAD + h.length;
          continue;
        }
      }
      records.push({ offset: o, type: h.type, version: h.version, length: h.length, pragmaOnly, parts: h.type === TYPE_SNAPSHOT ? h.keyId : 0 });
      o += RECORD_OVERHEAD + h.length;
      continue;
    }
    if (c.kind === 'bad-header' || c.kind === 'past-eof') {
      const why =
        c.kind === 'bad-header'
          ? c.why
          : `record header says ${c.h.length} bytes of payload but only ${size - o - RECORD_OVERHEAD} are present`;
      const next = findNextValidRecord(fd, size, o + 1);
      if (next < 0) {
        torn = tornAt(o, why);
        break;
      }
      corrupt.push({
        kind: 'corrupt',
        offset: o,
        message: `corrupt record at offset ${o}: ${why}; ${next - o} bytes skipped up to the next valid record at offset ${next}`,
      });
      o = next;
      continue;
    }
    // the header checksum vouches for the length, so the record's extent is known even though its payload is bad
    const end = o + RECORD_OVERHEAD + c.h.length;
    if (end === size) {
      torn = tornAt(o, c.why);
      break;
    }
    corrupt.push({ kind: 'corrupt', offset: o, message: `corrupt record at offset ${o} (version ${c.h.version}): ${c.why}` });
    o = end;
  }
  return { records, corrupt, torn, unsupported, validEnd: torn ? torn.offset : size, recordsValidated: validated };
}

interface FileHeaderInfo {
  backupId: Buffer;
  createdMs: number;
}

function checkFileHeader(fd: number, size: number, path: string): FileHeaderInfo {
  if (size < FILE_HEADER_LEN) {
    throw new BackupError(
      `${path} is not a usable clnvault v2 backup: it has ${size} bytes, less than the ${FILE_HEADER_LEN}-byte file header` +
        (size === 0 ? ` (an interrupted 'clnvault init'? remove the file and run it again)` : ''),
      path,
      0,
    );
  }
  const h = Buffer.allocUnsafe(FILE_HEADER_LEN);
  readFully(fd, h, FILE_HEADER_LEN, 0);
  if (!isV2(h)) throw new BackupError(`${path} is not a clnvault v2 backup: the file does not start with 'CLNVAULT'`, path, 0);
  const version = h.readUInt16BE(8);
  if (crc32(h.subarray(0, 60)) !== h.readUInt32BE(60)) {
    throw new BackupError(
      `${path}: the file header checksum (offset 60) does not match: the header is damaged` +
        (version !== FORMAT_VERSION ? `, or it is format version ${version} from a newer clnvault` : ''),
      path,
      60,
    );
  }
  if (version !== FORMAT_VERSION) {
    throw new BackupError(
      `${path} uses clnvault format version ${version}; this clnvault reads version ${FORMAT_VERSION}` +
        (version > FORMAT_VERSION ? ': upgrade clnvault' : ''),
      path,
      8,
    );
  }
  const headerLen = h.readUInt16BE(10);
  if (headerLen !== FILE_HEADER_LEN) {
    throw new BackupError(`${path}: file header length ${headerLen} is not ${FILE_HEADER_LEN}`, path, 10);
  }
  const flags = h.readUInt32BE(12);
  if (flags !== 0) {
    throw new BackupError(
      `${path} has file flags 0x${flags.toString(16)} that this clnvault does not know: it was written by a newer clnvault; upgrade clnvault`,
      path,
      12,
    );
  }
  return { backupId: Buffer.from(h.subarray(16, 32)), createdMs: readU64(h, 32) };
}

/** Header of the record that ends exactly at `end`, found through its trailer; null when the chain is broken. */
function recordEndingAt(win: FileWindow, end: number): { start: number; h: RecordHeader } | null {
  if (end - FILE_HEADER_LEN < RECORD_OVERHEAD) return null;
  const len = readU64(win.behind(end - RECORD_TRAILER_LEN, RECORD_TRAILER_LEN), 0);
  if (len > end - FILE_HEADER_LEN - RECORD_OVERHEAD) return null;
  const start = end - RECORD_OVERHEAD - len;
  const h = parseRecordHeader(win.behind(start, RECORD_HEADER_LEN));
  if (typeof h === 'string' || h.length !== len) return null;
  return { start, h };
}

function asBackupError(e: unknown, path: string, what: string): BackupError {
  if (e instanceof BackupError) return e;
  return new BackupError(`${path}: ${what}: ${(e as Error).message}`, path);
}

// ---------------------------------------------------------------------------------------------------
// Creating

export function createV2(path: string): void {
  const header = encodeFileHeader(randomBytes(16), Date.now());
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new BackupError(`${path} already exists; refusing to overwrite an existing backup`, path);
    throw new BackupError(`cannot create ${path}: ${(e as Error).message}`, path);
  }
  try {
    writeFully(fd, header, 0);
    fsyncSync(fd);
    closeSync(fd);
  } catch (e) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
    try {
      unlinkSync(path);
    } catch {
      // nothing more to undo
    }
    throw asBackupError(e, path, 'cannot write the file header');
  }
  fsyncDir(path);
}

// ---------------------------------------------------------------------------------------------------
// Writer

/** What an open had to read: exposed so tests can prove the common open does not depend on the file's length. */
export interface V2OpenStats {
  /** 'empty': header only; 'fast': last record checked via the trailer; 'slow': full forward scan */
  path: 'empty' | 'fast' | 'slow';
  /** records whose header, payload checksum and trailer were all verified */
  recordsValidated: number;
  /** record headers read while walking back from the end over the newest version's records (dropHead adds its own walk) */
  headersWalked: number;
}

export interface V2WriterOptions {
  /**
   * Validate every record before accepting the file, as the reader does. The default checks only the
   * newest record (O(1)); damage further back is left for `clnvault verify` and restore to report.
   */
  fullCheck?: boolean;
  /**
   * Leave snapshot part records at the end in place. For a segment that is not the last of its set (its
   * parts continue in the next segment); by default they are an unfinished snapshot and are cut.
   */
  keepParts?: boolean;
}

export class V2Writer implements BackupWriter {
  readonly format = 'v2' as const;
  readonly openStats: V2OpenStats;
  private scratch: Buffer = Buffer.allocUnsafe(SCRATCH_INITIAL);
  /** offset where the next record goes; always the file size */
  private end = FILE_HEADER_LEN;
  private headVersion = 0;
  private lastType = 0;
  /** start of the trailing run of change records with version == head; == end when there is none */
  private groupStart = FILE_HEADER_LEN;
  private groupCount = 0;
  /** counted lazily: the fast open does not know it */
  private entryCount: number | null = null;
  private failed: Error | null = null;
  private closed = false;

  /** the open file's inode, cached for the per-append check that the path still names it */
  private identity: FileIdentity | null = null;

  private constructor(
    readonly location: string,
    private fd: number,
    private readonly lock: WriterLock,
    private readonly repairs: Problem[],
    stats: V2OpenStats,
  ) {
    this.openStats = stats;
  }

  /** `heldLock`: reopen under a writer lock this process already holds (after compaction swapped the file). */
  static open(path: string, options: V2WriterOptions = {}, heldLock?: WriterLock): V2Writer {
    let fd: number;
    try {
      fd = openSync(path, 'r+');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new BackupError(
        code === 'ENOENT' ? `${path} does not exist (create it with 'clnvault init')` : `cannot open ${path}: ${(e as Error).message}`,
        path,
      );
    }
    let lock: WriterLock | null = null;
    try {
      // nothing is read before the lock is held: another writer could be mid-append
      lock = heldLock ?? WriterLock.acquire(path);
      const size = fstatSync(fd).size;
      checkFileHeader(fd, size, path);
      const w = new V2Writer(path, fd, lock, [], { path: 'empty', recordsValidated: 0, headersWalked: 0 });
      w.end = size;
      if (size === FILE_HEADER_LEN) {
        w.entryCount = 0;
        w.loadTail(null);
        return w;
      }
      const last = options.fullCheck ? null : checkLastRecord(fd, size);
      if (last) {
        const reason = unsupportedReason(last.h);
        if (reason !== null) throw unsupportedError(path, last.start, reason);
        w.openStats.path = 'fast';
        w.openStats.recordsValidated = 1;
        // a broken chain just before the newest record means damage: let the full scan say where
        if (w.loadTail(last) && (options.keepParts || w.cutDanglingParts())) return w;
      }
      const scan = scanRecords(fd, size, path);
      w.openStats.path = 'slow';
      w.openStats.recordsValidated += scan.recordsValidated;
      if (scan.unsupported) throw scan.unsupported;
      if (scan.corrupt.length > 0) {
        const first = scan.corrupt[0]!;
        throw new BackupError(
          `${path} is damaged: ${first.message}` +
            (scan.corrupt.length > 1 ? ` (and ${scan.corrupt.length - 1} more damaged record(s))` : '') +
            `. Refusing to append to a damaged backup. Run 'clnvault verify ${path}' to see every problem; ` +
            `if it cannot be repaired, start a fresh backup with 'clnvault init'.`,
          path,
          first.offset,
        );
      }
      if (scan.torn) {
        ftruncateSync(fd, scan.torn.offset);
        fdatasyncSync(fd);
        w.repairs.push(scan.torn);
      }
      w.end = scan.validEnd;
      w.entryCount = countWhole(scan.records);
      if (!w.loadTail(null)) throw new Error(`internal: record chain broken after a clean scan of ${path}`);
      if (!options.keepParts && !w.cutDanglingParts()) throw new Error(`internal: record chain broken after a clean scan of ${path}`);
      return w;
    } catch (e) {
      if (!heldLock) lock?.release();
      closeSync(fd);
      throw asBackupError(e, path, 'cannot open the backup for writing');
    }
  }

  /**
   * Learns head, head type and the trailing group of head-version changes by walking trailers back
   * from the end: a handful of headers, however long the file. False when the chain of trailers is
   * broken (damage near the end).
   */
  private loadTail(known: { start: number; h: RecordHeader } | null): boolean {
    this.groupStart = this.end;
    this.groupCount = 0;
    this.headVersion = 0;
    this.lastType = 0;
    if (this.end === FILE_HEADER_LEN) return true;
    const win = new FileWindow(this.fd, this.end, SCRATCH_INITIAL);
    let rec = known;
    if (!rec) {
      rec = recordEndingAt(win, this.end);
      this.openStats.headersWalked++;
      if (!rec) return false;
    }
    let groupStart = this.end;
    let groupCount = 0;
    if (rec.h.type === TYPE_CHANGE) {
      groupStart = rec.start;
      groupCount = 1;
      while (groupStart > FILE_HEADER_LEN) {
        const prev = recordEndingAt(win, groupStart);
        this.openStats.headersWalked++;
        if (!prev) return false;
        if (prev.h.type !== TYPE_CHANGE || prev.h.version !== rec.h.version) break;
        groupStart = prev.start;
        groupCount++;
      }
    }
    this.headVersion = rec.h.version;
    this.lastType = rec.h.type;
    this.groupStart = groupStart;
    this.groupCount = groupCount;
    return true;
  }

  /**
   * Snapshot part records at the end without their final record are a snapshot that never completed
   * (never acknowledged): cut them, durably, and report it. False when the trailer chain is broken.
   */
  private cutDanglingParts(): boolean {
    if (this.end === FILE_HEADER_LEN || this.lastType !== TYPE_SNAPSHOT_PART) return true;
    const win = new FileWindow(this.fd, this.end, SCRATCH_INITIAL);
    let start = this.end;
    let n = 0;
    while (start > FILE_HEADER_LEN) {
      const prev = recordEndingAt(win, start);
      this.openStats.headersWalked++;
      if (!prev) return false;
      if (prev.h.type !== TYPE_SNAPSHOT_PART) break;
      start = prev.start;
      n++;
    }
    const cut = this.end - start;
    ftruncateSync(this.fd, start);
    fdatasyncSync(this.fd);
    this.repairs.push({
      kind: 'torn-tail',
      offset: start,
      message: `cut ${cut} bytes at offset ${start}: ${n} snapshot part record(s) without their final snapshot record (a snapshot that never completed)`,
    });
    this.end = start;
    return this.loadTail(null);
  }

  /**
   * Compaction renamed a new file over the backup: switch to it. The writer lock stays held (it lives on
   * `<path>.writer`, which the rename does not touch), so no other writer can slip in between.
   */
  reopen(): void {
    this.checkUsable();
    const next = V2Writer.open(this.location, {}, this.lock);
    closeSync(this.fd);
    this.fd = next.fd;
    this.identity = null;
    this.end = next.end;
    this.headVersion = next.headVersion;
    this.lastType = next.lastType;
    this.groupStart = next.groupStart;
    this.groupCount = next.groupCount;
    this.entryCount = next.entryCount;
  }

  /** Bytes of acknowledged data (the file size); unlike stats() never walks the file. */
  endOffset(): number {
    return this.end;
  }

  head(): number {
    return this.end === FILE_HEADER_LEN ? 0 : this.headVersion;
  }

  isEmpty(): boolean {
    return this.end === FILE_HEADER_LEN;
  }

  headIsSnapshot(): boolean {
    return this.end > FILE_HEADER_LEN && this.lastType === TYPE_SNAPSHOT;
  }

  /**
   * One record of a snapshot: TYPE_SNAPSHOT_PART (a slice, more follow) or TYPE_SNAPSHOT (the last slice,
   * or the whole database; `parts` = how many part records precede it), with the `len` bytes at
   * `srcOff` of the open file `src`. Durable on return. A source that ends early is cut back and reported
   * as an unreadable source; the writer stays usable.
   */
  appendSnapshotSlice(type: number, version: number, parts: number, src: number, srcOff: number, len: number, srcPath: string): void {
    this.checkUsable();
    if (!isValidDataVersion(version)) throw new RangeError(`data_version must be an unsigned 32-bit integer, not ${version}`);
    if (type !== TYPE_SNAPSHOT && type !== TYPE_SNAPSHOT_PART) throw new RangeError(`not a snapshot record type: ${type}`);
    const at = this.end;
    const header = Buffer.alloc(RECORD_HEADER_LEN);
    const chunk = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(1, len)));
    let crc = 0;
    try {
      writeFully(this.fd, header, at);
      for (let done = 0; done < len; ) {
        let n: number;
        try {
          n = readSync(src, chunk, 0, Math.min(chunk.length, len - done), srcOff + done);
          if (n <= 0) throw new Error(`it ended at byte ${srcOff + done} of the ${srcOff + len} expected (it shrank while it was read)`);
        } catch (e) {
          ftruncateSync(this.fd, at);
          throw new BackupError(`cannot read the snapshot source ${srcPath}: ${(e as Error).message}`, this.location, at);
        }
        const part = chunk.subarray(0, n);
        crc = crc32(part, crc);
        writeFully(this.fd, part, at + RECORD_HEADER_LEN + done);
        done += n;
      }
      this.sealRecord(header, at, type, version, len, crc, parts);
    } catch (e) {
      if (e instanceof BackupError) throw e;
      throw this.fail(e, at);
    }
    this.end = at + RECORD_OVERHEAD + len;
    this.headVersion = version;
    this.lastType = type;
    this.groupStart = this.end;
    this.groupCount = 0;
    if (this.entryCount !== null && type === TYPE_SNAPSHOT) this.entryCount++;
  }

  repaired(): Problem[] {
    return this.repairs.slice();
  }

  /**
   * Ends a record whose payload is already written at `at` + header: its header, its trailer, then one
   * fdatasync, so the record is durable (and readable) only once it is whole.
   */
  private sealRecord(header: Buffer, at: number, type: number, version: number, len: number, crc: number, parts = 0): void {
    encodeRecordHeader(header, type, version, len, crc, parts);
    writeFully(this.fd, header, at);
    const trailer = Buffer.allocUnsafe(RECORD_TRAILER_LEN);
    writeU64(trailer, len, 0);
    writeFully(this.fd, trailer, at + RECORD_HEADER_LEN + len);
    fdatasyncSync(this.fd);
  }

  appendChange(version: number, statements: readonly string[]): number {
    this.checkUsable();
    if (!isValidDataVersion(version)) throw new RangeError(`data_version must be an unsigned 32-bit integer, not ${version}`);
    const payloadLen = changePayloadLength(statements);
    const total = RECORD_OVERHEAD + payloadLen;
    if (total > this.scratch.length) this.scratch = Buffer.allocUnsafe(Math.max(total, this.scratch.length * 2));
    const buf = this.scratch;
    encodeChangeRecordInto(buf, version, statements, payloadLen);
    const at = this.end;
    try {
      writeFully(this.fd, buf.subarray(0, total), at);
      fdatasyncSync(this.fd);
      assertStillNamed(this.fd, this.location, (this.identity ??= identityOf(this.fd)));
    } catch (e) {
      throw this.fail(e, at);
    }
    if (buf.length > SCRATCH_KEEP) this.scratch = Buffer.allocUnsafe(SCRATCH_INITIAL);
    if (!(this.lastType === TYPE_CHANGE && this.headVersion === version && at > FILE_HEADER_LEN)) {
      this.groupStart = at;
      this.groupCount = 0;
    }
    this.groupCount++;
    this.end = at + total;
    this.headVersion = version;
    this.lastType = TYPE_CHANGE;
    if (this.entryCount !== null) this.entryCount++;
    return total;
  }

  appendSnapshotFile(version: number, dbPath: string): void {
    this.checkUsable();
    if (!isValidDataVersion(version)) throw new RangeError(`data_version must be an unsigned 32-bit integer, not ${version}`);
    let src: number;
    try {
      src = openSync(dbPath, 'r');
    } catch (e) {
      throw new BackupError(`cannot read the snapshot source ${dbPath}: ${(e as Error).message}`, this.location);
    }
    const at = this.end;
    // all zeros: its checksum is wrong, so a crash before the real header lands reads as a torn tail
    const header = Buffer.alloc(RECORD_HEADER_LEN);
    const chunk = Buffer.allocUnsafe(CHUNK);
    let len = 0;
    let crc = 0;
    try {
      writeFully(this.fd, header, at);
      for (;;) {
        let n: number;
        try {
          n = readSync(src, chunk, 0, CHUNK, len);
        } catch (e) {
          // the backup itself is fine: drop the partial record and stay usable
          ftruncateSync(this.fd, at);
          throw new BackupError(`cannot read the snapshot source ${dbPath}: ${(e as Error).message}`, this.location, at);
        }
        if (n === 0) break;
        const part = chunk.subarray(0, n);
        crc = crc32(part, crc);
        writeFully(this.fd, part, at + RECORD_HEADER_LEN + len);
        len += n;
      }
      this.sealRecord(header, at, TYPE_SNAPSHOT, version, len, crc);
    } catch (e) {
      if (e instanceof BackupError) throw e;
      throw this.fail(e, at);
    } finally {
      closeSync(src);
    }
    this.end = at + RECORD_OVERHEAD + len;
    this.headVersion = version;
    this.lastType = TYPE_SNAPSHOT;
    this.groupStart = this.end;
    this.groupCount = 0;
    if (this.entryCount !== null) this.entryCount++;
  }

  dropHead(): number {
    this.checkUsable();
    if (this.end === FILE_HEADER_LEN) return 0;
    if (this.groupCount === 0) {
      throw new BackupError(
        `${this.location}: the newest entry is a snapshot at version ${this.headVersion}; a snapshot is committed state and is never dropped`,
        this.location,
        this.end,
      );
    }
    const to = this.groupStart;
    try {
      ftruncateSync(this.fd, to);
      fdatasyncSync(this.fd);
    } catch (e) {
      throw this.fail(e, to);
    }
    if (this.entryCount !== null) this.entryCount -= this.groupCount;
    this.end = to;
    if (!this.loadTail(null)) {
      const e = new BackupError(
        `${this.location} is damaged: the record before offset ${to} cannot be found through its trailer. ` +
          `Run 'clnvault verify ${this.location}'; if it cannot be repaired, start a fresh backup with 'clnvault init'.`,
        this.location,
        to,
      );
      this.failed = e;
      throw e;
    }
    return this.head();
  }

  stats(): BackupStats {
    if (this.entryCount === null) this.entryCount = this.countEntries();
    return { format: 'v2', location: this.location, head: this.head(), entries: this.entryCount, bytes: this.end };
  }

  /** Off the hot path (stats only): walks every trailer back from the end. */
  private countEntries(): number {
    const win = new FileWindow(this.fd, this.end, CHUNK);
    let n = 0;
    let at = this.end;
    while (at > FILE_HEADER_LEN) {
      const rec = recordEndingAt(win, at);
      if (!rec) return n + countWhole(scanRecords(this.fd, at, this.location).records);
      if (rec.h.type !== TYPE_SNAPSHOT_PART) n++;
      at = rec.start;
    }
    return n;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      closeSync(this.fd);
    } finally {
      this.lock.release();
    }
  }

  private checkUsable(): void {
    if (this.closed) throw new BackupError(`${this.location}: the writer is closed`, this.location);
    if (this.failed) {
      throw new BackupError(
        `${this.location}: an earlier write failed (${this.failed.message}); reopen the backup before writing again`,
        this.location,
      );
    }
  }

  /**
   * After a failed write or fdatasync the file's state on disk is unknown (and after a failed fsync the
   * page cache cannot be trusted either), so this writer stops. Reopening checks and cuts the tail.
   */
  private fail(e: unknown, at: number): BackupError {
    this.failed = e as Error;
    return new BackupError(
      `${this.location}: writing at offset ${at} failed: ${(e as Error).message}; the entry is NOT backed up`,
      this.location,
      at,
    );
  }
}

function toEntryHeader(r: GroupedEntry): EntryHeader {
  return { kind: r.kind, version: r.version, offset: r.offset, pragmaOnly: r.pragmaOnly };
}

/** Entries, not records: a chunked snapshot's parts are counted with its final record. */
function countWhole(recs: readonly RecordInfo[]): number {
  let n = 0;
  for (const r of recs) if (r.type !== TYPE_SNAPSHOT_PART) n++;
  return n;
}

/** The error a reader's headers() throws for damage: a restore must never skip a record. */
export function damagedError(location: string, bad: readonly Problem[], path = location): BackupError {
  return new BackupError(
    `${location} is damaged: ${bad[0]!.message}` +
      (bad.length > 1 ? ` (and ${bad.length - 1} more damaged record(s))` : '') +
      `. A restore must not skip a record; run 'clnvault verify ${location}' for details.`,
    path,
    bad[0]!.offset,
  );
}

/** The fast open: the newest record, found through the trailer and fully verified, or null. */
function checkLastRecord(fd: number, size: number): { start: number; h: RecordHeader } | null {
  const win = new FileWindow(fd, size, SCRATCH_INITIAL);
  const rec = recordEndingAt(win, size);
  if (!rec) return null;
  const c = checkRecordAt(win, rec.start);
  if (c.kind !== 'ok' || rec.start + RECORD_OVERHEAD + c.h.length !== size) return null;
  return { start: rec.start, h: c.h };
}

// ---------------------------------------------------------------------------------------------------
// Reader

/**
 * Change records up to this size are read through the reader's read-ahead window; a bigger one is read
 * on its own, so that one huge batch neither evicts the window nor makes it grow.
 */
const READ_AHEAD_MAX_RECORD = 256 << 10;

/**
 * Sequential read-ahead for V2Reader.read: a restore reads records in file order, and two small preads
 * per ~1 KB record cost more than everything else the reader does. One CHUNK-sized buffer, reused, so
 * memory stays bounded whatever the backup's size. A short read (the file shrank since the scan) is an
 * error only when it cuts the bytes actually asked for, as it was with one pread per record.
 */
class ReadAhead {
  private buf: Buffer | null = null;
  private start = 0;
  private len = 0;

  constructor(
    private readonly fd: number,
    private readonly size: number,
  ) {}

  /** Bytes [off, off + n) of the file, n <= CHUNK; the view is valid until the next call. */
  get(off: number, n: number): Buffer {
    if (off < this.start || off + n > this.start + this.len) this.fill(off, n);
    return this.buf!.subarray(off - this.start, off - this.start + n);
  }

  release(): void {
    this.buf = null;
    this.len = 0;
  }

  private fill(off: number, need: number): void {
    const buf = (this.buf ??= Buffer.allocUnsafe(CHUNK));
    const want = Math.min(buf.length, Math.max(need, this.size - off));
    // invalidate first: a failed read must not leave stale bytes that look like the new range
    this.start = off;
    this.len = 0;
    while (this.len < want) {
      const r = readSync(this.fd, buf, this.len, want - this.len, off + this.len);
      if (r <= 0) break;
      this.len += r;
    }
    if (this.len < need) throw new Error(`unexpected end of file at offset ${off + this.len}`);
  }
}

export class V2Reader implements BackupReader {
  readonly format = 'v2' as const;
  /** index in scan.records of the record after the last one read: restore reads in file order */
  private cursor = 0;
  private readonly ahead: ReadAhead;
  private closed = false;

  private constructor(
    readonly location: string,
    private readonly fd: number,
    private readonly scan: ScanResult,
    readonly backupId: Buffer,
    readonly createdMs: number,
    size: number,
  ) {
    this.ahead = new ReadAhead(fd, size);
  }

  static open(path: string): V2Reader {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new BackupError(code === 'ENOENT' ? `${path} does not exist` : `cannot open ${path}: ${(e as Error).message}`, path);
    }
    try {
      const size = fstatSync(fd).size;
      const info = checkFileHeader(fd, size, path);
      const scan = scanRecords(fd, size, path);
      if (scan.unsupported) throw scan.unsupported;
      return new V2Reader(path, fd, scan, info.backupId, info.createdMs, size);
    } catch (e) {
      closeSync(fd);
      throw asBackupError(e, path, 'cannot read the backup');
    }
  }

  /** Debug figure for tests and `inspect`: how many records the scan checked. */
  get recordsValidated(): number {
    return this.scan.recordsValidated;
  }

  private grouped: Grouping | null = null;

  /** Records as entries: a chunked snapshot's parts and final record are one entry. */
  private grouping(): Grouping {
    return (this.grouped ??= groupRecords(this.scan.records));
  }

  private damage(): Problem[] {
    return [...this.scan.corrupt, ...this.grouping().corrupt].sort((a, b) => a.offset - b.offset);
  }

  headers(opts: { beforeDamage?: boolean } = {}): EntryHeader[] {
    const g = this.grouping();
    const bad = this.damage();
    if (bad.length > 0 && opts.beforeDamage) {
      // asked for explicitly (restore's stopAtDamage): the intact entries up to the first damaged record
      const first = bad[0]!.offset;
      return g.entries.filter((e) => this.scan.records[e.last]!.offset < first).map(toEntryHeader);
    }
    if (bad.length > 0) throw damagedError(this.location, bad);
    return g.entries.map(toEntryHeader);
  }

  /** Every valid record in file order, parts included (offsets local to this file): for SegmentedReader. */
  rawRecords(): readonly RecordInfo[] {
    return this.scan.records;
  }

  /** Damage and torn tail as the record scan found them, before records are grouped into entries. */
  rawProblems(): Problem[] {
    const all = this.scan.corrupt.slice();
    if (this.scan.torn) all.push(this.scan.torn);
    return all.sort((a, b) => a.offset - b.offset);
  }

  /** End of the last valid record. */
  get validEnd(): number {
    return this.scan.validEnd;
  }

  /** The entry at `offset`: the one after the last read when reading in file order, else a binary search. */
  private entryAt(offset: number): GroupedEntry | undefined {
    const ents = this.grouping().entries;
    const i = indexAtOffset(ents, this.cursor, offset);
    if (i < 0) return undefined;
    this.cursor = i + 1;
    return ents[i];
  }

  read(h: EntryHeader): Entry {
    this.checkOpen();
    const e = this.entryAt(h.offset);
    if (!e || e.kind !== h.kind || e.version !== h.version) {
      throw new BackupError(`${this.location}: no ${h.kind} record with version ${h.version} at offset ${h.offset}`, this.location, h.offset);
    }
    if (e.kind === 'snapshot') {
      const recs = this.scan.records.slice(e.first, e.last + 1).map((rec) => ({ reader: this, rec }));
      return snapshotEntry(this.location, e.version, e.offset, e.size, recs);
    }
    return this.readChange(this.scan.records[e.first]!);
  }

  /** The change record `r` (from rawRecords()), read and checked. */
  readChange(r: RecordInfo): Entry {
    this.checkOpen();
    // the length was vouched for by the header checksum and fits inside the file
    const total = RECORD_HEADER_LEN + r.length;
    let rec: Buffer;
    if (total <= READ_AHEAD_MAX_RECORD) {
      rec = this.ahead.get(r.offset, total);
    } else {
      rec = Buffer.allocUnsafe(total);
      readFully(this.fd, rec, total, r.offset);
    }
    const payload = rec.subarray(RECORD_HEADER_LEN, total);
    const hh = parseRecordHeader(rec);
    if (typeof hh === 'string' || hh.length !== r.length || crc32(payload) !== hh.payloadCrc) {
      throw new BackupError(`${this.location}: the change record at offset ${r.offset} changed or was damaged since it was scanned`, this.location, r.offset);
    }
    let statements: string[];
    try {
      statements = decodeChangePayload(payload);
    } catch (e) {
      throw new BackupError(`${this.location}: change record at offset ${r.offset} does not decode: ${(e as Error).message}`, this.location, r.offset);
    }
    return { kind: 'change', version: r.version, offset: r.offset, statements };
  }

  /** Streams the payload of the snapshot (part) record `r` to `out` at `outAt`, checking its CRC; memory stays bounded. */
  copyRecordPayload(r: RecordInfo, out: number, outAt: number): void {
    this.checkOpen();
    const what = r.type === TYPE_SNAPSHOT_PART ? 'snapshot part record' : 'snapshot';
    const header = Buffer.allocUnsafe(RECORD_HEADER_LEN);
    readFully(this.fd, header, RECORD_HEADER_LEN, r.offset);
    const hh = parseRecordHeader(header);
    if (typeof hh === 'string' || hh.length !== r.length || hh.type !== r.type) {
      throw new BackupError(`${this.location}: the ${what} header at offset ${r.offset} changed since it was scanned`, this.location, r.offset);
    }
    const chunk = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(1, r.length)));
    let crc = 0;
    for (let done = 0; done < r.length; ) {
      const n = Math.min(chunk.length, r.length - done);
      readFully(this.fd, chunk, n, r.offset + RECORD_HEADER_LEN + done);
      const part = chunk.subarray(0, n);
      crc = crc32(part, crc);
      writeFully(out, part, outAt + done);
      done += n;
    }
    if (crc !== hh.payloadCrc) {
      throw new BackupError(`${this.location}: the ${what} at offset ${r.offset} fails its checksum`, this.location, r.offset);
    }
  }

  problems(): Problem[] {
    const g = this.grouping();
    const all = [...this.scan.corrupt, ...g.corrupt];
    if (g.dangling) all.push(g.dangling);
    if (this.scan.torn) all.push(this.scan.torn);
    return all.sort((a, b) => a.offset - b.offset);
  }

  stats(): BackupStats {
    const g = this.grouping();
    const ents = g.entries;
    return {
      format: 'v2',
      location: this.location,
      head: ents.length > 0 ? ents[ents.length - 1]!.version : 0,
      entries: ents.length,
      bytes: g.dangling ? g.dangling.offset : this.scan.validEnd,
    };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.ahead.release();
    closeSync(this.fd);
  }

  private checkOpen(): void {
    if (this.closed) throw new BackupError(`${this.location}: the reader is closed`, this.location);
  }
}

/**
 * A snapshot entry whose bytes are the payloads of `recs` (a whole snapshot record, or a chunked
 * snapshot's parts and final record, possibly in several segment files), concatenated. writeTo streams
 * them in bounded memory, checks every record's CRC and leaves no file behind on failure.
 */
export function snapshotEntry(
  location: string,
  version: number,
  offset: number,
  size: number,
  recs: readonly { reader: V2Reader; rec: RecordInfo }[],
): SnapshotEntry {
  return {
    kind: 'snapshot',
    version,
    offset,
    size,
    parts: recs.length,
    writeTo: (path: string) => {
      let out: number;
      try {
        out = openSync(path, 'wx', 0o600);
      } catch (e) {
        throw new BackupError(`cannot create ${path} for the snapshot at offset ${offset}: ${(e as Error).message}`, location, offset);
      }
      try {
        let at = 0;
        for (const { reader, rec } of recs) {
          reader.copyRecordPayload(rec, out, at);
          at += rec.length;
        }
        fsyncSync(out);
        closeSync(out);
      } catch (e) {
        try {
          closeSync(out);
        } catch {
          // already closed
        }
        try {
          unlinkSync(path);
        } catch {
          // nothing more to undo
        }
        throw asBackupError(e, location, `copying the snapshot at offset ${offset} to ${path}`);
      }
      fsyncDir(path);
    },
  };
}
