import { crc32 } from 'node:zlib';
import { BackupError } from '../../../engine/entries.js';

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
/**
 * 3: segment seals (TYPE_SEAL). A version-2 file reads as before; a version-3 file is refused by an older
 * clnvault ("upgrade clnvault") rather than read without the seal rule (docs/format-v2.md, "Segments").
 * 4: preallocated segments: records are written into zero-filled space reserved ahead of the writer, so the
 * file's size no longer marks the end of the data; every record's header CRC is seeded with the backup id
 * and the segment set id, so a record left in that space by an earlier use can never pass as new
 * (docs/format-v2.md, "Preallocation").
 */
export const FORMAT_VERSION = 4;
/** The first format version whose files hold reserved space and seeded record header CRCs. */
export const PREALLOC_VERSION = 4;
/** The oldest format version this clnvault still reads. */
export const MIN_FORMAT_VERSION = 2;

export function isReadableVersion(v: number): boolean {
  return v >= MIN_FORMAT_VERSION && v <= FORMAT_VERSION;
}
export const FILE_HEADER_LEN = 64;

/**
 * The seed of every record header CRC in a file with header `h` (FILE_HEADER_LEN bytes): 0 (a plain
 * CRC, as versions 2 and 3 wrote) before PREALLOC_VERSION; from it on, the CRC of the backup id (bytes
 * 16..31) and the segment set id (44..47), never 0. Records are copied between segments of one set only
 * by compaction, which writes a new set and re-seals every header it copies.
 */
export function recordSeedOf(h: Buffer): number {
  if (h.readUInt16BE(8) < PREALLOC_VERSION) return 0;
  return recordSeed(h.subarray(16, 32), h.readUInt32BE(44));
}

export function recordSeed(backupId: Buffer, setId: number): number {
  const b = Buffer.allocUnsafe(20);
  backupId.copy(b, 0, 0, 16);
  b.writeUInt32BE(setId >>> 0, 16);
  // 0 would make a seeded header indistinguishable from a version-3 one
  return crc32(b) || 1;
}
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
/**
 * The last record of a segment that is not the last of its set: "segment `next` of set `setId` of backup
 * `backupId` follows". Written (durably) only once the next segment exists, so a segment that ends with
 * one and has no successor is a backup with files missing, and the newest segment never ends with one.
 * Payload: u32 next index, u32 set id, 16-byte backup id. Version field: 0.
 */
export const TYPE_SEAL = 4;
export const SEAL_PAYLOAD_LEN = 24;
export const SEAL_RECORD_LEN = 40 + SEAL_PAYLOAD_LEN;
/** Reserved for later versions; this one writes neither and refuses to read records that use them. */
export const FLAG_DEFLATE = 0x01;
export const FLAG_ENCRYPTED = 0x02;
/**
 * With FLAG_ENCRYPTED: the change batch is PRAGMA-only. Scans and restore plans need that without the key
 * (docs/format-v2.md, "Versions"); it is authenticated with the record (docs/encryption.md).
 */
export const FLAG_PRAGMA_ONLY = 0x04;
/** File flag: every data record is encrypted (docs/encryption.md); bytes 48..59 say with which key. */
export const FILE_FLAG_ENCRYPTED = 0x01;

/** What an encrypted backup's file header says about its key (readable without it). */
export interface FileEncryption {
  /** 1 node seed, 2 key file, 3 passphrase */
  kind: number;
  /** 8 bytes: the key's fingerprint (16 hex digits), not the key */
  fingerprint: Buffer;
  /**
   * A passphrase key's scrypt cost (bytes 49..51: log2 N, r, p); its salt is derived from the backup id
   * (src/crypto/passphrase-backup.ts). Absent for the other kinds (the bytes are zero).
   */
  scrypt?: { logN: number; r: number; p: number };
}

