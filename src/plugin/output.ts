import { writeSync } from 'node:fs';

/**
 * Everything the plugin says goes to fd 1 as JSON-RPC, written synchronously: the reply to a db_write
 * must be out before the next message is handled, and nothing else may ever reach stdout.
 */

const STDOUT = 1;

/** Set when a compaction worker may also write: whole messages must not interleave on the pipe. */
let outLock: Int32Array | null = null;
let outSlot = 0;
let outAbandoned: (() => boolean) | undefined;

/** `abandoned`: the other writer is gone (a dead thread never releases the lock); taken over then. */
export function shareStdout(lockArray: Int32Array, slot: number, abandoned?: () => boolean): void {
  outLock = lockArray;
  outSlot = slot;
  outAbandoned = abandoned;
}

function writeAll(text: string): void {
  if (outLock === null) return writeLocked(text);
  const a = outLock;
  for (let spins = 0; Atomics.compareExchange(a, outSlot, 0, 1) !== 0; spins++) {
    if (spins > 64 && Atomics.wait(a, outSlot, 1, 50) === 'timed-out' && outAbandoned?.() === true) {
      Atomics.store(a, outSlot, 1);
      break;
    }
  }
  try {
    writeLocked(text);
  } finally {
    Atomics.store(a, outSlot, 0);
    Atomics.notify(a, outSlot, 1);
  }
}

function writeLocked(text: string): void {
  // Usually one write(2) straight from the string (no Buffer to allocate); a pipe that takes only part
  // of it, or is momentarily full, gets the rest from a Buffer below.
  let first = 0;
  try {
    first = writeSync(STDOUT, text);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
  }
  if (first === Buffer.byteLength(text, 'utf8')) return;
  const buf = Buffer.from(text, 'utf8');
  let off = first;
  while (off < buf.length) {
    try {
      off += writeSync(STDOUT, buf, off, buf.length - off);
    } catch (e) {
      // A non-blocking pipe that is momentarily full: wait a moment and go on rather than drop a reply.
      if ((e as NodeJS.ErrnoException).code !== 'EAGAIN') throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    }
  }
}

export type RpcId = string | number;

export function sendResult(id: RpcId, result: unknown): void {
  writeAll(`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":${JSON.stringify(result)}}\n\n`);
}

/** The fixed reply to every accepted db_write, pre-built around the id to keep the hot path short. */
export function sendContinue(id: RpcId): void {
  writeAll(`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":{"result":"continue"}}\n\n`);
}

export function sendError(id: RpcId, code: number, message: string): void {
  writeAll(`{"jsonrpc":"2.0","id":${JSON.stringify(id)},"error":{"code":${code},"message":${JSON.stringify(message)}}}\n\n`);
}

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

export function log(level: LogLevel, message: string): void {
  writeAll(`{"jsonrpc":"2.0","method":"log","params":{"level":"${level}","message":${JSON.stringify(message)}}}\n\n`);
}

/** A custom notification (declared in the manifest's "notifications"): other plugins may subscribe to it. */
export function sendNotification(method: string, params: unknown): void {
  writeAll(`{"jsonrpc":"2.0","method":${JSON.stringify(method)},"params":${JSON.stringify(params)}}\n\n`);
}
