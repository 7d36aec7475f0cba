import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BackupReader } from '../backend.js';
import { BackupError } from '../../engine/entries.js';
import { V1Reader } from '../file/v1.js';
import { V2Reader } from '../file/v2.js';
import { SyncWorker } from './sync.js';
import { parseSocketUrl } from './url.js';
import { DEFAULT_REMOTE_TIMEOUT_MS } from './writer.js';

/**
 * Reads a socket server's backup: one RESTORE streams it into a scratch v1 file in $TMPDIR (so memory
 * does not grow with the backup), which the file reader then serves; the file goes when the reader is
 * closed or the process exits. The scratch file needs free space about the size of the backup.
 */

const live = new Set<string>();
let hooked = false;

export function openSocketReader(url: string, opts: { remoteTimeoutMs?: number; tmp?: string; cwd?: string } = {}): BackupReader {
  const u = parseSocketUrl(url, opts.cwd);
  const dir = mkdtempSync(join(opts.tmp ?? tmpdir(), 'clnvault-restore-'));
  live.add(dir);
  if (!hooked) {
    hooked = true;
    process.on('exit', () => {
      for (const d of live) rmSync(d, { recursive: true, force: true });
    });
  }
  const cleanup = (): void => {
    rmSync(dir, { recursive: true, force: true });
    live.delete(dir);
  };
  const dest = join(dir, 'backup.bkp');
  const worker = new SyncWorker(u, opts.remoteTimeoutMs ?? DEFAULT_REMOTE_TIMEOUT_MS, () => {});
  let r;
  try {
    // no overall limit: every read inside the download has its own deadline
    r = worker.call({ op: 'download', dest }, 7 * 24 * 3600_000);
  } finally {
    worker.terminate();
  }
  if (!r.ok) {
    cleanup();
    throw new BackupError(`${url}: could not fetch the backup from the server: ${r.error}`, url);
  }
  let inner: BackupReader;
  try {
    // an encrypted backup arrives as the server's v2 file: the caller authenticates it with its key
    inner = r.raw === true ? V2Reader.open(dest) : V1Reader.open(dest);
  } catch (e) {
    cleanup();
    throw e;
  }
  // a Proxy rather than a wrapper class: the reader interface is being reshaped elsewhere, and this
  // must only change where the backup says it lives and what closing it does
  return new Proxy(inner, {
    get(target, prop, receiver) {
      if (prop === 'location') return url;
      if (prop === 'close') {
        return () => {
          try {
            target.close();
          } finally {
            cleanup();
          }
        };
      }
      if (prop === 'stats') return () => ({ ...target.stats(), location: url });
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
}
