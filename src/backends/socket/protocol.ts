import { deflateSync, inflateSync, type ZlibOptions } from 'node:zlib';

/**
 * The reference backup plugin's socket protocol (backup/protocol.py), byte for byte: every packet is
 * `[u8 type][u32 BE payload length][payload]`; CHANGE and SNAPSHOT payloads are `u32 version` followed by
 * a zlib stream (RFC 1950) of the statements joined by NUL, or of the SQLite file. Any valid zlib stream
 * will do: the reference inflates with Python's zlib.decompress, which takes every level and window size.
 * See docs/remote.md and the recorded streams in test/fixtures/reference-socket/.
 */

export const PKT = {
  CHANGE: 0x01,
  SNAPSHOT: 0x02,
  REWIND: 0x03,
  REQ_METADATA: 0x04,
  RESTORE: 0x05,
  ACK: 0x06,
  NACK: 0x07,
  METADATA: 0x08,
  DONE: 0x09,
  COMPACT: 0x0a,
  COMPACT_RES: 0x0b,
} as const;

export const PKT_NAME: Record<number, string> = Object.fromEntries(Object.entries(PKT).map(([k, v]) => [v, k]));

export const HEADER_SIZE = 5;
/** the largest payload the u32 length can state */
export const MAX_PAYLOAD = 0xffff_ffff;

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

export function packetName(type: number): string {
  return PKT_NAME[type] ?? `unknown type 0x${type.toString(16).padStart(2, '0')}`;
}

/** Header and payload in one buffer, so that a packet leaves in one write (the reference's two writes cost ~40 ms on Nagle). */
export function packet(type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE + payload.length);
  b.writeUInt8(type, 0);
  b.writeUInt32BE(payload.length, 1);
  payload.copy(b, HEADER_SIZE);
  return b;
}

export function u32Packet(type: number, value: number): Buffer {
  const b = Buffer.allocUnsafe(HEADER_SIZE + 4);
  b.writeUInt8(type, 0);
  b.writeUInt32BE(4, 1);
  b.writeUInt32BE(value >>> 0, HEADER_SIZE);
  return b;
}

export interface Metadata {
  protocol: number;
  version: number;
  prevVersion: number;
  versionCount: number;
}

/**
 * clnvault's one addition to the reference's REQ_METADATA: a 1-byte payload with this bit asks the server
 * to append the backup's 16-byte id to its METADATA (36 bytes), so that a client can tell the same backup
 * from a replacement whose versions line up (docs/destinations.md). Both directions stay compatible: an
 * older clnvault server skips the payload and answers the reference's 20 bytes (no id: not checked), and
 * a server answers 36 bytes only to a client that asked. Sent to clnvault:// servers only.
 */
export const META_WANT_ID = 0x01;
const METADATA_LEN = 20;
const BACKUP_ID_LEN = 16;

export function reqMetadataPacket(wantId: boolean): Buffer {
  return packet(PKT.REQ_METADATA, wantId ? Buffer.from([META_WANT_ID]) : Buffer.alloc(0));
}

/** Whether a REQ_METADATA payload (at most a few bytes: the server bounds it) asks for the backup id. */
export function wantsId(payload: Buffer): boolean {
  return payload.length >= 1 && (payload[0]! & META_WANT_ID) !== 0;
}

/** `id`: the backup's 16-byte id, appended only for a client that asked (wantsId). */
export function metadataPacket(m: Metadata, id: Buffer | null = null): Buffer {
  if (id !== null && id.length !== BACKUP_ID_LEN) throw new RangeError('backup id must be 16 bytes');
  const p = Buffer.alloc(METADATA_LEN + (id === null ? 0 : BACKUP_ID_LEN));
  p.writeUInt32BE(m.protocol, 0);
  p.writeUInt32BE(m.version >>> 0, 4);
  p.writeUInt32BE(m.prevVersion >>> 0, 8);
  p.writeBigUInt64BE(BigInt(m.versionCount), 12);
  id?.copy(p, METADATA_LEN);
  return packet(PKT.METADATA, p);
}

export function parseMetadata(payload: Buffer): Metadata {
  return parseMetadataWithId(payload).meta;
}

