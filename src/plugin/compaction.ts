import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import type { Worker } from 'node:worker_threads';
import type { BackupStats, BackupWriter } from '../backends/backend.js';
import type { CompactionConfig } from '../compact/config.js';
import {
  createShared,
  failure,
  GENERATION,
  lock,
  markFailed,
  publishEnd,
  identityOf,
  publishIdentity,
  RUNNING,
  STDOUT_MUTEX,
  TRUNCATIONS,
  unlock,
  views,
  WRITE_MUTEX,
  type FileIdentity,
  type SharedViews,
} from '../compact/sync.js';
import { BackupError } from '../engine/entries.js';
import { DB_NAME } from '../engine/live-db.js';
import type { Problem } from '../engine/entries.js';
import { sendError, shareStdout, type RpcId } from './output.js';
import type { KeyLike } from '../crypto/backup-crypt.js';
import { leanCompactionHeap } from '../compact/heap.js';
import { EXITED, WorkerLife, type ShellData } from './worker-life.js';

/**
 * The main thread's half of online compaction. The writer is wrapped so that every append and rewind
 * runs under the write mutex, publishes how far the file is durable, and first reopens the file if the
 * worker swapped a compacted one in. The work itself runs in a worker thread (compact-worker.ts), which
 * also answers the RPC: this thread is usually blocked reading stdin and could not.
 */

export interface ReopenableWriter extends BackupWriter {
  /** only the file formats are compacted by rewriting the file */
  readonly format: 'v1' | 'v2';
  reopen(): void;
  endOffset(): number;
}

export function isReopenable(w: BackupWriter): w is ReopenableWriter {
  return typeof (w as Partial<ReopenableWriter>).reopen === 'function' && typeof (w as Partial<ReopenableWriter>).endOffset === 'function';
}

/** the compaction worker's young generation (V8 nursery), MiB */
const COMPACT_YOUNG_GEN_MB = 3;

export interface WorkerData {
  sab: SharedArrayBuffer;
  path: string;
  format: 'v1' | 'v2';
  history: number;
  /** v2: the writer's segment size, which the compacted backup keeps */
  segmentBytes?: number;
  /** an encrypted backup's key (the worker decrypts to replay; never logged) */
  key?: { key: Uint8Array; kind: string; fingerprint: string } | null;
  shell: ShellData;
}

export type WorkerRequest = { id: RpcId | null };

const CHECK_STEP = 16 * 1024 * 1024;
/** how often, at most, a hook looks for the worker thread in /proc while a compaction runs */
const PROBE_MS = 1000;

export class PluginCompaction {
  readonly sab = createShared();
  private readonly v: SharedViews = views(this.sab);
  private gen = 0;
  private worker: Worker | null = null;
  /** the current worker's life area (worker-life.ts) */
  private life: WorkerLife | null = null;
  /** true once a worker thread exists: from then on every write takes the mutex and publishes its end */
  shared = false;
  private nextCheck: number;
  private initDone = false;
  readonly writer: BackupWriter;
  /** the request the running compaction answers (null: automatic), for when its worker died unheard */
  private pendingId: RpcId | null = null;
  private nextProbe = 0;
  /** the file the writer holds open: what the backup's name must still point at after a worker died mid-swap */
  private held: FileIdentity;

  constructor(
    private readonly inner: ReopenableWriter,
    private readonly cwd: string,
    private readonly config: CompactionConfig,
    private readonly log: (level: 'info' | 'warn' | 'error', msg: string) => void,
    private readonly key: KeyLike | null = null,
  ) {
    publishEnd(this.v, inner.endOffset());
    this.held = identityOf(inner.location);
    publishIdentity(this.v, this.held);
    this.nextCheck = config.minBytes;
    this.writer = new SyncedWriter(inner, this);
  }

  /** Under the write mutex: switch to the compacted file if the worker swapped one in. */
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

  /** Under the write mutex, before a write: a compaction that failed after its rename stops all writes. */
  checkWritable(): void {
    const why = failure(this.v);
    if (why !== null) throw new BackupError(why, this.inner.location);
  }

  enter(): void {
    if (!lock(this.v.i32, WRITE_MUTEX, () => this.workerDead())) this.takeOverFromDeadWorker();
  }

