import { existsSync } from 'node:fs';
import type { CompactOptions, CompactOutcome } from './compact.js';
import { FileGate } from './live.js';
import { runOfflineCompaction } from './offline-run.js';
import { WORKER_TID } from './sync.js';

/**
 * A file writer whose owner blocks in the write mutex rather than waiting for events: a file destination's
 * lane among several (multi/lane.ts) and `clnvault server` (server/store.ts) write through this gate, so
 * that the file is compacted the way a lone file destination is (plugin/compaction.ts): a worker thread
 * builds the compacted file while the owner keeps appending and acknowledging, catches up with the tail
 * and swaps it in under the write mutex; the owner's next write reopens the new file. Writes never wait
 * for the compaction beyond that swap (so a file destination is compacted in turn also with "ack": "all",
 * docs/destinations.md, and a server's node keeps writing while its backup is compacted).
 */
export class ThreadFileGate extends FileGate {
  /** the compaction thread of the running compaction settled (ended): it holds no lock any more */
  private workerEnded = true;

  /** The owner is blocked in the lock, so no event tells it the worker ended: its OS thread is looked for. */
  protected workerDead(): boolean {
    if (this.workerEnded) return true;
    const tid = Atomics.load(this.v.i32, WORKER_TID);
    return tid !== 0 && !existsSync(`/proc/self/task/${tid}`);
  }

  /** v2: the writer's segment size, which the compacted backup keeps */
  get segmentBytes(): number | undefined {
    return (this.inner as { segmentBytes?: number }).segmentBytes;
  }

  /** Compacts the file while the owner goes on writing through `writer`. */
  async compact(opts: CompactOptions): Promise<CompactOutcome> {
    this.checkWritable();
    this.shared = true;
    this.publishStart();
    Atomics.store(this.v.i32, WORKER_TID, 0);
    this.workerEnded = false;
    try {
      return await runOfflineCompaction({ path: this.inner.location, end: 0, file: this.held, opts, live: this.sab }, this.log);
    } finally {
      this.workerEnded = true;
    }
  }
}
