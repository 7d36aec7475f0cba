import { closeSync, openSync, readSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { CHUNK, RECORD_HEADER_LEN, RECORD_OVERHEAD, recordSeedOf } from '../backends/file/v2/codec.js';
import type { RawSource } from '../backends/file/v2.js';
import type { Conn } from '../backends/socket/conn.js';
import { packet, PKT, ProtocolError, u32Packet } from '../backends/socket/protocol.js';
import { checkRawHeader, errorPacket, helloResPacket, parseEncrypt, RAW_CHUNK, XPKT } from '../backends/socket/sealed.js';
import type { ServedBackup, Verdict } from './store.js';

/**
 * clnvault server's side of the sealed-record extension (src/backends/socket/sealed.ts): HELLO, ENCRYPT,
 * RECORD, RECORD_STREAM and RAW_RESTORE, for clnvault:// connections. The server never holds a key:
 * it checks framing, lengths, CRCs and the version rules from the records' plaintext headers, appends
 * them as they are (fdatasync before ACK) and serves the file's bytes back.
 */

export interface SealedContext {
  timeoutMs: number;
  maxRecordBytes: number;
  takeOver(conn: Conn, backup: ServedBackup): void;
  log(level: 'info' | 'warn', message: string): void;
  scratchPath(backup: ServedBackup): string;
}

export function isSealedPacket(type: number): boolean {
  return type >= XPKT.HELLO && type <= XPKT.COMPACT_STREAM;
}

const SMALL = 64;

export async function handleSealed(ctx: SealedContext, conn: Conn, backup: ServedBackup, type: number, length: number): Promise<void> {
  const t = ctx.timeoutMs;
  switch (type) {
    case XPKT.HELLO: {
      if (length > SMALL) throw new ProtocolError(`HELLO of ${length} bytes`);
      await conn.readExact(length, t, 'a HELLO');
      const res = await backup.exclusive(() => helloResPacket(backup.fileHeader(), backup.tailLink()));
      await conn.write(res, t);
      return;
    }
    case XPKT.ENCRYPT: {
      if (length > SMALL) throw new ProtocolError(`ENCRYPT of ${length} bytes`);
      const enc = parseEncrypt(await conn.readExact(length, t, 'an ENCRYPT'));
      ctx.takeOver(conn, backup);
      const r = await backup.exclusive(() => backup.encrypt(enc));
      if (!r.ok) {
        ctx.log('warn', `${conn.peer}: refused to encrypt the backup: ${r.why}`);
        await conn.write(errorPacket(`the server refused to make the backup an encrypted one: ${r.why}`), t);
        return;
      }
      ctx.log('info', `${conn.peer}: the backup is now encrypted (key fingerprint ${enc.fingerprint.toString('hex')})`);
      await conn.write(u32Packet(PKT.ACK, 0), t);
      return;
    }
    case XPKT.RECORD: {
      if (length > ctx.maxRecordBytes) throw new ProtocolError(`RECORD of ${length} bytes exceeds the limit of ${ctx.maxRecordBytes} (--max-change-bytes)`);
      if (length < RECORD_OVERHEAD) throw new ProtocolError(`RECORD of ${length} bytes`);
      const rec = await conn.readExact(length, t, 'a RECORD');
      const stored = length - RECORD_OVERHEAD;
      ctx.takeOver(conn, backup);
      // in memory, so checked whole and written in one write
      const v = await backup.exclusive(() => appendChecked(backup, rec.subarray(0, RECORD_HEADER_LEN), stored, rec));
      await answer(ctx, conn, v);
      // reserved space for the next records, while the node is not waiting on us
      if (v.ok) backup.topUp();
      return;
    }
    case XPKT.RECORD_STREAM:
      await receiveStream(ctx, conn, backup, length);
      return;
    case XPKT.COMPACT_STREAM:
      await receiveCompaction(ctx, conn, backup, length);
      return;
    case XPKT.RAW_RESTORE:
      if (length > SMALL) throw new ProtocolError(`RAW_RESTORE of ${length} bytes`);
      await conn.readExact(length, t, 'a RAW_RESTORE');
      await sendRaw(ctx, conn, backup);
      return;
    default:
      throw new ProtocolError(`unexpected packet type ${type}`);
  }
}

function malformed(backup: ServedBackup, why: string): Verdict {
  return { ok: false, version: backup.metadata().version, why, malformed: true };
}

function appendChecked(
  backup: ServedBackup,
  header: Buffer,
  stored: number,
  source: RawSource,
): Verdict {
  const fh = backup.fileHeader();
  if (fh === null) return malformed(backup, 'the backup is in format v1, which takes no sealed records');
  const h = checkRawHeader(header, recordSeedOf(fh));
  if (typeof h === 'string') return malformed(backup, h);
  if (h.length !== stored) return malformed(backup, `the record header states ${h.length} payload bytes, ${stored} came`);
  return backup.record(h, header, source);
}

async function answer(ctx: SealedContext, conn: Conn, v: Verdict): Promise<void> {
  if (v.ok) {
    await conn.write(u32Packet(PKT.ACK, v.version), ctx.timeoutMs);
    return;
  }
  ctx.log('warn', `${conn.peer}: refused a record: ${v.why}`);
  // a version rule keeps the reference's NACK (the node's reconnect logic knows it); anything else says why
  await conn.write(v.malformed ? errorPacket(`the server refused the record: ${v.why}`) : u32Packet(PKT.NACK, v.version), ctx.timeoutMs);
}

/** A streamed record's stored payload into the scratch file `tmp` (never in memory); returns its header, which comes last. */
async function spool(ctx: SealedContext, conn: Conn, tmp: string, stored: number, what: string): Promise<Buffer> {
  const t = ctx.timeoutMs;
  const fh = await open(tmp, 'wx', 0o600);
  try {
    let at = 0;
    await conn.readStream(stored, t, `a ${what} payload`, async (chunk) => {
      await fh.write(chunk, 0, chunk.length, at);
      at += chunk.length;
    });
  } finally {
    await fh.close();
  }
  return conn.readExact(RECORD_HEADER_LEN, t, `a ${what} header`);
}

/**
 * COMPACT_STREAM: an encrypted backup compacted by its node, which has the key (sealed-compact.ts): a
 * snapshot record streamed as RECORD_STREAM is, then checked without the key and made the whole backup.
 * Answered with COMPACT_RES (the reference's statistics) or ERROR (why not; the backup is unchanged).
 */
async function receiveCompaction(ctx: SealedContext, conn: Conn, backup: ServedBackup, length: number): Promise<void> {
  if (length < RECORD_HEADER_LEN) throw new ProtocolError(`COMPACT_STREAM of ${length} bytes`);
  const stored = length - RECORD_HEADER_LEN;
  const tmp = ctx.scratchPath(backup);
  try {
    const header = await spool(ctx, conn, tmp, stored, 'COMPACT_STREAM');
    ctx.takeOver(conn, backup);
    const r = await backup.exclusive(() => backup.rebaseSealed(header, tmp, stored, ctx.log));
    if (!r.ok) {
      ctx.log('warn', `${conn.peer}: refused to compact the encrypted backup: ${r.why}`);
      await conn.write(errorPacket(`the server refused the compaction: ${r.why}`), ctx.timeoutMs);
      return;
    }
    ctx.log('info', `${conn.peer}: compacted the encrypted backup with its node's snapshot: ${JSON.stringify(r.stats)}`);
    await conn.write(packet(PKT.COMPACT_RES, Buffer.from(JSON.stringify(r.stats), 'utf8')), ctx.timeoutMs);
    backup.topUp();
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** RECORD_STREAM: the stored payload into a scratch file (never in memory), its header, then the append from the scratch file. */
async function receiveStream(ctx: SealedContext, conn: Conn, backup: ServedBackup, length: number): Promise<void> {
  if (length < RECORD_HEADER_LEN) throw new ProtocolError(`RECORD_STREAM of ${length} bytes`);
  const stored = length - RECORD_HEADER_LEN;
  const tmp = ctx.scratchPath(backup);
  try {
    const header = await spool(ctx, conn, tmp, stored, 'RECORD_STREAM');
    ctx.takeOver(conn, backup);
    const v = await backup.exclusive(() => {
      const fd = openSync(tmp, 'r');
      try {
        const buf = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(1, stored)));
        return appendChecked(backup, header, stored, (put) => {
          for (let done = 0; done < stored; ) {
            const n = readSync(fd, buf, 0, Math.min(buf.length, stored - done), done);
            if (n <= 0) throw new Error(`the scratch file ${tmp} ended early`);
            put(buf.subarray(0, n));
            done += n;
          }
        });
      } finally {
        closeSync(fd);
      }
    });
    if (v.ok) ctx.log('info', `${conn.peer}: stored an encrypted record of version ${v.version} (${stored} bytes)`);
    await answer(ctx, conn, v);
  } finally {
    rmSync(tmp, { force: true });
  }
}

/**
 * RAW_RESTORE: the backup file's bytes as stored, up to the end of its data when the request arrived
 * (reserved zeros are not sent), in RAW_DATA packets. The node rebuilds the file and authenticates it;
 * the server cannot read it. A backup in several segment files is restored on the server instead.
 */
async function sendRaw(ctx: SealedContext, conn: Conn, backup: ServedBackup): Promise<void> {
  const t = ctx.timeoutMs;
  const ext = await backup.exclusive(() => (backup.fileHeader() === null ? null : backup.openRaw()));
  if (ext === null || ext.fd === null) {
    const why = ext === null ? 'the backup is in format v1' : `the backup spans ${ext.files} segment files`;
    await conn.write(errorPacket(`${why}: a raw restore serves one v2 file; restore on the server from its file: URL`), t);
    return;
  }
  const fd = ext.fd;
  try {
    const buf = Buffer.allocUnsafe(RAW_CHUNK);
    for (let done = 0; done < ext.bytes; ) {
      const n = readSync(fd, buf, 0, Math.min(RAW_CHUNK, ext.bytes - done), done);
      if (n <= 0) throw new ProtocolError(`the backup file ended at ${done} bytes of ${ext.bytes} (rewound meanwhile?)`);
      await conn.write(packet(XPKT.RAW_DATA, buf.subarray(0, n)), t);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  await conn.write(packet(PKT.DONE), t);
  ctx.log('info', `${conn.peer}: served a raw restore of ${ext.bytes} bytes`);
}
