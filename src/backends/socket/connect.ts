import { readFileSync, statSync } from 'node:fs';
import { connect as netConnect, isIP, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { Conn, RefusedError, TimeoutError } from './conn.js';
import { formatHostPort, type HostPort, type SocketUrl } from './url.js';

/**
 * Opens a TCP connection to a socket: URL's server, directly or through a SOCKS5 proxy (RFC 1928,
 * no authentication, CONNECT only). Through the proxy the host name is sent as a name (ATYP 3) and
 * resolved by the proxy, which is what makes .onion names work through Tor. Direct names resolve to
 * IPv4 or IPv6 (Node tries both families), unlike the reference which assumed IPv4.
 */

export async function openConnection(u: SocketUrl, timeoutMs: number): Promise<Conn> {
  // the node key first: a missing or unsafe key file is a local mistake, not worth waiting out remote_timeout for
  let key: Buffer | null = null;
  if (u.tls !== null) {
    try {
      key = readNodeKey(u.tls.keyFile);
    } catch (e) {
      throw new KeyError((e as Error).message);
    }
  }
  const first = u.proxy ?? u.target;
  const socket = await tcpConnect(first, timeoutMs);
  const conn = new Conn(socket, u.proxy ? `${formatHostPort(u.target)} via SOCKS5 proxy ${formatHostPort(u.proxy)}` : formatHostPort(u.target));
  if (u.proxy) {
    try {
      await socks5Connect(conn, u.target, timeoutMs);
    } catch (e) {
      conn.close();
      throw e;
    }
  }
  if (u.tls === null || key === null) return conn;
  const tls = await pskHandshake(conn.detach(), u.tls.node, key, timeoutMs, conn.peer);
  return new Conn(tls, conn.peer);
}

/** A missing or unsafe key file is not a network blip: retrying cannot help. */
export class KeyError extends RefusedError {}

/**
 * clnvault's own mode: TLS 1.2 with a pre-shared key per node (RFC 4279) and ephemeral ECDH (forward
 * secrecy). Only a server that holds this node's key completes the handshake, and only a node that holds
 * it is let in: both ends are authenticated, with no certificates to manage. Node's TLS supports PSK
 * only up to TLS 1.2.
 */
export const PSK_TLS = { ciphers: 'ECDHE-PSK-CHACHA20-POLY1305:ECDHE-PSK-AES256-CBC-SHA384', minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' } as const;

function pskHandshake(socket: Socket, node: string, key: Buffer, timeoutMs: number, peer: string): Promise<Socket> {
  return new Promise((res, rej) => {
    const t = tlsConnect({
      socket,
      ...PSK_TLS,
      // the key authenticates the server; there is no certificate, hence no host name to check
      checkServerIdentity: () => undefined,
      pskCallback: () => ({ psk: key, identity: node }),
    });
    const timer = setTimeout(() => {
      t.destroy();
      rej(new Error(`${peer}: no TLS handshake within ${timeoutMs} ms`));
    }, timeoutMs);
    t.once('secureConnect', () => {
      clearTimeout(timer);
      t.removeListener('error', onErr);
      t.setNoDelay(true);
      res(t);
    });
    const onErr = (e: Error): void => {
      clearTimeout(timer);
      t.destroy();
      const code = (e as NodeJS.ErrnoException).code ?? '';
      // a reset or timeout in the middle of the handshake is a network blip, to be retried
      if (!code.startsWith('ERR_SSL_')) {
        rej(new Error(`${peer}: connection lost during the TLS handshake (${code || e.message})`));
        return;
      }
      // a wrong key and a server that is not ours fail the same way: the handshake's MAC does not verify
      rej(
        new KeyError(
          `${peer}: the server did not prove it holds node ${node}'s key (${(e as NodeJS.ErrnoException).code ?? e.message}): ` +
            `either the key file is not the one 'clnvault server add-node' printed for ${node}, or this is not your server`,
        ),
      );
    };
    t.once('error', onErr);
  });
}

/** 64 hex digits; refused when others can read it, as ssh refuses such a private key. */
export function readNodeKey(path: string): Buffer {
  let text: string;
  try {
    const st = statSync(path);
    if ((st.mode & 0o077) !== 0) {
      throw new Error(`${path} is readable by other users (mode ${(st.mode & 0o777).toString(8)}); run 'chmod 600 ${path}'`);
    }
    text = readFileSync(path, 'utf8').trim();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new Error(`the node key file ${path} does not exist: write the key 'clnvault server add-node' printed into it (mode 600)`);
    throw e;
  }
  if (!/^[0-9a-f]{64}$/i.test(text)) throw new Error(`${path} does not hold a node key (64 hex digits, as printed by 'clnvault server add-node')`);
  return Buffer.from(text, 'hex');
}

function tcpConnect(h: HostPort, timeoutMs: number): Promise<Socket> {
  return new Promise((res, rej) => {
    const s = netConnect({ host: h.host, port: h.port, autoSelectFamily: isIP(h.host) === 0, noDelay: true });
    const t = setTimeout(() => {
      s.destroy();
      rej(new TimeoutError(`could not connect to ${formatHostPort(h)} within ${timeoutMs} ms`));
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(t);
      s.removeListener('error', onErr);
      // every packet is one write and waits for its answer: Nagle would only add delay
      s.setNoDelay(true);
      s.setKeepAlive(true, 30_000);
      res(s);
    });
    const onErr = (e: Error): void => {
      clearTimeout(t);
      rej(new Error(`could not connect to ${formatHostPort(h)}: ${e.message}`));
    };
    s.once('error', onErr);
  });
}

const SOCKS_REPLY: Record<number, string> = {
  1: 'general SOCKS server failure',
  2: 'connection not allowed by ruleset',
  3: 'network unreachable',
  4: 'host unreachable',
  5: 'connection refused',
  6: 'TTL expired',
  7: 'command not supported',
  8: 'address type not supported',
};

async function socks5Connect(conn: Conn, target: HostPort, timeoutMs: number): Promise<void> {
  const proxy = conn.peer;
  // greeting: version 5, one method, "no authentication"
  await conn.write(Buffer.from([5, 1, 0]), timeoutMs);
  const choice = await conn.readExact(2, timeoutMs, 'the SOCKS5 method choice');
  if (choice[0] !== 5) throw new Error(`${proxy}: not a SOCKS5 proxy (answered version ${choice[0]})`);
  if (choice[1] !== 0) throw new Error(`${proxy}: the proxy requires authentication (method ${choice[1]}); clnvault supports only proxies without it, like Tor's SocksPort`);
  let addr: Buffer;
  if (target.kind === 'ipv4') {
    addr = Buffer.from([1, ...target.host.split('.').map(Number)]);
  } else if (target.kind === 'ipv6') {
    addr = Buffer.concat([Buffer.from([4]), ipv6Bytes(target.host)]);
  } else {
    const name = Buffer.from(target.host, 'utf8');
    if (name.length > 255) throw new Error(`host name ${target.host} is longer than SOCKS5 allows (255 bytes)`);
    addr = Buffer.concat([Buffer.from([3, name.length]), name]);
  }
  const port = Buffer.alloc(2);
  port.writeUInt16BE(target.port);
  await conn.write(Buffer.concat([Buffer.from([5, 1, 0]), addr, port]), timeoutMs);
  const rep = await conn.readExact(4, timeoutMs, 'the SOCKS5 reply');
  if (rep[0] !== 5) throw new Error(`${proxy}: malformed SOCKS5 reply (version ${rep[0]})`);
  if (rep[1] !== 0) throw new Error(`${proxy}: the proxy could not connect: ${SOCKS_REPLY[rep[1]!] ?? `error ${rep[1]}`}`);
  // the bound address that follows is of no use to us, but must be consumed
  const atyp = rep[3];
  let rest: number;
  if (atyp === 1) rest = 4 + 2;
  else if (atyp === 4) rest = 16 + 2;
  else if (atyp === 3) rest = (await conn.readExact(1, timeoutMs, 'the SOCKS5 reply'))[0]! + 2;
  else throw new Error(`${proxy}: malformed SOCKS5 reply (address type ${atyp})`);
  await conn.readExact(rest, timeoutMs, 'the SOCKS5 reply');
}

function ipv6Bytes(s: string): Buffer {
  // expand "::" and an embedded IPv4 tail into 8 groups
  let head = s;
  const tail: number[] = [];
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4) {
    const p = v4[1]!.split('.').map(Number);
    tail.push((p[0]! << 8) | p[1]!, (p[2]! << 8) | p[3]!);
    head = s.slice(0, s.length - v4[1]!.length);
    if (head.endsWith(':') && !head.endsWith('::')) head = head.slice(0, -1);
  }
  const [l, r] = head.includes('::') ? head.split('::') : [head, undefined];
  const left = l ? l.split(':').filter((x) => x !== '').map((x) => parseInt(x, 16)) : [];
  const right = r ? r.split(':').filter((x) => x !== '').map((x) => parseInt(x, 16)) : [];
  const groups = r === undefined ? [...left, ...tail] : [...left, ...new Array(8 - left.length - right.length - tail.length).fill(0), ...right, ...tail];
  const b = Buffer.alloc(16);
  groups.forEach((g, i) => b.writeUInt16BE(g, i * 2));
  return b;
}
