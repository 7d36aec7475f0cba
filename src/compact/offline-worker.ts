import { parentPort, workerData } from 'node:worker_threads';
import { BackupError } from '../engine/entries.js';
import { compactFile, type CompactHooks, type CompactOptions, type CompactOutcome } from './compact.js';
import { views, type FileIdentity } from './sync.js';
import { liveHooks, lowerCompactionPriority, publishWorkerTid } from './live.js';
import type { KeyLike } from '../crypto/backup-crypt.js';

/**
 * `clnvault compact` runs the compaction in this worker thread rather than the CLI's main thread, for the
 * same reason the plugin does: the worker's V8 young generation can be capped (resourceLimits), which no
 * running main thread can do to itself. The replay drops a few KB per entry; uncapped, V8 grows the
 * nursery to tens of MiB (docs/compaction.md, "Memory").
 *
 * The CLI holds the backup's writer lock for the whole run, so the hooks are constants: no other writer
 * appends, rewinds or renames meanwhile. A file destination among several is compacted by this worker
 * while its lane keeps writing (`live`: the shared block of live.ts, as the lone plugin's worker uses it).
 */

export interface OfflineJob {
  path: string;
  end: number;
  file: FileIdentity;
  opts: CompactOptions;
  /** the writer keeps appending: its published end, mutex and generation (compact/sync.ts) */
  live?: SharedArrayBuffer;
}

export type OfflineMessage =
  | { kind: 'log'; level: 'info' | 'warn' | 'error'; message: string }
  | { kind: 'done'; outcome: CompactOutcome }
  | { kind: 'failed'; message: string; path: string | null };

const job = workerData as OfflineJob;
// a key crosses the thread boundary as a plain Uint8Array: the codec wants Buffers again
const asKey = (k: KeyLike | null | undefined): KeyLike | null => (k ? { key: Buffer.from(k.key), kind: k.kind, fingerprint: k.fingerprint } : null);
const opts: CompactOptions = { ...job.opts, key: asKey(job.opts.key), newKey: asKey(job.opts.newKey) };
const port = parentPort!;
try {
  const log = (level: 'info' | 'warn' | 'error', message: string): void => port.postMessage({ kind: 'log', level, message } satisfies OfflineMessage);
  let hooks: CompactHooks;
  if (job.live !== undefined) {
    const v = views(job.live);
    publishWorkerTid(v);
    lowerCompactionPriority();
    hooks = liveHooks(v, job.path, log);
  } else {
    hooks = {
      committedEnd: () => job.end,
      committedFile: () => job.file,
      truncations: () => 0,
      exclusive: (fn) => fn(() => undefined),
      // the error is reported as the command's failure; no writer outlives the command
      failedAfterSwap: () => undefined,
      log,
    };
  }
  const outcome = compactFile(
    job.path,
    hooks,
    opts,
  );
  port.postMessage({ kind: 'done', outcome } satisfies OfflineMessage);
} catch (e) {
  port.postMessage({ kind: 'failed', message: (e as Error).message, path: e instanceof BackupError ? e.path : null } satisfies OfflineMessage);
}
