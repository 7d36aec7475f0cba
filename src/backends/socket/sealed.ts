import { createReadStream, statSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import {
  changePayloadLength,
  encodeChangePayloadAt,
  encodeFileHeader,
  encodeRecordHeader,
  FILE_FLAG_ENCRYPTED,
  FILE_HEADER_LEN,
  FLAG_ENCRYPTED,
  FLAG_PRAGMA_ONLY,
  isV2,
  parseRecordHeader,
  RECORD_HEADER_LEN,
  RECORD_OVERHEAD,
  recordSeedOf,
  TYPE_CHANGE,
  TYPE_SNAPSHOT,
  unsupportedReason,
  writeU64,
  type FileEncryption,
  type RecordHeader,
} from '../file/v2/codec.js';
import { encOverhead, LINK_LEN, prefixLen, type RecordCrypt } from '../../crypto/records.js';
import { isPragmaOnly } from '../../engine/versions.js';
import { RefusedError, type Conn } from './conn.js';
import { HEADER_SIZE, MAX_PAYLOAD, packet, packetName, ProtocolError } from './protocol.js';

/**
 * clnvault's own extension of the socket protocol (clnvault:// only, inside TLS-PSK; never sent to a
 * reference server): encrypted backups whose records the node seals itself, so the server stores and
 * serves them without the key (docs/remote.md, "Encrypted backups"; docs/encryption.md).
 *
 * A node that needs the extension starts with HELLO. A server that knows it answers HELLO_RES: its
 * protocol level, the backup's v2 file header (backup id, key kind and fingerprint, record CRC seed) and
 * the chain link of the newest record. An older clnvault server closes the connection at the unknown
 * packet type: the node reports that as a server too old for encrypted backups, never as a hang.
 *
 * - ENCRYPT (key kind, scrypt bytes, fingerprint: the file header's bytes 48..59): an empty backup becomes
 *   an encrypted one under that key description (init --encrypt); answered ACK or ERROR.
 * - RECORD: one whole v2 record (header, stored payload, trailer), sealed by the node under the file's
 *   record CRC seed; the server checks framing, lengths, CRCs and the version rules from the plaintext
 *   header, appends the bytes as they are, fdatasyncs, and answers ACK, or NACK/ERROR.
 * - RECORD_STREAM: a record too large for memory (snapshots): its stored payload streamed, then its
 *   32-byte header (whose payload CRC is known only at the end); the trailer is the server's.
 * - RAW_RESTORE: the backup file's bytes as stored (RAW_DATA packets of at most 1 MiB, then DONE), from
 *   which the node rebuilds the v2 file and authenticates it with its key.
 * - ERROR: a refusal with its reason (UTF-8), for the node's log.
 */

export const XPKT = {
  HELLO: 0x20,
  HELLO_RES: 0x21,
  ENCRYPT: 0x22,
  RECORD: 0x23,
  RECORD_STREAM: 0x24,
  RAW_RESTORE: 0x25,
  RAW_DATA: 0x26,
  ERROR: 0x27,
  /** an encrypted backup compacted by its node: a chain-start snapshot that becomes the whole backup (server/sealed-compact.ts) */
  COMPACT_STREAM: 0x28,
} as const;

/** the protocol level of a server that speaks the extension (the reference protocol is 1) */
export const SEALED_PROTOCOL = 2;
export const RAW_CHUNK = 1 << 20;
const HELLO_RES_LEN = 4 + 1 + FILE_HEADER_LEN + LINK_LEN;
/** a refusal's reason is a line, not a payload */
export const MAX_ERROR = 4096;

export interface Hello {
  protocol: number;
  /** the v2 file header of the node's backup; null when the server stores it in format v1 */
  header: Buffer | null;
  /** link of the newest record (zeros: none; for an encrypted backup only) */
  tailLink: Buffer;
}

export function helloPacket(): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(SEALED_PROTOCOL);
  return packet(XPKT.HELLO, p);
}

export function helloResPacket(header: Buffer | null, tailLink: Buffer | null): Buffer {
  const p = Buffer.alloc(HELLO_RES_LEN);
  p.writeUInt32BE(SEALED_PROTOCOL, 0);
  p[4] = header === null ? 1 : 2;
  header?.copy(p, 5);
  tailLink?.copy(p, 5 + FILE_HEADER_LEN);
  return packet(XPKT.HELLO_RES, p);
}

