import { createReadStream } from 'node:fs';
import { createDeflate } from 'node:zlib';
import type { Conn } from './conn.js';
import { HEADER_SIZE, MAX_PAYLOAD, PKT, ProtocolError } from './protocol.js';

/**
 * Sends the SQLite file `path` as one SNAPSHOT packet without holding it in memory. The header states
 * the compressed length before any of it is sent, so the file is compressed twice: once to count, once
 * to send (zlib is deterministic for the same input and settings). Each chunk must be taken by the
 * peer within `timeoutMs`.
 */
export async function sendSnapshotFile(conn: Conn, version: number, path: string, timeoutMs: number): Promise<void> {
  const zlen = await deflatedLength(path);
  if (4 + zlen > MAX_PAYLOAD) throw new ProtocolError(`the compressed snapshot of ${path} is ${zlen} bytes; the protocol carries at most 4 GiB`);
  const head = Buffer.allocUnsafe(HEADER_SIZE + 4);
  head.writeUInt8(PKT.SNAPSHOT, 0);
  head.writeUInt32BE(4 + zlen, 1);
  head.writeUInt32BE(version >>> 0, HEADER_SIZE);
  await conn.write(head, timeoutMs);
  let sent = 0;
  for await (const chunk of createReadStream(path).pipe(createDeflate())) {
    const c = chunk as Buffer;
    if (sent + c.length > zlen) break;
    sent += c.length;
    await conn.write(c, timeoutMs);
  }
  if (sent !== zlen) {
    // the peer now expects bytes we cannot send: this connection is unusable
    conn.close();
    throw new ProtocolError(`${path} changed while it was being sent (${sent} compressed bytes instead of ${zlen})`);
  }
}

export async function deflatedLength(path: string): Promise<number> {
  let n = 0;
  for await (const chunk of createReadStream(path).pipe(createDeflate())) n += (chunk as Buffer).length;
  return n;
}
