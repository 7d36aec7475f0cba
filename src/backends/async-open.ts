import type { AsyncBackupWriter } from './backend.js';
import { destinationOf, encryptionNotYet, isClnvaultUrl, type WriterOptions } from './open.js';
import { isPostgresUrl, parsePgUrl } from './postgres/url.js';
import { remoteTimeoutMs } from './postgres/timeout.js';
import { AsyncSocketWriter } from './socket/async-writer.js';

/**
 * The plugin's writer when its only destination is remote: driven from the plugin's event loop
 * (AsyncBackupWriter) instead of a worker thread behind a synchronous call. Null for a destination
 * that has no such writer (files: the blocking path is the fastest there).
 *
 * The plugin loads this module by path at run time (startup.ts), so a plugin writing to a file never
 * parses the network code.
 */
export async function openAsyncWriter(url: string, cwd: string, opts: WriterOptions = {}): Promise<AsyncBackupWriter | null> {
  if (isPostgresUrl(url)) {
    // loaded here only: it loads `pg`, which a socket: destination does not need
    const { AsyncPgWriter } = await import('./postgres/async-writer.js');
    return AsyncPgWriter.open(parsePgUrl(url), opts.remoteTimeoutMs ?? remoteTimeoutMs(cwd).ms, opts.key ?? null, opts.log);
  }
  if (destinationOf(url, cwd) !== 'socket') return null;
  if (opts.key && !isClnvaultUrl(url)) throw encryptionNotYet(url);
  return AsyncSocketWriter.open(url, { ...opts, cwd });
}