export function parseHelloRes(payload: Buffer): Hello {
  if (payload.length < HELLO_RES_LEN) throw new ProtocolError(`HELLO_RES of ${payload.length} bytes (expected ${HELLO_RES_LEN})`);
  const header = payload[4] === 2 ? Buffer.from(payload.subarray(5, 5 + FILE_HEADER_LEN)) : null;
  return { protocol: payload.readUInt32BE(0), header, tailLink: Buffer.from(payload.subarray(5 + FILE_HEADER_LEN, HELLO_RES_LEN)) };
}

/** What a served v2 file header says (its checksum verified): the ids, the key description, the record seed. */
export function parseServedHeader(h: Buffer): { backupId: Buffer; encryption: FileEncryption | null; seed: number } {
  if (h.length !== FILE_HEADER_LEN || !isV2(h) || crc32(h.subarray(0, 60)) !== h.readUInt32BE(60)) {
    throw new ProtocolError('the server sent a damaged v2 file header');
  }
  const enc = h.readUInt32BE(12) & FILE_FLAG_ENCRYPTED ? { kind: h[48]!, fingerprint: Buffer.from(h.subarray(52, 60)) } : null;
  return { backupId: Buffer.from(h.subarray(16, 32)), encryption: enc, seed: recordSeedOf(h) };
}

export function errorPacket(message: string): Buffer {
  return packet(XPKT.ERROR, Buffer.from(message.slice(0, MAX_ERROR / 4), 'utf8'));
}

/** The key description of a new encrypted backup: the file header's bytes 48..59. */
export function encryptPacket(enc: FileEncryption): Buffer {
  // exactly the bytes the new file header will hold
  return packet(XPKT.ENCRYPT, encodeFileHeader(Buffer.alloc(16), 0, enc).subarray(48, 60));
}

export function parseEncrypt(payload: Buffer): FileEncryption {
  if (payload.length !== 12) throw new ProtocolError(`ENCRYPT of ${payload.length} bytes (expected 12)`);
  const kind = payload[0]!;
  if (kind < 1 || kind > 3) throw new ProtocolError(`ENCRYPT with unknown key kind ${kind}`);
  const enc: FileEncryption = { kind, fingerprint: Buffer.from(payload.subarray(4, 12)) };
  if (payload[1] !== 0) enc.scrypt = { logN: payload[1]!, r: payload[2]!, p: payload[3]! };
  return enc;
}

/**
 * The server's check of a ready-made record's header (`seed`: its file's): a change or a whole snapshot
 * record of an encrypted backup (the packet's length bounds its size). The header, or why it is refused.
 */
export function checkRawHeader(header: Buffer, seed: number): RecordHeader | string {
  const h = parseRecordHeader(header, seed);
  if (typeof h === 'string') return `${h} (a record sealed for another backup, or damaged on the way)`;
  if (h.type !== TYPE_CHANGE && h.type !== TYPE_SNAPSHOT) return `record type ${h.type}: only changes and whole snapshots are sent`;
  const why = unsupportedReason(h, true);
  if (why !== null) return `the record uses ${why}`;
  if (h.type === TYPE_SNAPSHOT && h.keyId !== 0) return 'a snapshot in parts: only whole snapshot records are sent';
  if (h.length < encOverhead(h.type)) return `a stored payload of ${h.length} bytes is shorter than its encryption frame`;
  return h;
}

/** RECORD: an encrypted change record, built exactly as the v2 file writer builds one (the same construction). */
export function sealedChangePacket(crypt: RecordCrypt, seed: number, version: number, statements: readonly string[]): Buffer {
  const payloadLen = changePayloadLength(statements);
  const total = RECORD_OVERHEAD + payloadLen + encOverhead(TYPE_CHANGE);
  const buf = Buffer.allocUnsafe(HEADER_SIZE + total);
  buf[0] = XPKT.RECORD;
  buf.writeUInt32BE(total, 1);
  const rec = buf.subarray(HEADER_SIZE);
  encodeChangePayloadAt(rec, RECORD_HEADER_LEN + prefixLen(TYPE_CHANGE), statements, payloadLen);
  const flags = FLAG_ENCRYPTED | (isPragmaOnly(statements) ? FLAG_PRAGMA_ONLY : 0);
  const n = crypt.sealInPlace(rec, RECORD_HEADER_LEN, { type: TYPE_CHANGE, flags, version, parts: 0 }, payloadLen);
  encodeRecordHeader(rec, TYPE_CHANGE, version, n, crc32(rec.subarray(RECORD_HEADER_LEN, RECORD_HEADER_LEN + n)), 0, flags, seed);
  writeU64(rec, n, RECORD_HEADER_LEN + n);
  return buf;
}

