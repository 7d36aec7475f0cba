import { open, type FileHandle } from 'node:fs/promises';
import { createInflate } from 'node:zlib';
import { writeV1Header, V1_ENTRY_HEADER_SIZE, V1_HEADER_SIZE } from '../file/v1.js';
import type { Conn } from './conn.js';
import { openConnection } from './connect.js';
import { inflateChange, MAX_PAYLOAD, packet, packetName, parseMetadata, PKT, ProtocolError, type Metadata } from './protocol.js';
import type { SocketUrl } from './url.js';
import { askHello, OldServerError, parseServedHeader, RAW_CHUNK, refusal, XPKT } from './sealed.js';
import { serialDiff } from '../../engine/versions.js';

/**
 * RESTORE: the server streams every entry (CHANGE/SNAPSHOT) and then DONE. The entries go, as they
 * arrive, into a local file in the reference's v1 format, which the ordinary file reader then serves to
 * restore/verify/inspect: memory stays bounded by one change, however large the backup. Nothing here is
 * durable on purpose: the file is a scratch copy, removed when the reader closes.
 */

/** a restore's CHANGE comes from our own server or the reference's: bounded, but generously (one db_write) */
const MAX_CHANGE_Z = 256 << 20;
const MAX_CHANGE_RAW = 1 << 30;
const READ_MS = 60_000;

export interface Downloaded {
  meta: Metadata | null;
  entries: number;
  bytes: number;
  /** dest holds the server's v2 file as stored (an encrypted backup), not a v1 scratch copy */
  raw: boolean;
}

export async function downloadBackup(u: SocketUrl, dest: string, connectMs: number): Promise<Downloaded> {
  // clnvault's own server holds an encrypted backup without its key: it can only hand over the file
  if (u.tls !== null) {
    const raw = await downloadSealed(u, dest, connectMs);
    if (raw !== null) return raw;
  }
  const conn = await openConnection(u, connectMs);
  const fh = await open(dest, 'wx', 0o600);
  try {
    return { ...(await receive(conn, fh)), raw: false };
  } finally {
    conn.close();
    await fh.close();
  }
}

/**
 * An encrypted backup on a clnvault server: its v2 file's bytes (RAW_RESTORE), which the caller reads
 * with the ordinary v2 reader and authenticates with its key. Null when the backup is not encrypted, or
 * the server predates the extension (it closes the connection at HELLO): the reference RESTORE serves it.
 */
async function downloadSealed(u: SocketUrl, dest: string, connectMs: number): Promise<Downloaded | null> {
  const conn = await openConnection(u, connectMs);
  try {
    let hello;
    try {
      hello = await askHello(conn, READ_MS);
    } catch (e) {
      if (e instanceof OldServerError) return null;
      throw e;
    }
    if (hello.header === null || parseServedHeader(hello.header).encryption === null) return null;
    await conn.write(packet(XPKT.RAW_RESTORE), READ_MS);
    const fh = await open(dest, 'wx', 0o600);
    let at = 0;
    try {
      for (;;) {
        const r = await conn.readPacket(READ_MS, READ_MS, RAW_CHUNK + 64);
        if (r === null) throw new ProtocolError(`${conn.peer}: connection closed in the middle of the restore (after ${at} bytes)`);
        if (r.type === PKT.DONE) break;
        if (r.type === XPKT.ERROR) throw refusal(conn, r.payload);
        if (r.type !== XPKT.RAW_DATA) throw new ProtocolError(`${conn.peer}: unexpected ${packetName(r.type)} in a raw restore`);
        await fh.write(r.payload, 0, r.payload.length, at);
        at += r.payload.length;
      }
    } finally {
      await fh.close();
    }
    return { meta: null, entries: 0, bytes: at, raw: true };
  } finally {
    conn.close();
  }
}

