import { isAbsolute, resolve } from 'node:path';

/**
 * Backup URLs, parsed the way the reference plugin does (Python urlparse, only the path is used) so that
 * every backup.lock written for the reference keeps working:
 *   file:///abs/path.bkp    absolute
 *   file:relative.bkp       relative to the working directory (the network dir, for the plugin)
 *   FILE:...                the scheme is case-insensitive
 * Query and fragment are dropped; percent-escapes are not decoded (the reference does not either).
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
  const colon = url.indexOf(':');
  const scheme = colon > 0 ? url.slice(0, colon).toLowerCase() : '';
  if (scheme === 'file') return { scheme: 'file', url, path: filePath(url, url.slice(colon + 1), cwd) };
  if (scheme === 'socket') return { scheme: 'socket', url };
  if (scheme === 'postgresql' || scheme === 'postgres') return { scheme: 'postgresql', url };
  throw new UrlError(
    `no backend for ${JSON.stringify(url)}: the URL must start with file: (e.g. file:///mnt/backup/clnvault.bkp) ` +
      `or postgresql: (postgresql://user@host/dbname?backup=NAME)`,
  );
}

function filePath(url: string, rest: string, cwd: string): string {
  let s = rest;
  const hash = s.indexOf('#');
  if (hash >= 0) s = s.slice(0, hash);
  const q = s.indexOf('?');
  if (q >= 0) s = s.slice(0, q);
  if (s.startsWith('//')) {
    // urlparse puts everything up to the next '/' into the netloc and the reference ignores it.
    const slash = s.indexOf('/', 2);
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
