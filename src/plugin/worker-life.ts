import { existsSync } from 'node:fs';
import { I32_SLOTS, RUNNING, STDOUT_MUTEX } from '../compact/sync.js';

/**
 * The main thread's side of a compaction worker's life. The plugin's main thread sits blocked in read(2),
 * so a Worker's 'error' and 'exit' events are never delivered to it: a worker whose file is missing, whose
 * module throws while loading, or which dies, would leave `backup-compact` unanswered and the compaction
 * RUNNING forever. So the worker starts as a small shell (compact-shell.ts, node built-ins only) that
 * loads compact-worker.js, answers every request it cannot pass on, and tells the main thread through
 * this worker's own shared "life" area: gone or not and why, that it started, and its OS thread id (for an
 * end no JavaScript sees, such as its heap limit). Each worker has its own area: a worker being retired
 * can never be taken for its successor.
 */

/** What the shell needs to know, passed in workerData.shell. */
export interface ShellData {
  entry: string;
  life: SharedArrayBuffer;
  i32Slots: number;
  running: number;
  stdoutMutex: number;
  lifeSlots: number;
  gone: number;
  tid: number;
  msgLen: number;
  started: number;
  loadingFailed: number;
  exited: number;
}

/** life area slots */
const GONE = 0;
const TID = 1;
const MSG_LEN = 2;
/** set by the shell as its first act */
const STARTED = 3;
const LIFE_SLOTS = 4;
/** a shell that has not started after this long never will (its own file is damaged) */
const START_DEADLINE_MS = 30_000;
const LIFE_MSG_BYTES = 1024;
/** GONE values */
export const LOADING_FAILED = 1;
export const EXITED = 2;

/** The main thread's view of one worker's life area. */
export class WorkerLife {
  readonly sab = new SharedArrayBuffer(LIFE_SLOTS * 4 + LIFE_MSG_BYTES);
  private readonly i32 = new Int32Array(this.sab, 0, LIFE_SLOTS);
  private readonly createdAt = Date.now();

  shellData(entry: URL): ShellData {
    return {
      entry: entry.href,
      life: this.sab,
      i32Slots: I32_SLOTS,
      running: RUNNING,
      stdoutMutex: STDOUT_MUTEX,
      lifeSlots: LIFE_SLOTS,
      gone: GONE,
      tid: TID,
      msgLen: MSG_LEN,
      started: STARTED,
      loadingFailed: LOADING_FAILED,
      exited: EXITED,
    };
  }

  /** 0 while the worker serves, else LOADING_FAILED or EXITED */
  state(): number {
    return Atomics.load(this.i32, GONE);
  }

  /** the shell's words on why the worker is gone ('' if it said nothing) */
  message(): string {
    const n = Math.min(Atomics.load(this.i32, MSG_LEN), LIFE_MSG_BYTES);
    // a copy: TextDecoder refuses views of shared memory
    return Buffer.from(new Uint8Array(this.sab, LIFE_SLOTS * 4, n).slice()).toString('utf8');
  }

  /**
   * Whether the thread has ended: its shell said so, or (Linux) the thread is no longer in /proc/self/task,
   * which also covers an end no JavaScript sees (the worker's heap limit), or the shell never started (its
   * own file could not load). A stat, so callers rate-limit it.
   */
  ended(): boolean {
    if (Atomics.load(this.i32, GONE) === EXITED) return true;
    if (Atomics.load(this.i32, STARTED) === 0) return Date.now() - this.createdAt > START_DEADLINE_MS;
    const tid = Atomics.load(this.i32, TID);
    return tid > 0 && !existsSync(`/proc/self/task/${tid}`);
  }
}
