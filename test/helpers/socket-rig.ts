import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { once } from 'node:events';
import { inflateSync } from 'node:zlib';
import { CLI } from './cli.js';
import { metadataPacket, packet, PKT, u32Packet } from '../../src/backends/socket/protocol.js';

/**
 * Real-TCP pieces for the socket: tests: `clnvault server` as a child process, a recording relay, a
 * SOCKS5 proxy (RFC 1928, CONNECT, no authentication) that resolves names itself, and a packet parser.
 */

export class ServerProc {
  readonly child: ChildProcessWithoutNullStreams;
  out = '';
  readonly ready: Promise<number>;

  /** `args`: replaces FILE_URL HOST:PORT (e.g. --dir DIR --listen HOST:PORT) */
  constructor(fileUrl: string, port = 0, extra: string[] = [], cwd?: string, host = '127.0.0.1', args?: string[]) {
    const addr = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
    this.child = spawn(process.execPath, [CLI, 'server', ...extra, ...(args ?? [fileUrl, addr])], { cwd, stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout.setEncoding('utf8');
    this.child.stderr.setEncoding('utf8');
    this.ready = new Promise((resolve, reject) => {
      const onData = (d: string): void => {
        this.out += d;
        const m = /serving .* on [^ ]+:(\d+)\n/.exec(this.out);
        if (m) resolve(Number(m[1]));
      };
      this.child.stdout.on('data', onData);
      this.child.stderr.on('data', (d: string) => (this.out += d));
      this.child.on('exit', (code) => reject(new Error(`clnvault server exited (${code}) before listening: ${this.out}`)));
    });
    servers.add(this);
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    await once(this.child, 'exit');
    servers.delete(this);
  }
}

const servers = new Set<ServerProc>();
export async function killAllServers(): Promise<void> {
  for (const s of [...servers]) await s.kill();
}

export async function startServer(fileUrl: string, port = 0, extra: string[] = [], cwd?: string, host?: string): Promise<{ proc: ServerProc; port: number }> {
  const proc = new ServerProc(fileUrl, port, extra, cwd, host);
  return { proc, port: await proc.ready };
}

export interface Packet {
  type: number;
  length: number;
  payload: Buffer;
}

/** Calls `handle` with each whole packet a test server's connection receives (errors of the connection ignored). */
export function onPackets(c: Socket, handle: (p: Packet) => void): void {
  let buf = Buffer.alloc(0);
  c.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    const { packets, rest } = parsePackets(buf);
    buf = buf.subarray(buf.length - rest);
    for (const p of packets) handle(p);
  });
  c.on('error', () => {});
}

/** Splits a byte stream into packets; `rest` is what does not form a whole packet. */
export function parsePackets(b: Buffer): { packets: Packet[]; rest: number } {
  const packets: Packet[] = [];
  let o = 0;
  while (o + 5 <= b.length) {
    const length = b.readUInt32BE(o + 1);
    if (o + 5 + length > b.length) break;
    packets.push({ type: b[o]!, length, payload: b.subarray(o + 5, o + 5 + length) });
    o += 5 + length;
  }
  return { packets, rest: b.length - o };
}

/** A CHANGE/SNAPSHOT's version and inflated body; other packets as they are. */
export function decoded(p: Packet): { type: number; version?: number; body: Buffer } {
  if ((p.type === 1 || p.type === 2) && p.payload.length >= 4) {
    return { type: p.type, version: p.payload.readUInt32BE(0), body: inflateSync(p.payload.subarray(4)) };
  }
  return { type: p.type, body: Buffer.from(p.payload) };
}

/** Forwards each connection to `target` and records each direction's bytes. */
export class Relay {
  private server: Server;
  readonly sessions: Array<{ c2s: Buffer[]; s2c: Buffer[] }> = [];
  port = 0;

  constructor(private readonly target: number) {
    this.server = createServer((c) => {
      const rec = { c2s: [] as Buffer[], s2c: [] as Buffer[] };
      this.sessions.push(rec);
      const s = connect(this.target, '127.0.0.1');
      c.on('data', (d: Buffer) => {
        rec.c2s.push(d);
        s.write(d);
      });
      s.on('data', (d: Buffer) => {
        rec.s2c.push(d);
        c.write(d);
      });
      c.on('close', () => s.destroy());
      s.on('close', () => c.destroy());
      c.on('error', () => {});
      s.on('error', () => {});
    });
  }

  async listen(): Promise<number> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as { port: number }).port;
    return this.port;
  }

  close(): void {
    this.server.close();
  }
}

/**
 * A SOCKS5 proxy: greeting (no authentication), CONNECT to an IPv4/IPv6 address or to a NAME that the
 * proxy resolves with its own table (standing in for Tor's .onion resolution: the client cannot
 * resolve these names, so a connection that works proves the name went to the proxy).
 */
export class Socks5Proxy {
  private server: Server;
  readonly requests: Array<{ atyp: number; host: string; port: number }> = [];
  port = 0;

  constructor(private readonly names: Record<string, string>) {
    this.server = createServer((c) => void this.handle(c).catch(() => c.destroy()));
  }

