import { workerData, type MessagePort } from 'node:worker_threads';
import { log, sendResult, shareStdout, type RpcId } from '../../plugin/output.js';
import type { DestCompaction } from './compact-dest.js';

/**
 * The thread of one `backup-compact` over a set of destinations (started by the main thread, behind
 * thread-shell.ts): it gives each destination its turn, one at a time, on a port to that destination's
 * lane (lane.ts compactTurn), then answers the request itself, straight to fd 1 under the stdout mutex it
 * shares with the main thread, which sits blocked in read(2) and could not answer until lightningd's next
 * message. An automatic compaction (id null) only logs.
 */

export interface SetCompactionStep {
  index: number;
  url: string;
  /** to the destination's lane; absent when it is skipped without asking it */
  port?: MessagePort;
  skip?: string;
}

export interface SetCompactionData {
  id: RpcId | null;
  steps: SetCompactionStep[];
  stdout: { sab: SharedArrayBuffer; slot: number };
  /** Int32 block and slot of the "running" flag: whoever clears it answers */
  running: { sab: SharedArrayBuffer; slot: number };
}

const data = workerData as SetCompactionData;
const running = new Int32Array(data.running.sab);
shareStdout(new Int32Array(data.stdout.sab), data.stdout.slot);

function turn(step: SetCompactionStep): Promise<DestCompaction> {
  const base = { index: step.index, url: step.url };
  if (step.port === undefined) return Promise.resolve({ ...base, result: 'skipped', reason: step.skip ?? 'not available', at: Date.now() });
  const port = step.port;
  return new Promise((resolve) => {
    let done = false;
    port.on('message', (m: DestCompaction) => {
      done = true;
      resolve(m);
    });
    // the lane's end closes when its thread dies
    port.on('close', () => {
      if (!done) resolve({ ...base, result: 'failed', reason: "its thread ended during its turn; it is restarted and re-seeded (see the log)", at: Date.now() });
    });
    port.postMessage('go');
  });
}

function line(r: DestCompaction): string {
  const sizes = r.before && r.after ? `: ${r.before.entries} entries / ${r.before.bytes} bytes -> ${r.after.entries} entries / ${r.after.bytes} bytes` : '';
  return `compaction of destination ${r.url}: ${r.result}${sizes}${r.reason ? ` (${r.reason})` : ''}`;
}

const results: DestCompaction[] = [];
for (const step of data.steps) {
  const r = await turn(step);
  results.push(r);
  log(r.result === 'failed' ? 'error' : r.result === 'skipped' ? 'warn' : 'info', `clnvault: ${line(r)}`);
}
if (Atomics.compareExchange(running, data.running.slot, 1, 0) === 1 && data.id !== null) sendResult(data.id, { destinations: results });
process.exit(0);
