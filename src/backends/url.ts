import { isAbsolute, resolve } from 'node:path';

/**
 * Backup URLs, parsed the way the reference plugin does (Python urlparse, only the path is used) so that
 * every backup.lock written for the reference keeps working:
 *   file:///abs/path.bkp    absolute
 *   file:relative.bkp       relative to the working directory (the network dir, for the plugin)
 *   FILE:...                the scheme is case-insensitive
 *   /abs/path.bkp, rel.bkp  a plain path (no scheme): what the CLI's own messages print, so accepted too
 * Query and fragment are dropped; percent-escapes are not decoded (the reference does not either).
 *
 * One departure from urlparse: a host other than empty or `localhost` is refused. The reference drops
 * it, so `file://mnt/x.bkp` silently wrote /x.bkp on the root disk, not on the backup disk at /mnt.
 */
export type BackupUrl =
  | { scheme: 'file'; url: string; path: string }
  | { scheme: 'socket'; url: string }
  | { scheme: 'postgresql'; url: string };

export class UrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UrlError';
  }
}

export function parseBackupUrl(url: string, cwd: string): BackupUrl {
  if (typeof url !== 'string' || url.length === 0) throw new UrlError('the backup URL is empty');
  if (/[\0\r\n]/.test(url)) throw new UrlError(`the backup URL ${JSON.stringify(url)} contains control characters`);
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(url);
  if (!m) return { scheme: 'file', url, path: resolve(cwd, url) };
  const colon = m[1]!.length;
  const scheme = m[1]!.toLowerCase();
  if (scheme === 'file') return { scheme: 'file', url, path: filePath(url, url.slice(colon + 1), cwd) };
  // clnvault://NAME@HOST:PORT is the same protocol inside TLS with a per-node key: the socket destination's too
  if (scheme === 'socket' || scheme === 'clnvault') return { scheme: 'socket', url };
  if (scheme === 'postgresql' || scheme === 'postgres') return { scheme: 'postgresql', url };
  throw new UrlError(
    `no backend for ${JSON.stringify(url)}: give a file: URL (e.g. file:///mnt/backup/clnvault.bkp), socket:HOST:PORT or clnvault://NODE@HOST:PORT (docs/remote.md), a postgresql: URL ` +
      `(postgresql://user@host/dbname?backup=NAME) or a plain path` +
      (url.slice(colon + 1).startsWith('//') ? '' : ` (for a file whose name holds a colon, write ./${url})`),
  );
}

function filePath(url: string, rest: string, cwd: string): string {
  let s = rest;
  const hash = s.indexOf('#');
  if (hash >= 0) s = s.slice(0, hash);
  const q = s.indexOf('?');
  if (q >= 0) s = s.slice(0, q);
  if (s.startsWith('//')) {
    // urlparse puts everything up to the next '/' into the netloc; the reference ignores it, which turned
    // a missing third slash into a file on another disk.
    const slash = s.indexOf('/', 2);
    const host = s.slice(2, slash >= 0 ? slash : s.length);
    if (host !== '' && host.toLowerCase() !== 'localhost') {
      const rest = slash >= 0 ? s.slice(slash) : '';
      const meant = `/${host}${rest}`;
      throw new UrlError(
        `${JSON.stringify(url)} names the host "${host}", not a directory: with two slashes, "${host}" is not part of the ` +
          `path (this would be ${rest || '/'} on this machine). Write file://${meant} (three slashes) or file:${meant}, or ` +
          `the plain path ${meant}`,
      );
    }
    s = slash >= 0 ? s.slice(slash) : '';
  }
  // urlparse splits ';params' off the last path segment, and the reference drops them.
  const lastSlash = s.lastIndexOf('/');
  const semi = s.indexOf(';', lastSlash + 1);
  if (semi >= 0) s = s.slice(0, semi);
  if (s.length === 0) {
    throw new UrlError(
      `${JSON.stringify(url)} names no file: use three slashes for an absolute path (file:///path/to/backup.bkp) ` +
        `or file:name.bkp for a path relative to the lightning network directory`,
    );
  }
  return isAbsolute(s) ? s : resolve(cwd, s);
}

/**
 * A backup argument typed on the command line: a plain path is relative to the shell's working directory
 * (as every other path the shell passes), so it becomes a file:// URL of its absolute path here, before
 * any --lightning-dir could make it relative to the network directory. That URL is also what init writes
 * into backup.lock (the reference plugin only understands URLs). URLs are returned as given.
 */
export function cliUrl(arg: string, cwd: string): string {
  if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(arg)) return arg;
  parseBackupUrl(arg, cwd); // the same checks (empty, control characters)
  return `file://${resolve(cwd, arg)}`;
}
