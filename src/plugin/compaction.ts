import { existsSync, statSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import type { Worker } from 'node:worker_threads';
import type { CompactionConfig } from '../compact/config.js';
import { failure, RUNNING, STDOUT_MUTEX } from '../compact/sync.js';
import { FileGate, type ReopenableWriter } from '../compact/live.js';
import { DB_NAME } from '../engine/live-db.js';
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

export { isReopenable, type ReopenableWriter } from '../compact/live.js';

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

export class PluginCompaction extends FileGate {
  private worker: Worker | null = null;
  /** the current worker's life area (worker-life.ts) */
  private life: WorkerLife | null = null;
  private nextCheck: number;
  private initDone = false;
  /** the request the running compaction answers (null: automatic), for when its worker died unheard */
  private pendingId: RpcId | null = null;
  private nextProbe = 0;

  constructor(
    inner: ReopenableWriter,
    private readonly cwd: string,
    private readonly config: CompactionConfig,
    log: (level: 'info' | 'warn' | 'error', msg: string) => void,
    private readonly key: KeyLike | null = null,
  ) {
    super(inner, log);
    this.nextCheck = config.minBytes;
  }

  /** Whether the current worker thread has ended (so holds no lock any more and answers nothing). */
  protected workerDead(): boolean {
    return this.life !== null && this.life.ended();
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
      this.publishStart();
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
  override afterAppend(): void {
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