/** METADATA as a clnvault server may answer it: 20 bytes, or 36 with the backup id (hex; null without). */
export function parseMetadataWithId(payload: Buffer): { meta: Metadata; id: string | null } {
  if (payload.length !== METADATA_LEN && payload.length !== METADATA_LEN + BACKUP_ID_LEN) {
    throw new ProtocolError(`METADATA of ${payload.length} bytes (expected ${METADATA_LEN}, or ${METADATA_LEN + BACKUP_ID_LEN} with a backup id)`);
  }
  const meta = {
    protocol: payload.readUInt32BE(0),
    version: payload.readUInt32BE(4),
    prevVersion: payload.readUInt32BE(8),
    versionCount: Number(payload.readBigUInt64BE(12)),
  };
  return { meta, id: payload.length > METADATA_LEN ? payload.subarray(METADATA_LEN).toString('hex') : null };
}

export function parseU32(type: number, payload: Buffer): number {
  if (payload.length !== 4) throw new ProtocolError(`${packetName(type)} of ${payload.length} bytes (expected 4)`);
  return payload.readUInt32BE(0);
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** The statements as the reference stores them: UTF-8, joined by NUL. Refuses what would not round-trip. */
export function encodeStatements(version: number, statements: readonly string[]): Buffer {
  for (let i = 0; i < statements.length; i++) {
    const s = statements[i]!;
    if (s.includes('\u0000')) {
      throw new ProtocolError(`statement ${i} of version ${version} contains a NUL character, which the protocol uses as the statement separator`);
    }
    if (LONE_SURROGATE.test(s)) {
      throw new ProtocolError(`statement ${i} of version ${version} contains an unpaired UTF-16 surrogate, which has no UTF-8 encoding`);
    }
  }
  return Buffer.from(statements.join('\u0000'), 'utf8');
}

export function changePacket(version: number, statements: readonly string[]): Buffer {
  return changePacketFromRaw(version, encodeStatements(version, statements));
}

/**
 * zlib options for a CHANGE of `len` raw bytes. Each CHANGE is its own zlib stream, so most of what
 * deflateSync costs on a ~1 KB batch is setting the stream up, not compressing: zeroing a 64 KiB hash
 * table, allocating a 256 KiB state and a 16 KiB output chunk. A window and hash no larger than the input
 * find the same matches (nothing lies further back than the input's start), and level 1 compresses a
 * db_write's batch about as well as the reference's level 6; together ~6 us less per db_write on the
 * hook's path (bench/README.md, "socket: hook latency", 2026-12-05).
 */
function changeDeflateOptions(len: number): ZlibOptions {
  // zlib's smallest window for deflate is 2^9
  const windowBits = Math.min(15, Math.max(9, Math.ceil(Math.log2(len + 1))));
  return {
    level: 1,
    windowBits,
    // 2^(memLevel+6) literals per block: the whole batch in one block, so one Huffman tree is built
    memLevel: Math.min(8, windowBits - 6),
    chunkSize: Math.min(16 << 10, Math.max(1024, len + 64)),
  };
}

/** `raw`: the NUL-joined UTF-8 statements (what the v1 format stores). */
export function changePacketFromRaw(version: number, raw: Buffer): Buffer {
  const z = deflateSync(raw, changeDeflateOptions(raw.length));
  const b = Buffer.allocUnsafe(HEADER_SIZE + 4 + z.length);
  b.writeUInt8(PKT.CHANGE, 0);
  b.writeUInt32BE(4 + z.length, 1);
  b.writeUInt32BE(version >>> 0, HEADER_SIZE);
  z.copy(b, HEADER_SIZE + 4);
  return b;
}

/**
 * Inflates a CHANGE payload to its raw NUL-joined statements. `maxRaw` bounds the inflated size: a few
 * KiB of zlib can claim gigabytes.
 */
export function inflateChange(payload: Buffer, maxRaw: number): { version: number; raw: Buffer } {
  if (payload.length < 4) throw new ProtocolError(`CHANGE of ${payload.length} bytes (needs at least a 4-byte version)`);
  const version = payload.readUInt32BE(0);
  let raw: Buffer;
  try {
    // an output chunk near the likely size (a batch inflates to a few times its zlib bytes) instead of 16 KiB
    raw = inflateSync(payload.subarray(4), { maxOutputLength: maxRaw, chunkSize: Math.min(16 << 10, Math.max(1024, 4 * payload.length)) });
  } catch (e) {
    throw new ProtocolError(`CHANGE version ${version}: the payload is not a zlib stream within ${maxRaw} bytes (${(e as Error).message})`);
  }
  return { version, raw };
}

export function splitStatements(raw: Buffer): string[] {
  const text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
  return text.split('\u0000');
}
