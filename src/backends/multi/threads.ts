import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { MessagePort, Worker } from 'node:worker_threads';
import { EXITED, WorkerLife } from '../../plugin/worker-life.js';
import type { ThreadMarks } from './thread-shell.js';

/**
 * Starting and watching the threads of a set of destinations (the lanes, the monitor). Each runs behind
 * thread-shell.ts, which publishes its end in shared memory: the main thread cannot rely on a Worker's
 * events, as it never runs its event loop.
 */

/** a dead thread is restarted after this, doubling at each death up to the maximum */
export const RESTART_FIRST_MS = 2000;
export const RESTART_MAX_MS = 5 * 60_000;

export interface WatchedThread {
  worker: Worker;
  /** the main thread's end of the thread's message channel */
  port: MessagePort;
  life: WorkerLife;
}

let wtModule: typeof import('node:worker_threads') | null = null;
export function wt(): typeof import('node:worker_threads') {
  return (wtModule ??= createRequire(import.meta.url)('node:worker_threads') as typeof import('node:worker_threads'));
}

/** A module beside this one, or (from the plugin bundle in dist/src/plugin/) under ../backends, ../metrics */
export function workerFile(candidates: string[]): string {
  for (const rel of candidates) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(p)) return p;
  }
  throw new Error(`cannot find ${candidates[0]} next to ${fileURLToPath(import.meta.url)}; reinstall clnvault`);
}

/**
 * Starts `entry` behind the shell. `data` becomes the thread's workerData (the shell adds its own keys);
 * it gets `port` (the other end of the returned one) as data.port.
 */
export function startThread(entry: string, data: Record<string, unknown>, marks: ThreadMarks, transfer: MessagePort[] = []): WatchedThread {
  const { MessageChannel, Worker } = wt();
  const { port1, port2 } = new MessageChannel();
  const life = new WorkerLife();
  // a fresh thread: the id of the one before it must not be probed any more
  Atomics.store(new Int32Array(marks.ints), marks.tidSlot, 0);
  const shell = workerFile(['./thread-shell.js', '../backends/multi/thread-shell.js']);
  const worker = new Worker(shell, {
    workerData: { ...data, port: port2, shell: life.shellData(pathToFileURL(entry)), marks },
    transferList: [port2, ...transfer],
  });
  worker.unref();
  // never delivered while the main thread is blocked; the life area says it instead (thread-shell.ts)
  worker.on('error', () => {});
  port1.unref();
  return { worker, port: port1, life };
}

/**
 * Why the thread is gone, or null while it runs. `probe` also looks for it in /proc (a stat: callers
 * rate-limit it), which finds an end no JavaScript saw, e.g. its heap limit.
 */
export function threadGone(t: WatchedThread, probe: boolean): string | null {
  if (t.life.state() !== EXITED && !(probe && t.life.ended())) return null;
  return t.life.message() || 'its thread ended without a word (e.g. it ran out of memory)';
}

/** Lets go of a dead thread's handles (its OS thread is already gone). */
export function dropThread(t: WatchedThread): void {
  t.port.close();
  void t.worker.terminate();
}
