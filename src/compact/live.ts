import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import type { BackupStats, BackupWriter } from '../backends/backend.js';
import { BackupError, type Problem } from '../engine/entries.js';
import type { CompactHooks } from './compact.js';
import {
  committedEnd,
  committedFile,
  createShared,
  failure,
  GENERATION,
  identityOf,
  lock,
  markFailed,
  publishEnd,
  publishIdentity,
  TRUNCATIONS,
  unlock,
  views,
  WORKER_TID,
  WRITE_MUTEX,
  type FileIdentity,
  type SharedViews,
} from './sync.js';

/**
 * Online compaction of a file while its writer keeps appending, as two halves over one shared block
 * (sync.ts): the writer's (a gate every write passes, SyncedWriter) and the compaction thread's (the
 * hooks compactFile is given, liveHooks). Used by the lone file destination (plugin/compaction.ts and
 * compact-worker.ts) and by a file destination among several (compact/thread-gate.ts, whose worker is the
 * offline one given the shared block).
 */

/** A file writer that online compaction can swap a new file under. */
export interface ReopenableWriter extends BackupWriter {
  /** only the file formats are compacted by rewriting the file */
  readonly format: 'v1' | 'v2';
  reopen(): void;
  endOffset(): number;
}

export function isReopenable(w: BackupWriter): w is ReopenableWriter {
  return typeof (w as Partial<ReopenableWriter>).reopen === 'function' && typeof (w as Partial<ReopenableWriter>).endOffset === 'function';
}

/** The compaction thread's hooks over the shared block: the writer's published end, its mutex for the swap. */
export function liveHooks(v: SharedViews, path: string, log: CompactHooks['log']): CompactHooks {
  return {
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
        if (swapped) markFailed(v, `a compaction replaced the backup ${path}, then failed: ${(e as Error).message}`);
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
    log,
  };
}

/**
 * In the compaction thread: the threads that answer db_write must get a CPU the moment one arrives: on a
 * 2-vCPU machine the replay (SQLite, in this thread) competing at equal priority delayed hook answers by
 * tens of milliseconds. Linux gives each thread its own nice value, so only this thread is lowered; at
 * nice 10 it still gets about a tenth of a contended CPU, so compaction always finishes.
 */
const WORKER_NICE = 10;
export function lowerCompactionPriority(): void {
  try {
    setPriority(Number(readlinkSync('/proc/thread-self').split('/').pop()), WORKER_NICE);
  } catch {
    // no /proc/thread-self (not Linux): the worker runs at the plugin's priority
  }
}

/** The compaction thread says which OS thread it is, so a writer blocked on the mutex can tell it died holding it. */
export function publishWorkerTid(v: SharedViews): void {
  try {
    Atomics.store(v.i32, WORKER_TID, Number(readlinkSync('/proc/thread-self').split('/').pop()));
  } catch {
    // not Linux: a worker that dies holding the mutex is not detected by the writer
  }
}

/**
 * The writer's side after the compaction thread died holding the write mutex, i.e. inside a swap. If the
 * backup's name still points at the file the writer holds, the rename did not happen and the backup is
 * whole. If it points elsewhere, the new file may not be durable under the name and the writer holds
 * the old one: every write is refused from now on (markFailed). Returns true when writes go on.
 */
export function afterDeadWorker(v: SharedViews, location: string, held: FileIdentity): boolean {
  let now: FileIdentity | null = null;
  try {
    now = identityOf(location);
  } catch {
    now = null;
  }
  if (now === null || now.dev !== held.dev || now.ino !== held.ino) {
    markFailed(
      v,
      `the compaction worker died while replacing the backup ${location}; whether the replacement is durable is unknown, so no write is acknowledged any more: restart lightningd (the plugin checks the backup at start)`,
    );
    return false;
  }
  // whatever the dead worker published was about a file that never became the backup
  publishIdentity(v, held);
  return true;
}

/** What SyncedWriter needs of the writer's half (plugin/compaction.ts, compact/thread-gate.ts). */
export interface WriteGate {
  /** true once a compaction thread may exist: from then on every write takes the mutex and publishes its end */
  readonly shared: boolean;
  /** takes the write mutex */
  enter(): void;
  /** under the mutex: switch to the compacted file if the compaction swapped one in */
  sync(): void;
  /** under the mutex, before a write: a compaction that failed after its rename stops all writes */
  checkWritable(): void;
  /** publishes the end and releases the mutex; `truncated`: the write cut the file's end (dropHead) */
  leave(truncated?: boolean): void;
  /** after each append, outside the mutex */
  afterAppend(): void;
}

/**
 * The writer's half over the shared block, for a writer that holds `inner` open: the lone file
 * destination's (plugin/compaction.ts) and a file destination's lane (compact/thread-gate.ts), which
 * differ in how their compaction thread is started and watched.
 */
export abstract class FileGate implements WriteGate {
  readonly sab = createShared();
  protected readonly v: SharedViews = views(this.sab);
  protected gen = 0;
  shared = false;
  /** the file the writer holds open: what the backup's name must still point at after a worker died mid-swap */
  protected held: FileIdentity;
  /** the writer its owner uses: every call passes this gate */
  readonly writer: SyncedWriter;

