import { Worker } from 'node:worker_threads';
import { BackupError } from '../engine/entries.js';
import type { CompactOutcome } from './compact.js';
import { leanCompactionHeap } from './heap.js';
import type { OfflineJob, OfflineMessage } from './offline-worker.js';

/** the compaction worker's young generation (V8 nursery), MiB: as the plugin's (src/plugin/compaction.ts) */
const COMPACT_YOUNG_GEN_MB = 3;

/**
 * Runs compactFile in a worker thread (offline-worker.ts) whose V8 young generation is capped: in the
 * caller's thread it peaked at 141 MiB on a 1 GiB backup. Used by `clnvault compact` and by the online
 * compaction of a file destination among several (src/backends/multi/compact-dest.ts); neither is in
 * the plugin's bundle, so the worker file is found beside this one.
 */
export function runOfflineCompaction(job: OfflineJob, log: (level: 'info' | 'warn' | 'error', message: string) => void): Promise<CompactOutcome> {
  return new Promise((resolve, reject) => {
    leanCompactionHeap();
    const w = new Worker(new URL('./offline-worker.js', import.meta.url), {
      workerData: job,
      resourceLimits: { maxYoungGenerationSizeMb: COMPACT_YOUNG_GEN_MB },
    });
    let settled = false;
    w.on('message', (m: OfflineMessage) => {
      if (m.kind === 'log') log(m.level, m.message);
      else if (m.kind === 'done') {
        settled = true;
        resolve(m.outcome);
      } else {
        settled = true;
        reject(m.path !== null ? new BackupError(m.message, m.path) : new Error(m.message));
      }
    });
    w.on('error', (e) => {
      if (!settled) reject(new Error(`the compaction of ${job.path} stopped: ${e.message}; the backup is unchanged unless a rename was reported`));
      settled = true;
    });
    w.on('exit', (code) => {
      if (!settled) reject(new Error(`the compaction worker of ${job.path} exited (code ${code}) without a result; run the compaction again`));
      settled = true;
    });
  });
}
