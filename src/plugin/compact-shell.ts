/**
 * The compaction worker thread's entry: a shell that loads compact-worker.js and hands it the requests
 * (worker-life.ts says why). It imports node built-ins only, so it runs whatever state the rest of the
 * installation is in; the slot numbers come in workerData. It answers, itself, every request it cannot
 * pass on: when compact-worker.js cannot be loaded, and when the thread exits (an uncaught error,
 * process.exit); whoever clears RUNNING (compare-and-swap) answers, as the main thread may be answering
 * for a worker it found dead.
 */
import fs from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import type { ShellData } from './worker-life.js';

interface Req {
  id: string | number | null;
  quit?: boolean;
}

const k = (workerData as { shell: ShellData }).shell;
const i32 = new Int32Array((workerData as { sab: SharedArrayBuffer }).sab, 0, k.i32Slots);
const life = new Int32Array(k.life, 0, k.lifeSlots);
const area = new Uint8Array(k.life, k.lifeSlots * 4);
Atomics.store(life, k.started, 1);
try {
  Atomics.store(life, k.tid, Number(fs.readlinkSync('/proc/thread-self').split('/').pop()));
} catch {
  // not Linux: only the shell's own word tells the main thread it ended
}
const nap = new Int32Array(new SharedArrayBuffer(4));
function write(text: string): void {
  const buf = Buffer.from(text, 'utf8');
  for (let spins = 0; Atomics.compareExchange(i32, k.stdoutMutex, 0, 1) !== 0; spins++) {
    if (spins > 64) Atomics.wait(i32, k.stdoutMutex, 1, 50);
  }
  try {
    for (let off = 0; off < buf.length; ) {
      try {
        off += fs.writeSync(1, buf, off, buf.length - off);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
        Atomics.wait(nap, 0, 0, 1);
      }
    }
  } finally {
    Atomics.store(i32, k.stdoutMutex, 0);
    Atomics.notify(i32, k.stdoutMutex, 1);
  }
}
function answer(id: Req['id'], message: string): void {
  let text = '{"jsonrpc":"2.0","method":"log","params":{"level":"error","message":' + JSON.stringify('clnvault: ' + message) + '}}\n\n';
  // whoever clears RUNNING answers: the main thread may be answering for a worker it found dead
  if (Atomics.compareExchange(i32, k.running, 1, 0) === 1 && id !== null) {
    text += '{"jsonrpc":"2.0","id":' + JSON.stringify(id) + ',"error":{"code":-32000,"message":' + JSON.stringify(message) + '}}\n\n';
  }
  write(text);
}
function gone(state: number, message: string): void {
  // a thread that failed to load lives on; if it ends after all, the main thread must know that too
  if (Atomics.load(life, k.gone) !== 0 && state !== k.exited) return;
  const b = Buffer.from(message, 'utf8').subarray(0, area.length);
  area.set(b);
  Atomics.store(life, k.msgLen, b.length);
  Atomics.store(life, k.gone, state);
}
let handle: ((req: Req) => void) | null = null;
let loadError: string | null = null;
let current: Req | null = null;
let lastError: Error | null = null;
const queue: Req[] = [];
function pump(): void {
  while (queue.length > 0 && (handle !== null || loadError !== null)) {
    const req = queue.shift()!;
    if (loadError !== null) {
      answer(req.id, loadError);
      continue;
    }
    current = req;
    handle!(req);
    current = null;
  }
}
parentPort!.on('message', (req: Req) => {
  // retired by the main thread (loading failed): ending here, between messages, no lock is held
  if (req.quit === true) process.exit(0);
  queue.push(req);
  pump();
});
process.on('uncaughtExceptionMonitor', (e: Error) => {
  lastError = e;
});
process.on('exit', (code: number) => {
  const why = 'the compaction worker stopped (' + (lastError !== null ? lastError.message : 'exit code ' + code) +
    '); the backup is unchanged unless the log says it was replaced; run backup-compact again';
  gone(k.exited, why);
  for (const req of current !== null ? [current, ...queue] : queue) answer(req.id, why);
});
import(k.entry)
  .then((m: { handleRequest?: unknown }) => {
    if (typeof m.handleRequest !== 'function') throw new Error('it exports no handleRequest');
    handle = m.handleRequest as (req: Req) => void;
    pump();
  })
  .catch((e: unknown) => {
    loadError =
      'cannot load the compaction worker ' + k.entry + ': ' + String((e as Error | null)?.message ?? e) +
      '; the plugin installation is damaged: reinstall clnvault, then run backup-compact again';
    gone(k.loadingFailed, loadError);
    pump();
  });
