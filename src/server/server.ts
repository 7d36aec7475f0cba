import { createWriteStream, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { PSK_TLS } from '../backends/socket/connect.js';
import type { NodeRegistry } from './nodes.js';
import { dirname, join } from 'node:path';
import { once } from 'node:events';
import { createInflate } from 'node:zlib';
import { isRemoteUrl, openReader, backupPath } from '../backends/open.js';
import { Conn } from '../backends/socket/conn.js';
import {
  changePacketFromRaw,
  inflateChange,
  metadataPacket,
  packet,
  packetName,
  PKT,
  ProtocolError,
  splitStatements,
  u32Packet,
  wantsId,
} from '../backends/socket/protocol.js';
import { sendSnapshotFile } from '../backends/socket/snapshot.js';
import { ServedBackup } from './store.js';
import { handleSealed, isSealedPacket, type SealedContext } from './sealed.js';
import { errorPacket } from '../backends/socket/sealed.js';
import { headersInBatches } from '../backends/walk.js';

/**
 * `clnvault server`: the reference's `backup-cli server` protocol over TCP, storing through clnvault's
 * file backend. Unlike the reference it serves many connections at once (restores while a node is
 * connected), acknowledges only what is fdatasynced, refuses version gaps and regressions, bounds what
 * each connection may make it hold, and drops a connection that misbehaves without touching the others.
 */

export interface ServerLimits {
  /** largest CHANGE frame accepted (compressed) */
  maxChangeBytes: number;
  /** largest inflated CHANGE (a small zlib stream can claim gigabytes) */
  maxChangeRawBytes: number;
  /** once a packet started, each further read must arrive within this */
  packetTimeoutMs: number;
  maxConnections: number;
}

export const DEFAULT_LIMITS: ServerLimits = {
  maxChangeBytes: 64 << 20,
  maxChangeRawBytes: 256 << 20,
  packetTimeoutMs: 30_000,
  maxConnections: 64,
};

/** ACK/NACK/METADATA/COMPACT_RES sent by a client are ignored, as the reference does; they are small */
const MAX_STRAY = 64 << 10;

export type Log = (level: 'debug' | 'info' | 'warn' | 'error', message: string) => void;

/** What a connection is served: one backup file, or (clnvault's own mode) the backup of the node its key names. */
export type Served = { kind: 'file'; backup: ServedBackup } | { kind: 'nodes'; registry: NodeRegistry };

export class BackupServer {
  private readonly server: Server;
  private readonly conns = new Set<Socket>();
  /** per backup, the connection that wrote last: one writer at a time */
  private readonly writers = new Map<ServedBackup, Conn>();
  /** the node each TLS connection proved it is (set during the handshake) */
  private readonly identities = new WeakMap<Socket, string>();
  private nextId = 1;
  private snapSeq = 0;

  constructor(
    readonly served: Served,
    private readonly log: Log,
    private readonly limits: ServerLimits = DEFAULT_LIMITS,
  ) {
    if (served.kind === 'file') {
      this.server = createServer((s) => this.accept(s));
    } else {
      const registry = served.registry;
      const tls = createTlsServer(
        {
          ...PSK_TLS,
          pskCallback: (socket, identity) => {
            this.identities.set(socket, identity);
            return registry.keyFor(identity);
          },
          handshakeTimeout: limits.packetTimeoutMs,
        },
        (s: TLSSocket) => this.accept(s),
      );
      // a failed handshake (wrong key, unknown node, garbage) concerns that connection only
      tls.on('tlsClientError', (e, s) => this.log('warn', `connection from ${s.remoteAddress}:${s.remotePort}: refused in the TLS handshake (${(e as NodeJS.ErrnoException).code ?? e.message})`));
      this.server = tls;
    }
    this.server.maxConnections = limits.maxConnections;
  }

  private backupOf(socket: Socket): ServedBackup {
    if (this.served.kind === 'file') return this.served.backup;
    const name = this.identities.get(socket);
    if (name === undefined) throw new ProtocolError('a TLS connection without a node identity');
    return this.served.registry.backup(name);
  }

  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    this.server.listen({ host, port, exclusive: true });
    await once(this.server, 'listening');
    const a = this.server.address();
    if (a === null || typeof a === 'string') throw new Error('the server has no TCP address');
    return { host: a.address, port: a.port };
  }

  async close(): Promise<void> {
    for (const s of this.conns) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
    if (this.served.kind === 'file') this.served.backup.close();
    else this.served.registry.closeAll();
  }

  private accept(socket: Socket): void {
    socket.setNoDelay(true);
    // a node that vanished without a FIN (power cut, NAT timeout) is found out eventually
    socket.setKeepAlive(true, 60_000);
    const node = this.identities.get(socket);
    const peer = `connection ${this.nextId++} from ${socket.remoteAddress}:${socket.remotePort}${node === undefined ? '' : ` (node ${node})`}`;
    this.conns.add(socket);
    const conn = new Conn(socket, peer);
    this.log('info', `${peer}: connected`);
    let backup: ServedBackup;
    try {
      backup = this.backupOf(socket);
    } catch (e) {
      this.log('error', `${peer}: cannot open its backup: ${(e as Error).message}`);
      this.conns.delete(socket);
      // clnvault's own clients read the reason (a reference client never connects through TLS)
      const why = errorPacket(`the server cannot open this node's backup: ${(e as Error).message}`);
      if (this.served.kind === 'nodes') void conn.write(why, this.limits.packetTimeoutMs).catch(() => undefined).finally(() => conn.close());
      else conn.close();
      return;
    }
    this.serve(conn, backup).then(
      () => this.log('info', `${peer}: closed`),
      (e: Error) => this.log(e instanceof ProtocolError ? 'warn' : 'error', `${peer}: dropped: ${e.message}`),
    ).finally(() => {
      this.conns.delete(socket);
      if (this.writers.get(backup) === conn) this.writers.delete(backup);
      conn.close();
    });
  }

  private async serve(conn: Conn, backup: ServedBackup): Promise<void> {
    const t = this.limits.packetTimeoutMs;
    for (;;) {
      const h = await conn.readHeader(null, t);
      if (h === null) return;
      switch (h.type) {
        case PKT.REQ_METADATA: {
          // a clnvault client may ask for the backup id (protocol.ts, META_WANT_ID); the reference sends no payload
          const ask = await this.skip(conn, h.length);
          await conn.write(metadataPacket(backup.metadata(), wantsId(ask) ? backup.backupId() : null), t);
          break;
        }
        case PKT.CHANGE: {
          if (h.length > this.limits.maxChangeBytes) {
            throw new ProtocolError(`CHANGE of ${h.length} bytes exceeds the limit of ${this.limits.maxChangeBytes} (--max-change-bytes)`);
          }
          const c = inflateChange(await conn.readExact(h.length, t, 'a CHANGE payload'), this.limits.maxChangeRawBytes);
          let statements: string[];
          try {
            statements = splitStatements(c.raw);
          } catch {
            throw new ProtocolError(`CHANGE version ${c.version}: the statements are not valid UTF-8`);
          }
          this.takeOver(conn, backup);
          const v = await backup.exclusive(() => backup.change(c.version, statements));
          await this.answer(conn, v, 'change');
          backup.topUp();
          break;
        }
        case PKT.SNAPSHOT:
          await this.receiveSnapshot(conn, backup, h.length);
          break;
        case PKT.REWIND: {
          if (h.length !== 4) throw new ProtocolError(`REWIND of ${h.length} bytes (expected 4)`);
          const target = (await conn.readExact(4, t, 'a REWIND payload')).readUInt32BE(0);
          this.takeOver(conn, backup);
          const v = await backup.exclusive(() => backup.rewind(target));
          if (v.ok) this.log('info', `${conn.peer}: rewound the uncommitted head; the backup is at version ${v.version}`);
          await this.answer(conn, v, 'rewind');
          break;
        }
        case PKT.RESTORE:
          await this.skip(conn, h.length);
          await this.sendRestore(conn, backup);
          break;
        case PKT.COMPACT: {
          await this.skip(conn, h.length);
          this.log('info', `${conn.peer}: asked for compaction of ${backup.url}`);
          // online: this connection waits for the answer, the backup's writes (on other connections) go on
          const r = await backup.compact((level, message) => this.log(level, message));
          if (r.ok) {
            this.log('info', `${conn.peer}: compaction done: ${JSON.stringify(r.stats)}`);
            await conn.write(packet(PKT.COMPACT_RES, Buffer.from(JSON.stringify(r.stats), 'utf8')), t);
          } else {
            // the reference closes the connection on a failed compaction; a NACK keeps it, and clnvault's own
            // clients are told why
            this.log('warn', `${conn.peer}: compaction refused: ${r.why}`);
            await conn.write(this.served.kind === 'nodes' ? errorPacket(`the server refused the compaction: ${r.why}`) : u32Packet(PKT.NACK, backup.metadata().version), t);
          }
          backup.topUp();
          break;
        }
        case PKT.ACK:
        case PKT.NACK:
        case PKT.METADATA:
        case PKT.COMPACT_RES:
          await this.skip(conn, h.length);
          break;
        default:
          // clnvault's own extension (encrypted records) exists in clnvault's own mode only
          if (this.served.kind === 'nodes' && isSealedPacket(h.type)) {
            await handleSealed(this.sealedContext, conn, backup, h.type, h.length);
            break;
          }
          throw new ProtocolError(`unknown or unexpected packet type ${h.type}`);
      }
    }
  }

  private get sealedContext(): SealedContext {
    return {
      timeoutMs: this.limits.packetTimeoutMs,
      maxRecordBytes: this.limits.maxChangeBytes,
      takeOver: (conn, backup) => this.takeOver(conn, backup),
      log: (level, message) => this.log(level, message),
      scratchPath: (backup) => this.scratchPath(backup),
    };
  }

  /** Consumes a payload (returned: a REQ_METADATA's may ask for the backup id), refusing one that is too large to be honest. */
  private async skip(conn: Conn, n: number): Promise<Buffer> {
    if (n > MAX_STRAY) throw new ProtocolError(`a ${n}-byte payload where at most a few bytes belong`);
    return n > 0 ? conn.readExact(n, this.limits.packetTimeoutMs, 'a payload') : Buffer.alloc(0);
  }

  /** The newest connection to write becomes the writer; an older one still open is presumed dead and closed. */
  private takeOver(conn: Conn, backup: ServedBackup): void {
    const prev = this.writers.get(backup);
    if (prev !== undefined && prev !== conn) {
      this.log('warn', `${conn.peer} writes to the backup: closing the previous writer's ${prev.peer} (one writer at a time)`);
      prev.close();
    }
    this.writers.set(backup, conn);
  }

  private async answer(conn: Conn, v: { ok: boolean; version: number; why?: string; malformed?: boolean }, what: string): Promise<void> {
    if (!v.ok) this.log('warn', `${conn.peer}: NACK to ${what}: ${v.why}`);
    // a refusal that is not a version rule: clnvault's own clients are told why (the reference has only NACK)
    if (!v.ok && v.malformed && this.served.kind === 'nodes') {
      await conn.write(errorPacket(`the server refused the ${what}: ${v.why}`), this.limits.packetTimeoutMs);
      return;
    }
    await conn.write(u32Packet(v.ok ? PKT.ACK : PKT.NACK, v.version), this.limits.packetTimeoutMs);
  }

  private scratchPath(backup: ServedBackup): string {
    const url = backup.url;
    const dir = isRemoteUrl(url) ? backup.cwd : dirname(backupPath(url, backup.cwd));
    return join(dir, `.clnvault-server-snapshot-${process.pid}-${this.snapSeq++}.sqlite3`);
  }

  /** Streams the snapshot through zlib into a scratch file beside the backup, never holding it in memory. */
  private async receiveSnapshot(conn: Conn, backup: ServedBackup, length: number): Promise<void> {
    const t = this.limits.packetTimeoutMs;
    if (length < 4) throw new ProtocolError(`SNAPSHOT of ${length} bytes`);
    const version = (await conn.readExact(4, t, 'a SNAPSHOT version')).readUInt32BE(0);
    const tmp = this.scratchPath(backup);
    const out = createWriteStream(tmp, { flags: 'wx', mode: 0o600 });
    const inflate = createInflate();
    inflate.pipe(out);
    const finished = once(out, 'finish');
    const failed = new Promise<never>((_, rej) => {
      inflate.once('error', (e) => rej(new ProtocolError(`SNAPSHOT version ${version}: not a zlib stream (${e.message})`)));
      out.once('error', rej);
    });
    failed.catch(() => undefined);
    try {
      await Promise.race([
        conn.readStream(length - 4, t, 'a SNAPSHOT payload', async (chunk) => {
          if (!inflate.write(chunk)) await Promise.race([once(inflate, 'drain'), failed]);
        }),
        failed,
      ]);
      inflate.end();
      await Promise.race([finished, failed]);
    } catch (e) {
      inflate.destroy();
      out.destroy();
      rmSync(tmp, { force: true });
      throw e;
    }
    this.takeOver(conn, backup);
    let v;
    try {
      v = await backup.exclusive(() => backup.snapshot(version, tmp));
    } finally {
      rmSync(tmp, { force: true });
    }
    if (v.ok) this.log('info', `${conn.peer}: stored a snapshot of version ${version}`);
    await this.answer(conn, v, 'snapshot');
    backup.topUp();
  }

  /**
   * Streams every entry as the reference does (CHANGE/SNAPSHOT, then DONE), from a reader of its own, so
   * a node may keep writing meanwhile. Back-pressure: each packet waits until the socket took it.
   */
  private async sendRestore(conn: Conn, backup: ServedBackup): Promise<void> {
    const t = this.limits.packetTimeoutMs;
    const reader = openReader(backup.url, backup.cwd);
    let n = 0;
    try {
      for (const h of headersInBatches(reader)) {
        const e = reader.read(h);
        if (e.kind === 'change') {
          await conn.write(changePacketFromRaw(e.version, Buffer.from(e.statements.join('\u0000'), 'utf8')), t);
        } else {
          const tmp = this.scratchPath(backup);
          try {
            e.writeTo(tmp);
            await sendSnapshotFile(conn, e.version, tmp, t);
          } finally {
            rmSync(tmp, { force: true });
          }
        }
        n++;
      }
    } finally {
      reader.close();
    }
    await conn.write(packet(PKT.DONE), t);
    this.log('info', `${conn.peer}: served a restore of ${n} entries`);
  }
}


export { packetName };