/** Upper bound for every read and copy buffer, so memory never grows with the size of a record. */
export const CHUNK = 1 << 20;
/** The hot-path record buffer starts here, grows for big batches and falls back after a huge one. */
export const SCRATCH_INITIAL = 64 << 10;
export const SCRATCH_KEEP = 1 << 20;
/**
 * Change payloads below this are always decoded during a scan to tell PRAGMA-only batches apart (inspect
 * shows them); larger ones only where the answer matters (versions.ts, pragmaMatters).
 */
export const PRAGMA_PROBE_MAX = 256;
const TWO_32 = 0x1_0000_0000;

export const MAGIC_BYTES = Buffer.from([0x43, 0x56, 0x52, 0x31]);
/** fatal: invalid UTF-8 is damage, not something to paper over; ignoreBOM: keep a leading U+FEFF as data. */
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

export function isV2(head: Buffer): boolean {
  return head.length >= 8 && head.subarray(0, 8).equals(FILE_MAGIC);
}


/** u64 as two u32 halves: avoids a BigInt per call on the hot path; lengths never exceed 2^53. */
export function writeU64(buf: Buffer, n: number, at: number): void {
  buf.writeUInt32BE(Math.floor(n / TWO_32), at);
  buf.writeUInt32BE(n >>> 0, at + 4);
}

/** Values above 2^53 lose precision, which is harmless: they are larger than any file and get rejected. */
export function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * TWO_32 + buf.readUInt32BE(at + 4);
}

/** `enc`: an encrypted backup's key description; `version`: an older one only to write files as an earlier clnvault did (tests of reading them). */
export function encodeFileHeader(backupId: Buffer, createdMs: number, enc: FileEncryption | null = null, version = FORMAT_VERSION): Buffer {
  if (backupId.length !== 16) throw new RangeError('backup id must be 16 bytes');
  const h = Buffer.alloc(FILE_HEADER_LEN);
  FILE_MAGIC.copy(h, 0);
  h.writeUInt16BE(version, 8);
  h.writeUInt16BE(FILE_HEADER_LEN, 10);
  h.writeUInt32BE(enc ? FILE_FLAG_ENCRYPTED : 0, 12);
  backupId.copy(h, 16);
  writeU64(h, createdMs, 32);
  if (enc) {
    if (enc.fingerprint.length !== 8) throw new RangeError('key fingerprint must be 8 bytes');
    h[48] = enc.kind;
    if (enc.scrypt) {
      h[49] = enc.scrypt.logN;
      h[50] = enc.scrypt.r;
      h[51] = enc.scrypt.p;
    }
    enc.fingerprint.copy(h, 52);
  }
  h.writeUInt32BE(crc32(h.subarray(0, 60)), 60);
  return h;
}

/** Fills bytes 0..31 of `buf` with a record header; `seed`: the file's recordSeedOf. */
export function encodeRecordHeader(buf: Buffer, type: number, version: number, payloadLen: number, payloadCrc: number, parts = 0, flags = 0, seed = 0): void {
  buf.writeUInt32BE(RECORD_MAGIC, 0);
  buf[4] = type;
  buf[5] = flags;
  buf.writeUInt16BE(0, 6);
  buf.writeUInt32BE(version, 8);
  // a snapshot record's count of preceding part records; reserved (0) in every other type
  buf.writeUInt32BE(type === TYPE_SNAPSHOT ? parts : 0, 12);
  writeU64(buf, payloadLen, 16);
  buf.writeUInt32BE(payloadCrc, 24);
  buf.writeUInt32BE(crc32(buf.subarray(0, 28), seed), 28);
}

let crcTables: { table: Uint32Array; byTop: Uint8Array } | null = null;

/** CRC-32/IEEE's byte table (reflected, polynomial 0xEDB88320), and which entry has each top byte. */
function tables(): { table: Uint32Array; byTop: Uint8Array } {
  if (crcTables) return crcTables;
  const table = new Uint32Array(256);
  const byTop = new Uint8Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[i] = c >>> 0;
    byTop[c >>> 24] = i;
  }
  return (crcTables = { table, byTop });
}

