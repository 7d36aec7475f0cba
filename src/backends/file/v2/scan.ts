import { fstatSync, readSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { BackupError, type Problem } from '../../../engine/entries.js';
import { isPragmaOnly, pragmaMatters } from '../../../engine/versions.js';
import {
  changeStatementsAt,
  CHUNK,
  decodeChangePayload,
  FILE_HEADER_LEN,
  FORMAT_VERSION,
  isReadableVersion,
  MIN_FORMAT_VERSION,
  PREALLOC_VERSION,
  recordSeedOf,
  isV2,
  MAGIC_BYTES,
  parseRecordHeader,
  PRAGMA_PROBE_MAX,
  readU64,
  RECORD_HEADER_LEN,
  RECORD_OVERHEAD,
  RECORD_TRAILER_LEN,
  SCRATCH_INITIAL,
  TYPE_CHANGE,
  TYPE_SNAPSHOT,
  TYPE_SNAPSHOT_PART,
  TYPE_SEAL,
  SEAL_PAYLOAD_LEN,
  SEAL_RECORD_LEN,
  decodeSealRecord,
  type Seal,
  unsupportedError,
  unsupportedReason,
  type RecordHeader,
  FILE_FLAG_ENCRYPTED,
  FLAG_ENCRYPTED,
  FLAG_PRAGMA_ONLY,
  type FileEncryption,
} from './codec.js';
import { crcOfRange, FileWindow, readFully } from './io.js';

export type RecordCheck =
  | { kind: 'ok'; h: RecordHeader }
  | { kind: 'bad-header'; why: string }
  | { kind: 'past-eof'; h: RecordHeader }
  | { kind: 'bad-payload'; h: RecordHeader; why: string };

/** Full check of the record at `o` (header, bounds, payload checksum, trailer); at least 40 bytes must remain. */
export function checkRecordAt(win: FileWindow, o: number, seed = 0): RecordCheck {
  const h = parseRecordHeader(win.bytes, seed, win.aheadIndex(o, RECORD_HEADER_LEN));
  if (typeof h === 'string') return { kind: 'bad-header', why: h };
  if (h.length > win.size - o - RECORD_OVERHEAD) return { kind: 'past-eof', h };
  let trailer: number;
  if (RECORD_OVERHEAD + h.length <= win.capacity) {
    // the usual small record: read in place in the window (no view but a plain one of the payload for the CRC)
    const at = win.aheadIndex(o, RECORD_OVERHEAD + h.length);
    const b = win.bytes;
    if (crc32(new Uint8Array(b.buffer, b.byteOffset + at + RECORD_HEADER_LEN, h.length)) !== h.payloadCrc) {
      return { kind: 'bad-payload', h, why: 'payload checksum mismatch' };
    }
    trailer = readU64(b, at + RECORD_HEADER_LEN + h.length);
  } else {
    if (crcOfRange(win, o + RECORD_HEADER_LEN, h.length) !== h.payloadCrc) {
      return { kind: 'bad-payload', h, why: 'payload checksum mismatch' };
    }
    trailer = readU64(win.ahead(o + RECORD_HEADER_LEN + h.length, RECORD_TRAILER_LEN), 0);
  }
  if (trailer !== h.length) {
    return { kind: 'bad-payload', h, why: `trailer says ${trailer} bytes, header says ${h.length}` };
  }
  return { kind: 'ok', h };
}

/**
 * First offset >= from holding a complete valid record, or -1. This is what tells damage in the middle
 * (good records follow) from an unfinished append at the end (nothing good follows).
 */
function findNextValidRecord(fd: number, size: number, from: number, seed: number): number {
  const buf = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(0, size - from)));
  const win = new FileWindow(fd, size, CHUNK);
  let pos = from;
  while (size - pos >= RECORD_OVERHEAD) {
    const n = Math.min(buf.length, size - pos);
    readFully(fd, buf, n, pos);
    const view = buf.subarray(0, n);
    for (let i = view.indexOf(MAGIC_BYTES); i >= 0; i = view.indexOf(MAGIC_BYTES, i + 1)) {
      if (size - (pos + i) < RECORD_OVERHEAD) break;
      if (checkRecordAt(win, pos + i, seed).kind === 'ok') return pos + i;
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

export interface ScanResult {
  /** valid records, snapshot parts not counted (each part run is one entry with its final record) */
  wholeRecords: number;
  corrupt: Problem[];
  /** the tail an unfinished append left behind, if any */
  torn: Problem | null;
  unsupported: BackupError | null;
  /** end of the last good record (the file size when nothing is torn) */
  validEnd: number;
  recordsValidated: number;
  /** the segment seal that ends the file (docs/format-v2.md, "Segments"), if any; not in `records` */
  seal: (Seal & { offset: number }) | null;
  /** zero bytes reserved after the data for the next records (format 4; 0 when a torn tail follows the data) */
  reserved: number;
}

/** How a file's records are judged, from its header: see recordSeedOf and docs/format-v2.md, "Preallocation". */
export interface RecordLayout {
  /** seed of every record header CRC (0: versions 2 and 3) */
  seed: number;
  /** zeros after the last record are reserved space, not a torn tail (format 4) */
  prealloc: boolean;
  /** the file header says every data record is encrypted: payloads are ciphertext, PRAGMA-only is a flag */
  encrypted?: boolean;
}

export const PLAIN_LAYOUT: RecordLayout = { seed: 0, prealloc: false };

export function layoutOf(info: { version: number; seed: number; encryption?: FileEncryption | null }): RecordLayout {
  return { seed: info.seed, prealloc: info.version >= PREALLOC_VERSION, encrypted: (info.encryption ?? null) !== null };
}

/**
 * One past the last nonzero byte in [from, to), or `from` when they are all zero. Read backwards in
 * bounded chunks: the reserve after the data is what is searched, so the cost follows its size (bounded
 * by RESERVE_MAX), not the file's.
 */
export function endOfNonZero(fd: number, from: number, to: number): number {
  if (to <= from) return from;
  const buf = Buffer.allocUnsafe(Math.min(CHUNK, to - from));
  let hi = to;
  while (hi > from) {
    const lo = Math.max(from, hi - buf.length);
    const n = hi - lo;
    readFully(fd, buf, n, lo);
    for (let i = n - 1; i >= 0; i--) if (buf[i] !== 0) return lo + i + 1;
    hi = lo;
  }
  return from;
}

/**
 * The forward scan: validates every record from the file header on (see docs/format-v2.md, "Recovery"),
 * handing each valid record to `onRecord` and keeping none: memory does not grow with the file.
 * `damagedBefore`: a damaged record was found earlier in the scan. `win` holds the record's bytes (views
 * valid until the next read through it): an encrypted backup's chain is followed from them (ScanChain).
 */
export function scanRecords(
  fd: number,
  size: number,
  path: string,
  onRecord?: (r: RecordInfo, damagedBefore: boolean, win: FileWindow) => void,
  layout: RecordLayout = PLAIN_LAYOUT,
): ScanResult {
  const { seed, prealloc } = layout;
  const encrypted = layout.encrypted ?? false;
  const win = new FileWindow(fd, size, CHUNK);
  let wholeRecords = 0;
  const corrupt: Problem[] = [];
  let torn: Problem | null = null;
  let unsupported: BackupError | null = null;
  let validated = 0;
  let seal: (Seal & { offset: number }) | null = null;
  // a torn tail is everything from its offset on, reserved space after it included: the writer cuts it all
  // (the next reserve is written afresh), so what follows the data is always nothing or zeros
  const tornAt = (o: number, why: string): Problem => ({
    kind: 'torn-tail',
    offset: o,
    bytes: size - o,
    message: `cut ${size - o} bytes at offset ${o}: ${why} (an append that never completed)`,
  });
  /** In a preallocated file, nothing but zeros from `o` on is the end of the data (reserved space), not a torn tail. */
  const reservedFrom = (o: number): boolean => prealloc && endOfNonZero(fd, o, size) === o;

  /** version of the change record just before, null when that is not known to be the previous entry */
  let prev: number | null = null;
  let o = FILE_HEADER_LEN;
  while (o < size) {
    if (size - o < RECORD_OVERHEAD) {
      if (reservedFrom(o)) break;
      torn = tornAt(o, `only ${size - o} bytes left, less than a record's ${RECORD_OVERHEAD}-byte frame`);
      break;
    }
    let c = checkRecordAt(win, o, seed);
    validated++;
    // A preallocated file read while its writer appends: the window may hold what the reserve held before a
    // record landed there (zeros), while a later read (below) sees the records written since. A record is
    // only written after every one before it is complete and synced, so a valid record further on means
    // this one is complete too: read it again before calling anything damaged.
    const recheck = (): boolean => {
      if (!prealloc) return false;
      win.invalidate();
      c = checkRecordAt(win, o, seed);
      return c.kind === 'ok';
    };
    if (c.kind === 'ok') {
      const h = c.h;
      let pragmaOnly = false;
      if (encrypted && h.type !== TYPE_SEAL && (h.flags & FLAG_ENCRYPTED) === 0) {
        // not a newer format: a record no writer of this backup made (inserted, or from a plaintext backup)
        corrupt.push({ kind: 'corrupt', offset: o, message: `the record at offset ${o} (version ${h.version}) is in clear in an encrypted backup: it was inserted, or copied from another backup` });
        o += RECORD_OVERHEAD + h.length;
        prev = null;
        continue;
      }
      const reason = unsupportedReason(h, encrypted);
      if (reason !== null) {
        unsupported ??= unsupportedError(path, o, reason);
      } else if (encrypted) {
        pragmaOnly = h.type === TYPE_CHANGE && (h.flags & FLAG_PRAGMA_ONLY) !== 0;
      } else if (h.type === TYPE_CHANGE && (h.length < PRAGMA_PROBE_MAX || pragmaMatters(prev, h.version))) {
        try {
          const at = o + RECORD_HEADER_LEN;
          pragmaOnly = isPragmaOnly(
            h.length <= win.capacity ? decodeChangePayload(win.ahead(at, h.length)) : changeStatementsAt((b, n, p) => readFully(fd, b, n, p), at, h.length),
          );
        } catch (e) {
          // the checksum vouches for these bytes, so the writer itself produced them: still unusable
          corrupt.push({ kind: 'corrupt', offset: o, message: `change record at offset ${o} does not decode: ${(e as Error).message}` });
          o += RECORD_OVERHEAD + h.length;
          prev = null;
          continue;
        }
      }
      if (h.type === TYPE_SEAL) {
        const s = h.length === SEAL_PAYLOAD_LEN ? decodeSealRecord(Buffer.from(win.ahead(o, SEAL_RECORD_LEN)), seed) : null;
        if (s !== null && (o + SEAL_RECORD_LEN === size || reservedFrom(o + SEAL_RECORD_LEN))) {
          seal = { ...s, offset: o };
        } else {
          // a seal is written last and nothing after it: anything else means the file was tampered with or mixed up
          corrupt.push({
            kind: 'corrupt',
            offset: o,
            message: s === null ? `the segment seal record at offset ${o} is malformed` : `the segment seal record at offset ${o} is followed by ${size - o - SEAL_RECORD_LEN} more bytes; a seal is always the last record of its file`,
          });
        }
        o += RECORD_OVERHEAD + h.length;
        prev = null;
        continue;
      }
      // after a snapshot (or its parts, which grouping may drop) the next change is checked in any case
      prev = h.type === TYPE_CHANGE && reason === null ? h.version : null;
      if (h.type !== TYPE_SNAPSHOT_PART) wholeRecords++;
      onRecord?.({ offset: o, type: h.type, version: h.version, length: h.length, pragmaOnly, parts: h.type === TYPE_SNAPSHOT ? h.keyId : 0 }, corrupt.length > 0, win);
      o += RECORD_OVERHEAD + h.length;
      continue;
    }
    if (c.kind === 'bad-header' || c.kind === 'past-eof') {
      const why =
        c.kind === 'bad-header'
          ? c.why
          : `record header says ${c.h.length} bytes of payload but only ${size - o - RECORD_OVERHEAD} are present`;
      const next = findNextValidRecord(fd, size, o + 1, seed);
      if (next < 0) {
        if (reservedFrom(o)) break;
        // not zeros any more: perhaps the record landed since the window was read
        if (recheck()) {
          validated--;
          continue;
        }
        torn = tornAt(o, why);
        break;
      }
      if (recheck()) {
        validated--;
        continue;
      }
      corrupt.push({
        kind: 'corrupt',
        offset: o,
        message: `corrupt record at offset ${o}: ${why}; ${next - o} bytes skipped up to the next valid record at offset ${next}`,
      });
      o = next;
      prev = null;
      continue;
    }
    // the header checksum vouches for the length, so the record's extent is known even though its payload is bad
    const end = o + RECORD_OVERHEAD + c.h.length;
    // in reserved space a record is always "complete in length": the last one is the one no valid record follows
    if (end === size || (prealloc && findNextValidRecord(fd, size, end, seed) < 0)) {
      torn = {
        kind: 'torn-tail',
        offset: o,
        bytes: size - o,
        suspect: true,
        message:
          `cut ${size - o} bytes at offset ${o}: the last record (version ${c.h.version}) is complete in length but fails its check (${c.why}): ` +
          `an append cut short by a crash, or a damaged record`,
      };
      break;
    }
    const bad = c;
    if (recheck()) {
      validated--;
      continue;
    }
    corrupt.push({ kind: 'corrupt', offset: o, message: `corrupt record at offset ${o} (version ${bad.h.version}): ${bad.why}` });
    o = end;
    prev = null;
  }
  const validEnd = torn ? torn.offset : Math.min(o, size);
  const reserved = prealloc && !torn ? size - validEnd : 0;
  return { wholeRecords, corrupt, torn, unsupported, validEnd, recordsValidated: validated, seal, reserved };
}

export interface FileHeaderInfo {
  backupId: Buffer;
  createdMs: number;
  /** format version the header states (2, 3 from segment seals on, 4 from preallocation on) */
  version: number;
  /** set when the backup is encrypted: which key (docs/encryption.md) */
  encryption: FileEncryption | null;
  /** 0 in a first file, n >= 2 in segment n */
  segmentIndex: number;
  /** seed of the record header CRCs (recordSeedOf): 0 before format 4 */
  seed: number;
}

/**
 * The file header, or why it cannot be trusted. `damage` is set when the magic or the header checksum is
 * wrong: the fields are then as read, unverified. Everything else this clnvault cannot use (a newer
 * version, unknown flags, a header too short) is thrown: there is nothing a rescue could do about it.
 */
export function readFileHeader(fd: number, size: number, path: string): { info: FileHeaderInfo; damage: string | null } {
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
  const version = h.readUInt16BE(8);
  const rawFlags = h.readUInt32BE(12);
  const info: FileHeaderInfo = {
    backupId: Buffer.from(h.subarray(16, 32)),
    createdMs: readU64(h, 32),
    version,
    encryption: rawFlags & FILE_FLAG_ENCRYPTED ? { kind: h[48]!, fingerprint: Buffer.from(h.subarray(52, 60)) } : null,
    segmentIndex: h.readUInt32BE(40),
    seed: isReadableVersion(version) ? recordSeedOf(h) : 0,
  };
  if (!isV2(h)) return { info, damage: `the file does not start with 'CLNVAULT'` };
  if (crc32(h.subarray(0, 60)) !== h.readUInt32BE(60)) {
    return {
      info,
      damage:
        `the file header checksum (offset 60) does not match: the header is damaged` +
        (!isReadableVersion(version) ? `, or it is format version ${version} from a newer clnvault` : ''),
    };
  }
  if (!isReadableVersion(version)) {
    throw new BackupError(
      `${path} uses clnvault format version ${version}; this clnvault reads versions ${MIN_FORMAT_VERSION} to ${FORMAT_VERSION}` +
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
  if ((flags & ~FILE_FLAG_ENCRYPTED) !== 0) {
    throw new BackupError(
      `${path} has file flags 0x${flags.toString(16)} that this clnvault does not know: it was written by a newer clnvault; upgrade clnvault`,
      path,
      12,
    );
  }
  return { info, damage: null };
}

/** The header check of a writer: a damaged header is refused (a rescue reads such a file; nothing appends to it). */
export function checkFileHeader(fd: number, size: number, path: string): FileHeaderInfo {
  const { info, damage } = readFileHeader(fd, size, path);
  if (damage !== null) {
    if (damage.startsWith('the file does not start')) throw new BackupError(`${path} is not a clnvault v2 backup: ${damage}`, path, 0);
    throw new BackupError(`${path}: ${damage}`, path, 60);
  }
  return info;
}

/** Header of the record that ends exactly at `end`, found through its trailer; null when the chain is broken. */
export function recordEndingAt(win: FileWindow, end: number, seed = 0): { start: number; h: RecordHeader } | null {
  if (end - FILE_HEADER_LEN < RECORD_OVERHEAD) return null;
  const len = readU64(win.behind(end - RECORD_TRAILER_LEN, RECORD_TRAILER_LEN), 0);
  if (len > end - FILE_HEADER_LEN - RECORD_OVERHEAD) return null;
  const start = end - RECORD_OVERHEAD - len;
  const h = parseRecordHeader(win.behind(start, RECORD_HEADER_LEN), seed);
  if (typeof h === 'string' || h.length !== len) return null;
  return { start, h };
}

/** The fast open: the newest record, found through the trailer ending at `end` and fully verified, or null. */
export function checkLastRecord(fd: number, end: number, seed = 0): { start: number; h: RecordHeader } | null {
  const win = new FileWindow(fd, end, SCRATCH_INITIAL);
  const rec = recordEndingAt(win, end, seed);
  if (!rec) return null;
  const c = checkRecordAt(win, rec.start, seed);
  if (c.kind !== 'ok' || rec.start + RECORD_OVERHEAD + c.h.length !== end) return null;
  return { start: rec.start, h: c.h };
}

/**
 * The fast open of a preallocated file: the data ends where the reserved zeros begin. The last nonzero
 * byte is found by a backward search through the reserve; the newest record's trailer ends there or up
 * to 7 bytes later (its u64 length may end in zero bytes). Returns the data end and the newest record,
 * or null when no candidate holds a fully valid record (a torn tail: the full scan decides).
 */
export function findPreallocEnd(fd: number, size: number, seed: number): { end: number; last: { start: number; h: RecordHeader } | null } | null {
  const nz = endOfNonZero(fd, FILE_HEADER_LEN, size);
  if (nz === FILE_HEADER_LEN) return { end: FILE_HEADER_LEN, last: null };
  for (let end = nz; end <= Math.min(size, nz + RECORD_TRAILER_LEN - 1); end++) {
    const last = checkLastRecord(fd, end, seed);
    if (last) return { end, last };
  }
  return null;
}


/** The seal record that ends the file, checked (O(1): the last SEAL_RECORD_LEN bytes), or null. */
export function sealAtEnd(fd: number, size: number, seed = 0): Seal | null {
  if (size - FILE_HEADER_LEN < SEAL_RECORD_LEN) return null;
  const b = Buffer.allocUnsafe(SEAL_RECORD_LEN);
  readFully(fd, b, SEAL_RECORD_LEN, size - SEAL_RECORD_LEN);
  return decodeSealRecord(b, seed);
}

/** How often liveSeal reads again before it gives up: a roll-over is two system calls (the cut, the seal). */
const LIVE_SEAL_TRIES = 1000;

/**
 * The size of a segment file that a writer may be rolling over right now, and the seal that ends it (or
 * null). A roll-over cuts the segment's reserve and then writes the seal, so the file can shrink between
 * a stat and the read of its last bytes: such a short read means "stat again", never damage.
 */
export function liveSeal(fd: number, seed = 0): { size: number; seal: Seal | null } {
  const b = Buffer.allocUnsafe(SEAL_RECORD_LEN);
  for (let i = 0; ; i++) {
    const size = fstatSync(fd).size;
    if (size - FILE_HEADER_LEN < SEAL_RECORD_LEN) return { size, seal: null };
    const got = readSync(fd, b, 0, SEAL_RECORD_LEN, size - SEAL_RECORD_LEN);
    if (got === SEAL_RECORD_LEN) return { size, seal: decodeSealRecord(b, seed) };
    if (i === LIVE_SEAL_TRIES) throw new Error(`unexpected end of file at offset ${size - SEAL_RECORD_LEN + got}: the file kept shrinking while it was read`);
  }
}
