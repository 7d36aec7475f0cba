import { workerData } from 'node:worker_threads';
import { compactFile } from '../compact/compact.js';
import { RUNNING, STDOUT_MUTEX, views } from '../compact/sync.js';
import { liveHooks, lowerCompactionPriority } from '../compact/live.js';
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

lowerCompactionPriority();

export function handleRequest(req: WorkerRequest): void {
  try {
    const outcome = compactFile(
      data.path,
      liveHooks(v, data.path, (level, message) => log(level, `clnvault: ${message}`)),
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