/**
 * The seed under which the record header `h` (32 bytes) carries a valid header CRC: CRC-32 run backwards
 * from the stored value over bytes 27..0 (each step of CRC-32 can be undone). Only for reading a file
 * whose file header is damaged, so that the ids the seed comes from cannot be trusted: the seed is taken
 * from its first record instead (0: a file of format 3 or earlier), and every other record is checked
 * against it as usual. Checked against zlib's crc32 by the tests.
 */
export function seedOfRecordHeader(h: Buffer): number {
  const { table, byTop } = tables();
  let c = ~h.readUInt32BE(28) >>> 0;
  for (let k = 27; k >= 0; k--) {
    const i = byTop[c >>> 24]!;
    c = (((c ^ table[i]!) << 8) | (i ^ h[k]!)) >>> 0;
  }
  return ~c >>> 0;
}

/** Rewrites the header CRC of the record header at `buf[at..at+32)` for another file's seed (compaction's copy). */
export function resealRecordHeader(buf: Buffer, at: number, seed: number): void {
  buf.writeUInt32BE(crc32(buf.subarray(at, at + 28), seed), at + 28);
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
export function encodeChangeRecordInto(buf: Buffer, version: number, statements: readonly string[], payloadLen: number, seed = 0): number {
  const end = RECORD_HEADER_LEN + payloadLen;
  encodeChangePayloadAt(buf, RECORD_HEADER_LEN, statements, payloadLen);
  encodeRecordHeader(buf, TYPE_CHANGE, version, payloadLen, crc32(buf.subarray(RECORD_HEADER_LEN, end)), 0, 0, seed);
  writeU64(buf, payloadLen, end);
  return end + RECORD_TRAILER_LEN;
}

/** Writes a change payload (`payloadLen` bytes, from changePayloadLength) into `buf` at `at`. */
export function encodeChangePayloadAt(buf: Buffer, at: number, statements: readonly string[], payloadLen: number): void {
  const end = at + payloadLen;
  buf.writeUInt32BE(statements.length, at);
  let off = at + 4;
  for (let i = 0; i < statements.length; i++) {
    const n = buf.write(statements[i]!, off + 4, end - off - 4, 'utf8');
    buf.writeUInt32BE(n, off);
    off += 4 + n;
  }
  // byteLength and write must agree, or every later length in the record would be off
  if (off !== end) throw new Error(`change record encoding mismatch: ${off - at} bytes written, ${payloadLen} expected`);
}

/** A complete change record; written into `out` (and a view of it returned) when `out` is big enough. */
export function encodeChangeRecord(version: number, statements: readonly string[], out?: Buffer, seed = 0): Buffer {
  const payloadLen = changePayloadLength(statements);
  const total = RECORD_OVERHEAD + payloadLen;
  const buf = out && out.length >= total ? out : Buffer.allocUnsafe(total);
  encodeChangeRecordInto(buf, version, statements, payloadLen, seed);
  return buf.subarray(0, total);
}

/**
 * The statements of a change payload of `length` bytes at `at`, decoded one at a time through `read`
 * (positioned reads of exactly n bytes), for payloads too large to hold at once. Each length is checked
 * against what remains before anything is allocated; the stray-bytes check runs when iterated to the end.
 */
export function* changeStatementsAt(read: (buf: Buffer, n: number, pos: number) => void, at: number, length: number): Generator<string> {
  if (length < 4) throw new Error(`change payload of ${length} bytes cannot hold its statement count`);
  const u32 = Buffer.allocUnsafe(4);
  read(u32, 4, at);
  const count = u32.readUInt32BE(0);
  if (count > (length - 4) / 4) throw new Error(`change payload claims ${count} statements but has only ${length} bytes`);
  let off = 4;
  for (let i = 0; i < count; i++) {
    if (length - off < 4) throw new Error(`statement ${i} length runs past the end of the payload`);
    read(u32, 4, at + off);
    const n = u32.readUInt32BE(0);
    off += 4;
    if (n > length - off) throw new Error(`statement ${i} claims ${n} bytes but only ${length - off} remain`);
    const b = Buffer.allocUnsafe(n);
    read(b, n, at + off);
    let text: string;
    try {
      text = utf8.decode(b);
    } catch {
      throw new Error(`statement ${i} is not valid UTF-8`);
    }
    off += n;
    yield text;
  }
  if (off !== length) throw new Error(`${length - off} stray bytes after the last statement`);
}

/**
 * The UTF-8 text of `p[start, end)`, or an error for bytes that are not UTF-8. Decoded in place (no view
 * object per statement: that and the fatal decoder's own checks were ~10% of reading a record); Node's
 * lenient decoder gives the same text as the fatal one for valid input and U+FFFD for every invalid
 * sequence, so only a statement holding U+FFFD (invalid, or a real one) is decoded again strictly.
 */
function utf8At(p: Buffer, start: number, end: number, i: number): string {
  // (undefined: UTF-8 without the encoding lookup toString does for a named one)
  const s = p.toString(undefined, start, end);
  if (s.indexOf('\uFFFD') < 0) return s;
  try {
    return utf8.decode(p.subarray(start, end));
  } catch {
    throw new Error(`statement ${i} is not valid UTF-8`);
  }
}

/**
 * Decodes a change payload: `payload`, or its bytes [start, end) (the replay decodes in place in its
 * read-ahead buffer: no view per record). Every count and length is checked against the bytes actually
 * present before anything is allocated from it: a damaged or hostile length must produce an error, not a
 * huge buffer.
 */
export function decodeChangePayload(payload: Uint8Array, start = 0, end = payload.length): string[] {
  const p = Buffer.isBuffer(payload) ? payload : Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
  const len = end - start;
  if (len < 4) throw new Error(`change payload of ${len} bytes cannot hold its statement count`);
  const count = p.readUInt32BE(start);
  if (count > (len - 4) / 4) throw new Error(`change payload claims ${count} statements but has only ${len} bytes`);
  const out: string[] = [];
  let off = start + 4;
  for (let i = 0; i < count; i++) {
    if (end - off < 4) throw new Error(`statement ${i} length runs past the end of the payload`);
    const n = p.readUInt32BE(off);
    off += 4;
    if (n > end - off) throw new Error(`statement ${i} claims ${n} bytes but only ${end - off} remain`);
    out.push(utf8At(p, off, off + n, i));
    off += n;
  }
  if (off !== end) throw new Error(`${end - off} stray bytes after the last statement`);
  return out;
}

export interface RecordHeader {
  type: number;
  flags: number;
  reserved16: number;
  keyId: number;
  version: number;
  length: number;
  payloadCrc: number;
}

/**
 * The header at `b[at..at + 32)`, or why it is not one. Only magic and checksum decide validity; `seed` is
 * the file's recordSeedOf, so a record of another backup or segment set fails like a damaged one.
 */
export function parseRecordHeader(b: Buffer, seed = 0, at = 0): RecordHeader | string {
  if (b.readUInt32BE(at) !== RECORD_MAGIC) return 'no record magic';
  // a plain view: a Buffer view (subarray) costs ~3x as much to make, and this runs for every record, twice
  if (crc32(new Uint8Array(b.buffer, b.byteOffset + at, 28), seed) !== b.readUInt32BE(at + 28)) return 'record header checksum mismatch';
  return {
    type: b[at + 4]!,
    flags: b[at + 5]!,
    reserved16: b.readUInt16BE(at + 6),
    version: b.readUInt32BE(at + 8),
    keyId: b.readUInt32BE(at + 12),
    length: readU64(b, at + 16),
    payloadCrc: b.readUInt32BE(at + 24),
  };
}

/** Why this clnvault cannot use a well-formed record, or null when it can. */
export function unsupportedReason(h: RecordHeader, encrypted = false): string | null {
  const what: string[] = [];
  if (h.type !== TYPE_CHANGE && h.type !== TYPE_SNAPSHOT && h.type !== TYPE_SNAPSHOT_PART && h.type !== TYPE_SEAL) what.push(`record type ${h.type}`);
  if (h.flags & FLAG_DEFLATE) what.push('a deflate-compressed payload');
  // an encrypted backup: every data record is encrypted, seals never are (docs/encryption.md)
  const wantEnc = encrypted && h.type !== TYPE_SEAL;
  if (!wantEnc && h.flags & FLAG_ENCRYPTED) what.push('an encrypted payload');
  if (wantEnc && !(h.flags & FLAG_ENCRYPTED)) what.push('a plaintext record in an encrypted backup');
  const known = FLAG_DEFLATE | FLAG_ENCRYPTED | (wantEnc && h.type === TYPE_CHANGE ? FLAG_PRAGMA_ONLY : 0);
  if (h.flags & ~known) what.push(`unknown flag bits 0x${(h.flags & ~known & 0xff).toString(16)}`);
  // offset 12 of a snapshot record holds its part count; elsewhere it is still reserved
  if (h.reserved16 !== 0 || (h.keyId !== 0 && h.type !== TYPE_SNAPSHOT)) what.push('reserved header fields');
  return what.length === 0 ? null : what.join(', ');
}

export function unsupportedError(path: string, offset: number, reason: string): BackupError {
  return new BackupError(
    `${path}: the record at offset ${offset} uses ${reason}, which this clnvault does not support: ` +
      `the backup was written by a newer clnvault; upgrade clnvault to use it`,
    path,
    offset,
  );
}


export interface Seal {
  /** index of the segment that follows (2 for the one after the first file) */
  next: number;
  setId: number;
  backupId: Buffer;
}

/** A whole seal record (header, payload, trailer). */
export function encodeSealRecord(s: Seal, seed = 0): Buffer {
  if (s.backupId.length !== 16) throw new RangeError('backup id must be 16 bytes');
  const b = Buffer.alloc(SEAL_RECORD_LEN);
  b.writeUInt32BE(s.next, RECORD_HEADER_LEN);
  b.writeUInt32BE(s.setId, RECORD_HEADER_LEN + 4);
  s.backupId.copy(b, RECORD_HEADER_LEN + 8);
  encodeRecordHeader(b, TYPE_SEAL, 0, SEAL_PAYLOAD_LEN, crc32(b.subarray(RECORD_HEADER_LEN, RECORD_HEADER_LEN + SEAL_PAYLOAD_LEN)), 0, 0, seed);
  writeU64(b, SEAL_PAYLOAD_LEN, RECORD_HEADER_LEN + SEAL_PAYLOAD_LEN);
  return b;
}

/** The seal in a whole seal record `b` (SEAL_RECORD_LEN bytes), or null when `b` is not one. */
export function decodeSealRecord(b: Buffer, seed = 0): Seal | null {
  if (b.length !== SEAL_RECORD_LEN) return null;
  const h = parseRecordHeader(b, seed);
  if (typeof h === 'string' || h.type !== TYPE_SEAL || h.length !== SEAL_PAYLOAD_LEN) return null;
  const p = b.subarray(RECORD_HEADER_LEN, RECORD_HEADER_LEN + SEAL_PAYLOAD_LEN);
  if (crc32(p) !== h.payloadCrc || readU64(b, RECORD_HEADER_LEN + SEAL_PAYLOAD_LEN) !== SEAL_PAYLOAD_LEN) return null;
  return { next: p.readUInt32BE(0), setId: p.readUInt32BE(4), backupId: Buffer.from(p.subarray(8, 24)) };
}