/** HELLO on `conn`: the server's answer, or a refusal saying it is too old for the extension. */
export async function askHello(conn: Conn, timeoutMs: number): Promise<Hello> {
  await conn.write(helloPacket(), timeoutMs);
  let r: { type: number; payload: Buffer } | null;
  try {
    r = await conn.readPacket(timeoutMs, timeoutMs, 4096);
  } catch (e) {
    // an older server drops the connection at the unknown packet: a close or a reset, right after the handshake
    const code = (e as NodeJS.ErrnoException).code;
    if (!(e instanceof ProtocolError) && code !== 'ECONNRESET' && code !== 'EPIPE') throw e;
    r = null;
  }
  if (r === null) {
    throw new OldServerError(
      `${conn.peer}: the server closed the connection at HELLO: it is a clnvault server too old for encrypted backups ` +
        `(upgrade clnvault on the server), or the connection was cut at that moment (try again)`,
    );
  }
  if (r.type === XPKT.ERROR) throw new RefusedError(`${conn.peer}: ${r.payload.toString('utf8')}`);
  if (r.type !== XPKT.HELLO_RES) throw new RefusedError(`${conn.peer}: answered HELLO with ${packetName(r.type)}; is this a clnvault server?`);
  return parseHelloRes(r.payload);
}

/** The server closed the connection at HELLO: it predates the extension. */
export class OldServerError extends RefusedError {}

/** An ERROR packet's reason as a refusal, for the node's log. */
export function refusal(conn: Conn, payload: Buffer): RefusedError {
  return new RefusedError(`${conn.peer}: ${payload.subarray(0, MAX_ERROR).toString('utf8')}`);
}

/**
 * RECORD_STREAM: the SQLite file `path` as one encrypted snapshot record, streamed as it is encrypted (the
 * same construction as the v2 file writer's streamed snapshot: prefix, chunks, tag), then its header.
 * The record's link becomes the chain's once the caller has the ACK (crypt.committed()).
 */
export async function sendSealedSnapshot(conn: Conn, crypt: RecordCrypt, seed: number, version: number, path: string, timeoutMs: number, compaction = false): Promise<void> {
  const size = statSync(path).size;
  const stored = size + encOverhead(TYPE_SNAPSHOT);
  if (stored + RECORD_HEADER_LEN > MAX_PAYLOAD) {
    throw new RefusedError(`the snapshot of ${path} is ${size} bytes; an encrypted snapshot sent to a clnvault server may have at most 4 GiB`);
  }
  // compaction: a chain start (prev zeros) whose link is the newest record's, so that it can stand alone in
  // the server's new file and the next record still names that link (docs/encryption.md)
  const enc = crypt.stream({ type: TYPE_SNAPSHOT, flags: FLAG_ENCRYPTED, version, parts: 0 }, compaction ? { prev: Buffer.alloc(LINK_LEN), link: Buffer.from(crypt.link) } : {});
  const head = Buffer.allocUnsafe(HEADER_SIZE);
  head[0] = compaction ? XPKT.COMPACT_STREAM : XPKT.RECORD_STREAM;
  head.writeUInt32BE(stored + RECORD_HEADER_LEN, 1);
  await conn.write(Buffer.concat([head, enc.prefix]), timeoutMs);
  let crc = crc32(enc.prefix);
  let sent = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: RAW_CHUNK })) {
    const c = chunk as Buffer;
    if (sent + c.length > size) break;
    sent += c.length;
    const ct = enc.update(c);
    crc = crc32(ct, crc);
    await conn.write(ct, timeoutMs);
  }
  if (sent !== size) {
    // the peer now expects bytes we cannot send: this connection is unusable
    conn.close();
    throw new ProtocolError(`${path} changed while it was being sent (${sent} bytes instead of ${size})`);
  }
  const tag = enc.finish();
  crc = crc32(tag, crc);
  const header = Buffer.alloc(RECORD_HEADER_LEN);
  encodeRecordHeader(header, TYPE_SNAPSHOT, version, stored, crc, 0, FLAG_ENCRYPTED, seed);
  await conn.write(Buffer.concat([tag, header]), timeoutMs);
}