  constructor(
    protected readonly inner: ReopenableWriter,
    protected readonly log: (level: 'info' | 'warn' | 'error', msg: string) => void,
  ) {
    publishEnd(this.v, inner.endOffset());
    this.held = identityOf(inner.location);
    publishIdentity(this.v, this.held);
    this.writer = new SyncedWriter(inner, this);
  }

  /** Whether the compaction thread has ended (so holds no lock any more): asked while the mutex is long held. */
  protected abstract workerDead(): boolean;

  enter(): void {
    if (lock(this.v.i32, WRITE_MUTEX, () => this.workerDead())) return;
    const goesOn = afterDeadWorker(this.v, this.inner.location, this.held);
    this.log('error', `the compaction worker died while it held the backup's write lock; ${goesOn ? 'the backup was not replaced, writes go on' : 'writes are refused'}`);
  }

  sync(): void {
    const g = Atomics.load(this.v.i32, GENERATION);
    if (g !== this.gen) {
      this.inner.reopen();
      this.gen = g;
      // the file this writer now holds (the worker published the same at its rename; this is the writer's word)
      this.held = identityOf(this.inner.location);
      publishIdentity(this.v, this.held);
    }
  }

  checkWritable(): void {
    const why = failure(this.v);
    if (why !== null) throw new BackupError(why, this.inner.location);
  }

  leave(truncated = false): void {
    if (truncated) Atomics.add(this.v.i32, TRUNCATIONS, 1);
    // only an end of the file the published identity names: if reopening failed, the writer still holds
    // the old file, and its end must not be taken for the new one's
    if (this.gen === Atomics.load(this.v.i32, GENERATION)) publishEnd(this.v, this.inner.endOffset());
    unlock(this.v.i32, WRITE_MUTEX);
  }

  afterAppend(): void {
    // no automatic trigger by default
  }

  /**
   * The end (and file) a compaction starts from, taken from the writer under the mutex: after an earlier
   * swap the writer may not have reopened yet (no write since), and the end published before it is the old file's.
   */
  protected publishStart(): void {
    this.enter();
    try {
      this.sync();
      publishEnd(this.v, this.inner.endOffset());
    } finally {
      unlock(this.v.i32, WRITE_MUTEX);
    }
  }
}

/**
 * The writer the destination's owner sees. Until a compaction thread exists only its thread touches the
 * file, so calls go straight through; the mutex, the generation check and the published end (two atomic
 * read-modify-writes, a BigInt and a notify per write) are paid only from the first compaction on.
 */
export class SyncedWriter implements BackupWriter {
  readonly format: BackupWriter['format'];
  readonly location: string;

  constructor(
    private readonly inner: ReopenableWriter,
    private readonly pc: WriteGate,
  ) {
    this.format = inner.format;
    this.location = inner.location;
  }

  private read<T>(fn: () => T): T {
    if (!this.pc.shared) return fn();
    this.pc.enter();
    try {
      this.pc.sync();
      return fn();
    } finally {
      this.pc.leave();
    }
  }

  head(): number {
    return this.read(() => this.inner.head());
  }

  isEmpty(): boolean {
    return this.read(() => this.inner.isEmpty());
  }

  headIsSnapshot(): boolean {
    return this.read(() => this.inner.headIsSnapshot());
  }

  repaired(): Problem[] {
    return this.inner.repaired();
  }

  stats(): BackupStats {
    return this.read(() => this.inner.stats());
  }

  appendChange(version: number, statements: readonly string[]): number {
    const pc = this.pc;
    let added: number;
    if (!pc.shared) {
      added = this.inner.appendChange(version, statements);
    } else {
      pc.enter();
      try {
        pc.checkWritable();
        pc.sync();
        added = this.inner.appendChange(version, statements);
      } finally {
        pc.leave();
      }
    }
    pc.afterAppend();
    return added;
  }

  appendSnapshotFile(version: number, dbPath: string): void {
    this.read(() => {
      this.pc.checkWritable();
      this.inner.appendSnapshotFile(version, dbPath);
    });
  }

  dropHead(): number {
    if (!this.pc.shared) return this.inner.dropHead();
    this.pc.enter();
    try {
      this.pc.checkWritable();
      this.pc.sync();
      return this.inner.dropHead();
    } finally {
      this.pc.leave(true);
    }
  }

  prepare(): boolean {
    const inner = this.inner as ReopenableWriter & { prepare?(): boolean };
    if (typeof inner.prepare !== 'function') return false;
    if (!this.pc.shared) return inner.prepare();
    // under the mutex, in the file the name holds now: never into one that compaction swapped out
    this.pc.enter();
    try {
      this.pc.checkWritable();
      this.pc.sync();
      return inner.prepare();
    } catch {
      return false;
    } finally {
      this.pc.leave();
    }
  }

  close(): void {
    this.inner.close();
  }
}
