import { existsSync } from 'node:fs';
import { I32_SLOTS, RUNNING, STDOUT_MUTEX } from '../compact/sync.js';

/**
 * The compaction worker's shell: the code a worker thread runs first, which then loads the real worker
 * (compact-worker.js) and hands it the requests.
 *
 * Why: the plugin's main thread sits blocked in read(2), so a Worker's 'error' and 'exit' events are never
 * delivered to it. A worker whose file is missing, whose module throws while loading, or which dies, would
 * leave `backup-compact` unanswered and the compaction RUNNING forever. The shell is source text carried
 * inside the plugin's own bundle (started with `eval: true`), so it runs whatever state the worker's files
 * are in. It answers every request it cannot pass on, clears RUNNING, and tells the main thread through
 * the worker's own shared "life" area (WorkerLife: gone or not, why, and the thread id for a death no
 * JavaScript sees, such as running out of heap), so that the next request starts a new worker. Each worker
 * has its own life area: a worker being retired can never be taken for its successor.
 *
 * It is plain CommonJS text rather than a function's toString(): the bundler rewrites `require` and
 * renames imported constants, which the eval'd text could not see. The slot numbers come in workerData.
 */
export const WORKER_SHELL = `'use strict';
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const k = workerData.shell;
const i32 = new Int32Array(workerData.sab, 0, k.i32Slots);
const life = new Int32Array(k.life, 0, k.lifeSlots);
const area = new Uint8Array(k.life, k.lifeSlots * 4);
try {
  Atomics.store(life, k.tid, Number(fs.readlinkSync('/proc/thread-self').split('/').pop()));
} catch {}
const nap = new Int32Array(new SharedArrayBuffer(4));
function write(text) {
  const buf = Buffer.from(text, 'utf8');
  for (let spins = 0; Atomics.compareExchange(i32, k.stdoutMutex, 0, 1) !== 0; spins++) {
    if (spins > 64) Atomics.wait(i32, k.stdoutMutex, 1, 50);
  }
  try {
    for (let off = 0; off < buf.length; ) {
      try {
        off += fs.writeSync(1, buf, off, buf.length - off);
      } catch (e) {
        if (e.code !== 'EAGAIN') throw e;
        Atomics.wait(nap, 0, 0, 1);
      }
    }
  } finally {
    Atomics.store(i32, k.stdoutMutex, 0);
    Atomics.notify(i32, k.stdoutMutex, 1);
  }
}
function answer(id, message) {
  let text = '{"jsonrpc":"2.0","method":"log","params":{"level":"error","message":' + JSON.stringify('clnvault: ' + message) + '}}\\n\\n';
  // whoever clears RUNNING answers: the main thread may be answering for a worker it found dead
  if (Atomics.compareExchange(i32, k.running, 1, 0) === 1 && id !== null) {
    text += '{"jsonrpc":"2.0","id":' + JSON.stringify(id) + ',"error":{"code":-32000,"message":' + JSON.stringify(message) + '}}\\n\\n';
  }
  write(text);
}
function gone(state, message) {
  // a thread that failed to load lives on; if it ends after all, the main thread must know that too
  if (Atomics.load(life, k.gone) !== 0 && state !== k.exited) return;
  const b = Buffer.from(message, 'utf8').subarray(0, area.length);
  area.set(b);
  Atomics.store(life, k.msgLen, b.length);
  Atomics.store(life, k.gone, state);
}
let handle = null;
let loadError = null;
let current = null;
let lastError = null;
const queue = [];
function pump() {
  while (queue.length > 0 && (handle !== null || loadError !== null)) {
    const req = queue.shift();
    if (loadError !== null) {
      answer(req.id, loadError);
      continue;
    }
    current = req;
    handle(req);
    current = null;
  }
}
parentPort.on('message', (req) => {
  // retired by the main thread (loading failed): ending here, between messages, no lock is held
  if (req.quit === true) process.exit(0);
  queue.push(req);
  pump();
});
process.on('uncaughtExceptionMonitor', (e) => {
  lastError = e;
});
process.on('exit', (code) => {
  const why = 'the compaction worker stopped (' + (lastError ? String(lastError && lastError.message) : 'exit code ' + code) +
    '); the backup is unchanged unless the log says it was replaced; run backup-compact again';
  gone(k.exited, why);
  for (const req of current !== null ? [current, ...queue] : queue) answer(req.id, why);
});
import(k.entry).then(
  (m) => {
    if (typeof m.handleRequest !== 'function') throw new Error('it exports no handleRequest');
    handle = m.handleRequest;
    pump();
  },
).catch((e) => {
  loadError = 'cannot load the compaction worker ' + k.entry + ': ' + String(e && e.message) +
    '; the plugin installation is damaged: reinstall clnvault, then run backup-compact again';
  gone(k.loadingFailed, loadError);
  pump();
});
`;

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
  loadingFailed: number;
  exited: number;
}

/** life area slots */
const GONE = 0;
const TID = 1;
const MSG_LEN = 2;
const LIFE_SLOTS = 4;
const LIFE_MSG_BYTES = 1024;
/** GONE values */
export const LOADING_FAILED = 1;
export const EXITED = 2;

/** The main thread's view of one worker's life area. */
export class WorkerLife {
  readonly sab = new SharedArrayBuffer(LIFE_SLOTS * 4 + LIFE_MSG_BYTES);
  private readonly i32 = new Int32Array(this.sab, 0, LIFE_SLOTS);

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
   * which also covers an end no JavaScript sees (the worker's heap limit). A stat, so callers rate-limit it.
   */
  ended(): boolean {
    if (Atomics.load(this.i32, GONE) === EXITED) return true;
    const tid = Atomics.load(this.i32, TID);
    return tid > 0 && !existsSync(`/proc/self/task/${tid}`);
  }
}
