import { statSync } from 'node:fs';

/**
 * State shared between the plugin's main thread and the compaction worker.
 *
 * The main thread spends its idle time blocked in read(2) on stdin, so its event loop never runs and a
 * postMessage from the worker would sit undelivered. Everything the two threads must agree on therefore
 * lives in one SharedArrayBuffer and is read and written with Atomics.
 */

/** i32 slots */
export const WRITE_MUTEX = 0;
/** bumped by the worker after it renamed a compacted file over the backup; the writer reopens when it differs */
export const GENERATION = 1;
/** bumped by the main thread on every dropHead: bytes the worker already copied may have been cut */
export const TRUNCATIONS = 2;
/** 1 while a compaction runs (a second request is refused) */
export const RUNNING = 3;
/** serialises whole JSON-RPC messages on fd 1 between the two threads */
export const STDOUT_MUTEX = 4;
/**
 * Set (under the write mutex) by the worker when a step after its rename failed: the backup's name may
 * not durably point at the new file, so the writer refuses every later write and lightningd stops
 * without committing. Never cleared: only a restart (which reopens and checks the backup) ends it.
 */
export const FAILED = 5;
/** length in bytes of the UTF-8 message in the message area, written before FAILED is set */
const FAILED_LEN = 6;
/**
 * the compaction thread's OS thread id (live.ts, publishWorkerTid), for a writer that waits on the mutex
 * to tell whether the thread holding it still exists (a compaction of a destination among several)
 */
export const WORKER_TID = 7;
/** exported for the worker's shell (plugin/compact-shell.ts), which imports node built-ins only */
export const I32_SLOTS = 8;
/**
 * i64 slots (in their own view): end of the data the writer has made durable, and the identity (st_dev,
 * st_ino) of the file that end belongs to. All three change together, under the write mutex.
 */
const COMMITTED_END = 0;
const END_DEV = 1;
const END_INO = 2;
const I64_SLOTS = 3;
const MESSAGE_BYTES = 1024;

export interface SharedViews {
  i32: Int32Array;
  i64: BigInt64Array;
  message: Uint8Array;
}

/** Which file a published end belongs to (what a rename or a reopen changes). */
export interface FileIdentity {
  dev: bigint;
  ino: bigint;
}

export function createShared(): SharedArrayBuffer {
  return new SharedArrayBuffer(I32_SLOTS * 4 + I64_SLOTS * 8 + MESSAGE_BYTES);
}

export function views(sab: SharedArrayBuffer): SharedViews {
  return {
    i32: new Int32Array(sab, 0, I32_SLOTS),
    i64: new BigInt64Array(sab, I32_SLOTS * 4, I64_SLOTS),
    message: new Uint8Array(sab, I32_SLOTS * 4 + I64_SLOTS * 8, MESSAGE_BYTES),
  };
}

/**
 * A plain test-and-set lock. Critical sections are short (one append, or the final swap), so a few spins
 * usually suffice; after that Atomics.wait parks the thread. wait() re-checks the value atomically, so an
 * unlock between the failed CAS and the wait is never missed.
 *
 * `abandoned`, asked after each wait that timed out, says the only other thread that takes this lock is
 * gone: a thread that died inside its critical section never unlocks. The lock is then taken over and
 * false returned, so the caller can check what the dead thread may have left half done.
 */
export function lock(a: Int32Array, i: number, abandoned?: () => boolean): boolean {
  for (let spins = 0; ; spins++) {
    if (Atomics.compareExchange(a, i, 0, 1) === 0) return true;
    if (spins > 64 && Atomics.wait(a, i, 1, 50) === 'timed-out' && abandoned !== undefined && abandoned()) {
      Atomics.store(a, i, 1);
      return false;
    }
  }
}

export function unlock(a: Int32Array, i: number): void {
  Atomics.store(a, i, 0);
  Atomics.notify(a, i, 1);
}

export function publishEnd(v: SharedViews, end: number): void {
  Atomics.store(v.i64, COMMITTED_END, BigInt(end));
}

export function committedEnd(v: SharedViews): number {
  return Number(Atomics.load(v.i64, COMMITTED_END));
}

/** The identity a caller whose writer holds `path` open (and the lock) gives for a compaction's `committedFile`. */
export function identityOf(path: string): FileIdentity {
  const st = statSync(path, { bigint: true });
  return { dev: st.dev, ino: st.ino };
}

export function publishIdentity(v: SharedViews, id: FileIdentity): void {
  Atomics.store(v.i64, END_DEV, BigInt.asIntN(64, id.dev));
  Atomics.store(v.i64, END_INO, BigInt.asIntN(64, id.ino));
}

export function committedFile(v: SharedViews): FileIdentity {
  return { dev: BigInt.asUintN(64, Atomics.load(v.i64, END_DEV)), ino: BigInt.asUintN(64, Atomics.load(v.i64, END_INO)) };
}

/** Puts the writer in the refusing state (call under the write mutex); the first message is kept. */
export function markFailed(v: SharedViews, message: string): void {
  if (Atomics.load(v.i32, FAILED) !== 0) return;
  const bytes = Buffer.from(message, 'utf8').subarray(0, MESSAGE_BYTES);
  v.message.set(bytes);
  Atomics.store(v.i32, FAILED_LEN, bytes.length);
  Atomics.store(v.i32, FAILED, 1);
}

/** Why the writer refuses, or null while it does not. */
export function failure(v: SharedViews): string | null {
  if (Atomics.load(v.i32, FAILED) === 0) return null;
  const n = Atomics.load(v.i32, FAILED_LEN);
  // a copy: TextDecoder refuses views of shared memory
  return Buffer.from(v.message.slice(0, n)).toString('utf8');
}
