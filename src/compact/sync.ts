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
const I32_SLOTS = 8;
/** i64 slot (in its own view): end of the data the writer has made durable */
const COMMITTED_END = 0;

export interface SharedViews {
  i32: Int32Array;
  i64: BigInt64Array;
}

export function createShared(): SharedArrayBuffer {
  return new SharedArrayBuffer(I32_SLOTS * 4 + 8);
}

export function views(sab: SharedArrayBuffer): SharedViews {
  return { i32: new Int32Array(sab, 0, I32_SLOTS), i64: new BigInt64Array(sab, I32_SLOTS * 4, 1) };
}

/**
 * A plain test-and-set lock. Critical sections are short (one append, or the final swap), so a few spins
 * usually suffice; after that Atomics.wait parks the thread. wait() re-checks the value atomically, so an
 * unlock between the failed CAS and the wait is never missed.
 */
export function lock(a: Int32Array, i: number): void {
  for (let spins = 0; ; spins++) {
    if (Atomics.compareExchange(a, i, 0, 1) === 0) return;
    if (spins > 64) Atomics.wait(a, i, 1, 50);
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
