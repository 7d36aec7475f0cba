/**
 * Entry of a destination lane's thread and of the monitor thread (several destinations): a shell that
 * loads the real module and makes the thread's end visible to the plugin's main thread, which sits
 * blocked in read(2) and never sees a Worker's 'error' or 'exit' event (src/plugin/worker-life.ts says
 * more). It imports node built-ins only, so it runs whatever state the rest of the installation is in.
 *
 * At its start it publishes its OS thread id (the main thread and the monitor look for it in
 * /proc/self/task: that also catches an end no JavaScript sees, such as the heap limit). When the thread
 * ends (an uncaught error, process.exit, a module that cannot load) it records why in its life area, marks
 * its destination `error` in the shared figures (so status, metrics and the heartbeat stop calling it
 * healthy at once, even on an idle node) and rings the bell a hook waiting for acknowledgements sleeps on.
 */
import fs from 'node:fs';
import { workerData } from 'node:worker_threads';
import type { ShellData } from '../../plugin/worker-life.js';

export interface ThreadMarks {
  /** the set's Int32 block: the bell to ring, and this thread's OS id slot */
  ints: SharedArrayBuffer;
  bell: number;
  tidSlot: number;
  /** the set's Float64 block and this destination's state slot (null: the monitor, which has none) */
  f: SharedArrayBuffer;
  stateSlot: number | null;
  errorState: number;
}

const d = workerData as { shell: ShellData; marks: ThreadMarks };
const k = d.shell;
const m = d.marks;
const life = new Int32Array(k.life, 0, k.lifeSlots);
const area = new Uint8Array(k.life, k.lifeSlots * 4);
const ints = new Int32Array(m.ints);
Atomics.store(life, k.started, 1);
try {
  const tid = Number(fs.readlinkSync('/proc/thread-self').split('/').pop());
  Atomics.store(life, k.tid, tid);
  Atomics.store(ints, m.tidSlot, tid);
} catch {
  // not Linux: only the shell's own word tells that the thread ended
}

let lastError: Error | null = null;
function gone(message: string): void {
  if (Atomics.load(life, k.gone) !== 0) return;
  const b = Buffer.from(message, 'utf8').subarray(0, area.length);
  area.set(b);
  Atomics.store(life, k.msgLen, b.length);
  if (m.stateSlot !== null) new Float64Array(m.f)[m.stateSlot] = m.errorState;
  Atomics.store(life, k.gone, k.exited);
  Atomics.add(ints, m.bell, 1);
  Atomics.notify(ints, m.bell);
}
process.on('uncaughtExceptionMonitor', (e: Error) => {
  lastError = e;
});
process.on('exit', (code: number) => {
  gone(lastError !== null ? `${lastError.name}: ${lastError.message}` : `its thread exited with code ${code}`);
});
import(k.entry).catch((e: unknown) => {
  lastError = new Error(`cannot load ${k.entry}: ${String((e as Error | null)?.message ?? e)}; the installation is damaged: reinstall clnvault`);
  process.exit(1);
});
