import { createRequire } from 'node:module';

/**
 * node:net, loaded only when a socket URL is parsed: this module is in the plugin's bundle, and most
 * plugins back up to a file (start-up time is paid on every lightningd boot).
 */
function isIP(host: string): number {
  return (createRequire(import.meta.url)('node:net') as typeof import('node:net')).isIP(host);
}
import { isAbsolute, resolve } from 'node:path';
import { UrlError } from '../url.js';

/**
 * `socket:HOST:PORT[?proxy=socks5:PHOST:PPORT]`, parsed as the reference plugin parses it (no `//`;
 * `[v6]` in brackets; only `proxy=socks5:` in the query), so every backup.lock written for the
 * reference keeps working. Where the reference accepted nonsense (port 99999, -1) this refuses it with
 * a message, since such a URL can never connect.
 */

export interface HostPort {
  host: string;
  port: number;
  /** how the host was written: a literal address is connected to as is, a name is resolved */
  kind: 'ipv4' | 'ipv6' | 'name';
}

export interface SocketUrl {
  url: string;
  target: HostPort;
  /** SOCKS5 proxy; the target name is then resolved by the proxy (remote DNS, so .onion names work) */
  proxy: HostPort | null;
  /** clnvault: URLs: TLS with this node's pre-shared key (RFC 4279), which authenticates both ends */
  tls: { node: string; keyFile: string } | null;
}

/** A node name: what the server's allow-list holds and its directory is called. */
export const NODE_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
export const DEFAULT_KEY_FILE = 'clnvault-remote.key';

/** `allowAnyPort`: a server may listen on port 0 (the system picks one, and the server logs it). */
export function parseHostPort(s: string, what: string, allowAnyPort = false): HostPort {
  let host: string;
  let rest: string;
  let kind: HostPort['kind'];
  if (s.startsWith('[')) {
    const close = s.indexOf(']');
    if (close < 0) throw new UrlError(`${what}: unterminated bracketed host address in ${JSON.stringify(s)}`);
    host = s.slice(1, close);
    if (isIP(host) !== 6) throw new UrlError(`${what}: ${JSON.stringify(host)} in brackets is not an IPv6 address`);
    rest = s.slice(close + 1);
    if (!rest.startsWith(':')) throw new UrlError(`${what}: port number missing in ${JSON.stringify(s)} (write [ADDRESS]:PORT)`);
    rest = rest.slice(1);
    kind = 'ipv6';
  } else {
    const colon = s.indexOf(':');
    if (colon < 0) throw new UrlError(`${what}: port number missing in ${JSON.stringify(s)} (write HOST:PORT)`);
    host = s.slice(0, colon);
    rest = s.slice(colon + 1);
    if (host.length === 0 || rest.includes(':')) {
      throw new UrlError(`${what}: ${JSON.stringify(s)} is not HOST:PORT; write an IPv6 address in brackets, e.g. [::1]:8700`);
    }
    kind = isIP(host) === 4 ? 'ipv4' : 'name';
  }
  if (!/^[0-9]{1,5}$/.test(rest) || Number(rest) < (allowAnyPort ? 0 : 1) || Number(rest) > 65535) {
    throw new UrlError(`${what}: invalid port number ${JSON.stringify(rest)} in ${JSON.stringify(s)} (1 to 65535)`);
  }
  return { host, port: Number(rest), kind };
}

/**
 * Also `clnvault://NODE@HOST:PORT[?keyfile=PATH][&proxy=socks5:PHOST:PPORT]`: clnvault's own mode, the same
 * packets inside TLS-PSK. The key file (64 hex digits, mode 0600) defaults to clnvault-remote.key; a
 * relative path resolves against `cwd` (the network directory for the plugin). The key is never in the
 * URL, so the URL can appear in logs.
 */
export function parseSocketUrl(url: string, cwd: string = process.cwd()): SocketUrl {
  const colon = url.indexOf(':');
  const scheme = colon < 0 ? '' : url.slice(0, colon).toLowerCase();
  if (scheme !== 'socket' && scheme !== 'clnvault') throw new UrlError(`${JSON.stringify(url)} is not a socket: or clnvault: URL`);
  let rest = url.slice(colon + 1);
  let node: string | null = null;
  if (scheme === 'clnvault') {
    if (!rest.startsWith('//')) throw new UrlError(`${url}: write clnvault://NODE@HOST:PORT`);
    rest = rest.slice(2);
    const at = rest.indexOf('@');
    if (at < 0) throw new UrlError(`${url}: the node name is missing: write clnvault://NODE@HOST:PORT (NODE as given to 'clnvault server add-node')`);
    node = rest.slice(0, at);
    if (!NODE_NAME.test(node)) throw new UrlError(`${url}: ${JSON.stringify(node)} is not a node name (letters, digits, _ . -; at most 64)`);
    rest = rest.slice(at + 1);
  }
  const hash = rest.indexOf('#');
  if (hash >= 0) rest = rest.slice(0, hash);
  let query = '';
  const q = rest.indexOf('?');
  if (q >= 0) {
    query = rest.slice(q + 1);
    rest = rest.slice(0, q);
  }
  if (scheme === 'socket' && rest.startsWith('//')) {
    throw new UrlError(`${JSON.stringify(url)}: a socket URL has no '//': write socket:HOST:PORT, e.g. socket:127.0.0.1:8700`);
  }
  const target = parseHostPort(rest, url);
  let proxy: HostPort | null = null;
  let keyFile: string | null = null;
  const seen = new Set<string>();
  for (const part of query.split('&')) {
    if (part.length === 0) continue;
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? '' : part.slice(eq + 1);
    if (value.length === 0) continue; // parse_qs drops blank values: `?proxy=` means no proxy
    if (seen.has(key)) throw new UrlError(`${url}: ${key} can only have one value`);
    seen.add(key);
    if (key === 'keyfile' && node !== null) {
      keyFile = value;
      continue;
    }
    if (key !== 'proxy') {
      throw new UrlError(`${url}: unknown query string parameter ${JSON.stringify(key)} (only proxy=socks5:HOST:PORT${node === null ? '' : ' and keyfile=PATH'})`);
    }
    const c = value.indexOf(':');
    const type = c < 0 ? value : value.slice(0, c);
    if (type.toLowerCase() !== 'socks5' || c < 0) {
      throw new UrlError(`${url}: unknown proxy type ${JSON.stringify(type)}; only socks5:HOST:PORT is supported`);
    }
    proxy = parseHostPort(value.slice(c + 1), `${url} (proxy)`);
  }
  const kf = keyFile ?? DEFAULT_KEY_FILE;
  return { url, target, proxy, tls: node === null ? null : { node, keyFile: isAbsolute(kf) ? kf : resolve(cwd, kf) } };
}

export function formatHostPort(h: { host: string; port: number }): string {
  return isIP(h.host) === 6 ? `[${h.host}]:${h.port}` : `${h.host}:${h.port}`;
}
