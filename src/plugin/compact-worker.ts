import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { workerData } from 'node:worker_threads';
import { compactFile } from '../compact/compact.js';
import {
  committedEnd,
  committedFile,
  GENERATION,
  lock,
  markFailed,
  publishEnd,
  publishIdentity,
  RUNNING,
  STDOUT_MUTEX,
  TRUNCATIONS,
  unlock,
  views,
  WRITE_MUTEX,
} from '../compact/sync.js';
import type { WorkerData, WorkerRequest } from './compaction.js';
import { log, sendError, sendResult, shareStdout } from './output.js';

/**
 * The compaction worker thread. It answers `backup-compact` and writes its progress to the plugin log
 * itself, straight to fd 1 under the stdout mutex: the main thread sits blocked in read(2) and would not
 * see a message from here until lightningd's next request. The thread's shell (compact-shell.ts) loads
 * this module and calls handleRequest for each request; it answers for us if this module cannot load or
 * the thread dies.
 */

const data = workerData as WorkerData;
const v = views(data.sab);
shareStdout(v.i32, STDOUT_MUTEX);

/**
 * The main thread must get a CPU the moment a db_write arrives: on a 2-vCPU machine the replay (SQLite, in
 * this thread) competing at equal priority delayed hook answers by tens of milliseconds. Linux gives each
 * thread its own nice value, so only this thread is lowered; at nice 10 it still gets about a tenth of a
 * contended CPU, so compaction always finishes.
 */
const WORKER_NICE = 10;
try {
  setPriority(Number(readlinkSync('/proc/thread-self').split('/').pop()), WORKER_NICE);
} catch {
  // no /proc/thread-self (not Linux): the worker runs at the plugin's priority, as it did
}

export function handleRequest(req: WorkerRequest): void {
  try {
    const outcome = compactFile(
      data.path,
      {
        committedEnd: () => committedEnd(v),
        committedFile: () => committedFile(v),
        truncations: () => Atomics.load(v.i32, TRUNCATIONS),
        exclusive: (fn) => {
          lock(v.i32, WRITE_MUTEX);
          let swapped = false;
          try {
            fn((end, file) => {
              swapped = true;
              // the new file's end, published with it: a compaction started before the writer's next
              // write must not take the old file's end for this one
              publishEnd(v, end);
              publishIdentity(v, file);
            });
          } catch (e) {
            // a failure after the rename that compactFile did not report itself: refuse, before unlocking
            if (swapped) markFailed(v, `a compaction replaced the backup ${data.path}, then failed: ${(e as Error).message}`);
            throw e;
          } finally {
            // bumped even when a step after the rename failed: the name now belongs to the new file
            if (swapped) Atomics.add(v.i32, GENERATION, 1);
            unlock(v.i32, WRITE_MUTEX);
          }
        },
        // under exclusive when the failure happened there; later (cleanup of the old set), writes
        // acknowledged meanwhile went to the new set after its name was durable, and from here on none is
        failedAfterSwap: (message) => markFailed(v, message),
        log: (level, message) => log(level, `clnvault: ${message}`),
      },
      {
        format: data.format,
        history: data.history,
        segmentBytes: data.segmentBytes,
        key: data.key ? { key: Buffer.from(data.key.key), kind: data.key.kind, fingerprint: data.key.fingerprint } : null,
      },
    );
    Atomics.store(v.i32, RUNNING, 0);
    if (req.id !== null) sendResult(req.id, outcome.stats);
  } catch (e) {
    Atomics.store(v.i32, RUNNING, 0);
    const message = (e as Error).message;
    log('error', `clnvault: ${message}`);
    if (req.id !== null) sendError(req.id, -32000, message);
  }
}