  /** Whether the current worker thread has ended (so holds no lock any more and answers nothing). */
  private workerDead(): boolean {
    return this.life !== null && this.life.ended();
  }

  /**
   * The worker died holding the write mutex, i.e. inside a compaction's swap. If the backup's name still
   * points at the file this writer holds, the rename did not happen and the backup is whole: go on. If it
   * points elsewhere, the new file may not be durable under the name and the writer holds the old one:
   * refuse every write from now on (lightningd stops without committing; a restart checks the backup).
   */
  private takeOverFromDeadWorker(): void {
    let now: FileIdentity | null = null;
    try {
      now = identityOf(this.inner.location);
    } catch {
      now = null;
    }
    if (now === null || now.dev !== this.held.dev || now.ino !== this.held.ino) {
      markFailed(
        this.v,
        `the compaction worker died while replacing the backup ${this.inner.location}; whether the replacement is durable is unknown, so no write is acknowledged any more: restart lightningd (the plugin checks the backup at start)`,
      );
    } else {
      // whatever the dead worker published was about a file that never became the backup
      publishIdentity(this.v, this.held);
    }
    this.log('error', `the compaction worker died while it held the backup's write lock; ${failure(this.v) === null ? 'the backup was not replaced, writes go on' : 'writes are refused'}`);
  }

  /**
   * On every message from lightningd, cheap until a compaction runs: a worker that died with a request
   * outstanding is found here (the only moment this thread runs), the request answered and RUNNING cleared.
   */
  poll(): void {
    if (this.life === null || Atomics.load(this.v.i32, RUNNING) === 0) return;
    let dead = this.life.state() === EXITED;
    if (!dead) {
      const now = Date.now();
      if (now < this.nextProbe) return;
      this.nextProbe = now + PROBE_MS;
      dead = this.workerDead();
    }
    if (!dead) return;
    const why = `the compaction worker died (${this.life.message() || 'its thread ended without a word, e.g. out of memory'}); run backup-compact again`;
    // whoever clears RUNNING answers: the worker's shell may have answered already
    if (Atomics.compareExchange(this.v.i32, RUNNING, 1, 0) !== 1) return;
    this.log('error', why);
    if (this.pendingId !== null) sendError(this.pendingId, -32000, why);
  }

  /**
   * Drops a worker that cannot serve (loading failed, or its thread ended), so the next start makes a new
   * one. One whose loading failed is told to quit rather than terminated: it may be writing a reply under
   * the stdout lock this very moment, and a thread stopped there would never release it.
   */
  private reap(): void {
    if (this.worker === null || this.life === null) return;
    const state = this.life.state();
    if (state === 0 && !this.life.ended()) return;
    if (state !== EXITED) this.worker.postMessage({ quit: true });
    this.worker = null;
    this.life = null;
  }

  leave(truncated = false): void {
    if (truncated) Atomics.add(this.v.i32, TRUNCATIONS, 1);
    // only an end of the file the published identity names: if reopening failed, the writer still holds
    // the old file, and its end must not be taken for the new one's
    if (this.gen === Atomics.load(this.v.i32, GENERATION)) publishEnd(this.v, this.inner.endOffset());
    unlock(this.v.i32, WRITE_MUTEX);
  }

  onInit(): void {
    this.initDone = true;
  }

  running(): boolean {
    return Atomics.load(this.v.i32, RUNNING) !== 0;
  }

