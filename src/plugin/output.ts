import { writeSync } from 'node:fs';

/**
 * Everything the plugin says goes to fd 1 as JSON-RPC, written synchronously: the reply to a db_write
 * must be out before the next message is handled, and nothing else may ever reach stdout.
 */

const STDOUT = 1;

function writeAll(text: string): void {
  const buf = Buffer.from(text, 'utf8');
  let off = 0;
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