async function receive(conn: Conn, fh: FileHandle): Promise<Omit<Downloaded, 'raw'> & { meta: Metadata }> {
  await conn.write(packet(PKT.REQ_METADATA), READ_MS);
  const m = await conn.readPacket(READ_MS, READ_MS, 64);
  if (m !== null && m.type === XPKT.ERROR) throw refusal(conn, m.payload);
  if (m === null || m.type !== PKT.METADATA) throw new ProtocolError(`${conn.peer}: no METADATA (got ${m ? packetName(m.type) : 'end of stream'})`);
  const meta = parseMetadata(m.payload);
  await conn.write(packet(PKT.RESTORE), READ_MS);
  let at = V1_HEADER_SIZE;
  let entries = 0;
  let last: number | null = null;
  let prev = 0;
  let lastStart = 0;
  await fh.write(writeV1Header({ version: 0, offsets0: at, prevVersion: 0, offsets1: 0, versionCount: 0 }), 0, V1_HEADER_SIZE, 0);
  for (;;) {
    const h = await conn.readHeader(READ_MS, READ_MS);
    if (h === null) throw new ProtocolError(`${conn.peer}: connection closed in the middle of the restore (after ${entries} entries)`);
    if (h.type === PKT.DONE) {
      if (h.length !== 0) await conn.readExact(Math.min(h.length, 64), READ_MS, 'DONE');
      break;
    }
    let version: number;
    const entryHead = Buffer.alloc(V1_ENTRY_HEADER_SIZE);
    if (h.type === PKT.CHANGE) {
      if (h.length > MAX_CHANGE_Z) throw new ProtocolError(`${conn.peer}: CHANGE of ${h.length} bytes is larger than the limit of ${MAX_CHANGE_Z}`);
      const c = inflateChange(await conn.readExact(h.length, READ_MS, 'a CHANGE payload'), MAX_CHANGE_RAW);
      version = c.version;
      entryHead.writeUInt32BE(c.raw.length, 0);
      entryHead.writeUInt32BE(version, 4);
      entryHead.writeUInt8(1, 8);
      await fh.write(Buffer.concat([entryHead, c.raw]), 0, V1_ENTRY_HEADER_SIZE + c.raw.length, at);
      lastStart = at;
      at += V1_ENTRY_HEADER_SIZE + c.raw.length;
    } else if (h.type === PKT.SNAPSHOT) {
      if (h.length < 4) throw new ProtocolError(`${conn.peer}: SNAPSHOT of ${h.length} bytes`);
      version = (await conn.readExact(4, READ_MS, 'a SNAPSHOT version')).readUInt32BE(0);
      const bodyAt = at + V1_ENTRY_HEADER_SIZE;
      let size = 0;
      const inflate = createInflate();
      const writes: Promise<unknown>[] = [];
      const done = new Promise<void>((res, rej) => {
        inflate.on('data', (d: Buffer) => {
          if (size + d.length > MAX_PAYLOAD) {
            inflate.destroy(new ProtocolError(`snapshot version ${version} inflates to more than 4 GiB`));
            return;
          }
          writes.push(fh.write(d, 0, d.length, bodyAt + size));
          size += d.length;
        });
        inflate.on('end', res);
        inflate.on('error', (e) =>
          rej(e instanceof ProtocolError ? e : new ProtocolError(`${conn.peer}: the snapshot of version ${version} is not a valid zlib stream (${e.message})`)),
        );
      });
      // a stream that fails half-way must end the download at once: it would never 'drain' again
      done.catch(() => undefined);
      await conn.readStream(h.length - 4, READ_MS, 'a SNAPSHOT payload', async (chunk) => {
        if (!inflate.write(chunk)) await Promise.race([new Promise((r) => inflate.once('drain', r)), done]);
      });
      inflate.end();
      await done;
      await Promise.all(writes);
      entryHead.writeUInt32BE(size, 0);
      entryHead.writeUInt32BE(version, 4);
      entryHead.writeUInt8(2, 8);
      await fh.write(entryHead, 0, V1_ENTRY_HEADER_SIZE, at);
      lastStart = at;
      at = bodyAt + size;
    } else {
      throw new ProtocolError(`${conn.peer}: unknown entry type ${h.type} (${packetName(h.type)}) in the restore stream`);
    }
    prev = last ?? 0;
    last = version;
    entries++;
  }
  // DONE ends the stream explicitly; the check is the reference client's, loosened by one thing: a
  // clnvault server serves restores while a node writes, so entries stored between our REQ_METADATA and
  // the RESTORE come along (the backup only got newer)
  if (serialDiff(last ?? 0, meta.version) < 0 || (last === null && meta.version !== 0)) {
    throw new ProtocolError(`versions do not match up: restored version ${last ?? 0}, the server's backup version ${meta.version}`);
  }
  await fh.write(writeV1Header({ version: last ?? 0, offsets0: at, prevVersion: prev, offsets1: entries > 0 ? lastStart : 0, versionCount: entries }), 0, V1_HEADER_SIZE, 0);
  return { meta, entries, bytes: at };
}