  /** Starts a compaction; the worker answers `id`. Returns why it cannot, or null. */
  start(id: RpcId | null): string | null {
    const failed = failure(this.v);
    if (failed !== null) return failed;
    if (Atomics.compareExchange(this.v.i32, RUNNING, 0, 1) !== 0) {
      return 'a compaction of this backup is already running; wait for it to finish (progress is in the log)';
    }
    try {
      // the end (and file) the compaction starts from, taken from the writer under the mutex: after an
      // earlier swap the writer may not have reopened yet (no write since), and the end published before
      // the swap is the old file's
      this.enter();
      try {
        this.sync();
        publishEnd(this.v, this.inner.endOffset());
      } finally {
        unlock(this.v.i32, WRITE_MUTEX);
      }
      this.reap();
      if (this.worker === null) {
        const life = new WorkerLife();
        const data: WorkerData = {
          sab: this.sab,
          path: this.inner.location,
          format: this.inner.format,
          history: this.config.history,
          segmentBytes: (this.inner as { segmentBytes?: number }).segmentBytes,
          key: this.key ? { key: this.key.key, kind: this.key.kind, fingerprint: this.key.fingerprint } : null,
          shell: life.shellData(new URL('./compact-worker.js', import.meta.url)),
        };
        // From now on two threads write to fd 1: whole messages must not interleave. Until a worker
        // exists, replies skip the lock. A worker that died mid-message cannot release it.
        shareStdout(this.v.i32, STDOUT_MUTEX, () => this.workerDead());
        // every later write publishes its own end
        this.shared = true;
        // loaded on first use: most starts never compact, and the module adds to start-up time
        const { Worker } = createRequire(import.meta.url)('node:worker_threads') as typeof import('node:worker_threads');
        // A small young generation: the replay allocates a few KB per entry and drops it at once, and V8
        // would otherwise grow the worker's nursery to tens of MiB (plugin peak 141-159 MiB on a 1 GiB
        // compaction; 126 MiB with 8, 113 MiB with 3), for a few % more CPU in scavenges in a worker that
        // runs at nice 10 anyway (docs/compaction.md, "Memory"; bench/compact.ts prints the peak).
        leanCompactionHeap();
        // the shell loads compact-worker.js and answers for it when it cannot (worker-life.ts). Its own
        // file is looked for first: a Worker whose file is missing fails in an event this thread never sees
        // (a shell that exists but cannot load is caught by the start deadline instead).
        const shell = new URL('./compact-shell.js', import.meta.url);
        if (!existsSync(fileURLToPath(shell))) {
          throw new Error(`${fileURLToPath(shell)} is missing; the plugin installation is damaged: reinstall clnvault`);
        }
        this.worker = new Worker(shell, {
          workerData: data,
          resourceLimits: { maxYoungGenerationSizeMb: COMPACT_YOUNG_GEN_MB },
        });
        // Only delivered if the event loop ever runs (a non-blocking stdin): without a listener, the
        // worker's error would be thrown in this thread and end the plugin. poll() handles it instead.
        this.worker.on('error', () => undefined);
        // idle workers must not keep the plugin alive once stdin closes
        this.worker.unref();
        this.life = life;
      }
      this.pendingId = id;
      const req: WorkerRequest = { id };
      this.worker.postMessage(req);
    } catch (e) {
      Atomics.store(this.v.i32, RUNNING, 0);
      return `cannot start the compaction worker: ${(e as Error).message}`;
    }
    return null;
  }

  /** After each append, outside the mutex: a size check costs one comparison until a threshold is near. */
  afterAppend(): void {
    if (!this.config.auto || !this.initDone) return;
    const end = this.inner.endOffset();
    if (end < this.nextCheck) return;
    if (this.running()) {
      this.nextCheck = end + CHECK_STEP;
      return;
    }
    let dbSize = 0;
    try {
      dbSize = statSync(join(this.cwd, DB_NAME)).size;
    } catch {
      dbSize = 0;
    }
    const threshold = Math.max(this.config.minBytes, this.config.factor * dbSize);
    if (end < threshold) {
      this.nextCheck = Math.min(threshold, end + CHECK_STEP);
      return;
    }
    this.nextCheck = end + CHECK_STEP;
    this.log('info', `the backup is ${end} bytes (threshold ${threshold}: max(min_bytes, ${this.config.factor} x the database)); compacting in the background`);
    const why = this.start(null);
    if (why !== null) this.log('warn', `automatic compaction not started: ${why}`);
  }
}

/**
 * The writer the db_write handler sees. Until a worker exists only this thread touches the file, so
 * calls go straight through; the mutex, the generation check and the published end (two atomic
 * read-modify-writes, a BigInt and a notify per write) are paid only from the first compaction on.
 */
class SyncedWriter implements BackupWriter {
  readonly format: BackupWriter['format'];
  readonly location: string;

  constructor(
    private readonly inner: ReopenableWriter,
    private readonly pc: PluginCompaction,
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