  private async handle(c: Socket): Promise<void> {
    const reader = byteReader(c);
    const g = await reader(2);
    if (g[0] !== 5) throw new Error('not socks5');
    const methods = await reader(g[1]!);
    if (!methods.includes(0)) {
      c.end(Buffer.from([5, 0xff]));
      return;
    }
    c.write(Buffer.from([5, 0]));
    const req = await reader(4);
    if (req[1] !== 1) {
      c.end(Buffer.from([5, 7, 0, 1, 0, 0, 0, 0, 0, 0]));
      return;
    }
    let host: string;
    if (req[3] === 1) host = [...(await reader(4))].join('.');
    else if (req[3] === 3) host = (await reader((await reader(1))[0]!)).toString('utf8');
    else if (req[3] === 4) {
      const b = await reader(16);
      host = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2).toString(16)).join(':');
    } else throw new Error('bad atyp');
    const port = (await reader(2)).readUInt16BE(0);
    this.requests.push({ atyp: req[3]!, host, port });
    const addr = req[3] === 3 ? this.names[host] : host;
    if (addr === undefined) {
      c.end(Buffer.from([5, 4, 0, 1, 0, 0, 0, 0, 0, 0]));
      return;
    }
    const up = connect(port, addr);
    up.once('error', () => c.end(Buffer.from([5, 5, 0, 1, 0, 0, 0, 0, 0, 0])));
    await once(up, 'connect');
    c.write(Buffer.from([5, 0, 0, 1, 127, 0, 0, 1, 0, 0]));
    const pending = reader.rest();
    if (pending.length > 0) up.write(pending);
    c.pipe(up);
    up.pipe(c);
    c.on('error', () => up.destroy());
    up.on('error', () => c.destroy());
  }

  async listen(): Promise<number> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    this.port = (this.server.address() as { port: number }).port;
    return this.port;
  }

  close(): void {
    this.server.close();
  }
}

function byteReader(c: Socket): ((n: number) => Promise<Buffer>) & { rest(): Buffer } {
  let buf = Buffer.alloc(0);
  let wake: (() => void) | null = null;
  const onData = (d: Buffer): void => {
    buf = Buffer.concat([buf, d]);
    wake?.();
  };
  c.on('data', onData);
  const read = async (n: number): Promise<Buffer> => {
    while (buf.length < n) await new Promise<void>((r) => (wake = r));
    const out = buf.subarray(0, n);
    buf = buf.subarray(n);
    return out;
  };
  return Object.assign(read, {
    rest(): Buffer {
      c.removeListener('data', onData);
      const r = buf;
      buf = Buffer.alloc(0);
      return r;
    },
  });
}

/** A raw protocol client for the server tests. */
export class RawClient {
  readonly socket: Socket;
  private buf = Buffer.alloc(0);
  private wake: (() => void) | null = null;
  closed = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake?.();
    });
    socket.on('error', () => {});
  }

  static async connect(port: number): Promise<RawClient> {
    const s = connect(port, '127.0.0.1');
    await once(s, 'connect');
    s.setNoDelay(true);
    return new RawClient(s);
  }

  send(b: Buffer): void {
    this.socket.write(b);
  }

  async packet(timeoutMs = 5000): Promise<Packet> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { packets } = parsePackets(this.buf);
      if (packets.length > 0) {
        const p = packets[0]!;
        this.buf = this.buf.subarray(5 + p.length);
        return p;
      }
      if (this.closed) throw new Error('connection closed');
      if (Date.now() > deadline) throw new Error('no packet in time');
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 50);
      });
    }
  }

  /** Resolves true once the server closed the connection, false after `timeoutMs`. */
  async closedWithin(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }

  close(): void {
    this.socket.destroy();
  }
}

/**
 * A minimal server of backup-cli server's shape over real TCP: METADATA to REQ_METADATA, ACK to CHANGE and
 * SNAPSHOT (`ackDelayMs` late), and with `compactTo` a COMPACT_RES (the reference's JSON statistics) to
 * COMPACT, after which it holds that many entries, as a compacted file does. Records the packet types it got.
 */
export async function referenceShapedServer(opts: { ackDelayMs?: number; compactTo?: number; oneConnectionAtATime?: boolean } = {}): Promise<{ server: Server; port: number; seen: number[] }> {
  let meta = { protocol: 1, version: 0, prevVersion: 0, versionCount: 0 };
  const seen: number[] = [];
  // oneConnectionAtATime: as backup-cli server (listen(1), one accept at a time): a second connection is
  // established but not read from until the first one closed
  let active: Socket | null = null;
  const queued: Socket[] = [];
  const next = (): void => {
    active = null;
    while (active === null && queued.length > 0) {
      const c = queued.shift()!;
      if (c.destroyed) continue;
      active = c;
      c.resume();
    }
  };
  const server = createServer((c) => {
    if (opts.oneConnectionAtATime) {
      c.on('close', () => {
        if (active === c) next();
      });
      if (active !== null) {
        c.pause();
        queued.push(c);
      } else active = c;
    }
    onPackets(c, (p) => {
      seen.push(p.type);
      if (p.type === PKT.REQ_METADATA) c.write(metadataPacket(meta));
      else if (p.type === PKT.CHANGE || p.type === PKT.SNAPSHOT) {
        const v = p.payload.readUInt32BE(0);
        meta = { protocol: 1, version: v, prevVersion: meta.version, versionCount: meta.versionCount + 1 };
        const ack = u32Packet(PKT.ACK, v);
        if (opts.ackDelayMs === undefined) c.write(ack);
        else setTimeout(() => c.write(ack), opts.ackDelayMs);
      } else if (p.type === PKT.COMPACT && opts.compactTo !== undefined) {
        const before = meta.versionCount;
        meta = { ...meta, versionCount: opts.compactTo };
        c.write(packet(PKT.COMPACT_RES, Buffer.from(JSON.stringify({ before: { version_count: before }, after: { version_count: opts.compactTo } }))));
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as { port: number }).port, seen };
}
