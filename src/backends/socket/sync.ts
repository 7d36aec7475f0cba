import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { MessagePort, Worker } from 'node:worker_threads';
import type { Metadata } from './protocol.js';
import type { Note, SealOptions } from './session.js';
import type { SocketUrl } from './url.js';

/**
 * Synchronous calls into the socket worker (worker.ts): post a request, sleep on a shared flag with
 * Atomics.wait, take the answer with receiveMessageOnPort. This keeps BackupWriter/BackupReader
 * synchronous for every destination, which the plugin's blocking stdin loop and the CLI rely on.
 */

export interface WorkerSetup {
  url: SocketUrl;
  budgetMs: number;
  port: MessagePort;
  /** Int32 [0]: REPLY_NONE until the worker answers, then REPLY_ON_PORT or REPLY_IN_SAB */
  flag: SharedArrayBuffer;
  /** Float64 [protocol, version, prevVersion, versionCount]: the common answer, a plain success with metadata */
  fast: SharedArrayBuffer;
  /** an encrypted clnvault:// backup: the key travels to the worker in memory, as to compaction's */
  seal: { key: { key: Uint8Array; kind: string; fingerprint: string }; encryptEmpty: boolean } | null;
}

export const REPLY_NONE = 0;
/** the answer is a message on the port */
export const REPLY_ON_PORT = 1;
/**
 * the answer is `{ ok: true, meta }` with the metadata in `fast`: no message, so the worker does not
 * have to wake this thread's event loop (which is not even running) for each db_write; only the futex
 */
export const REPLY_IN_SAB = 2;

export type WorkerRequest =
  | { op: 'open' }
  | { op: 'change'; version: number; packet: Uint8Array }
  | { op: 'sealedChange'; version: number; statements: string[] }
  | { op: 'snapshot'; version: number; path: string }
  | { op: 'rewind'; target: number }
  | { op: 'download'; dest: string }
  | { op: 'compact' }
  | { op: 'compactSealed'; version: number; path: string }
  | { op: 'close' };

export type WorkerReply =
  | { ok: true; meta: Metadata | null; entries?: number; bytes?: number; raw?: boolean; text?: string; notes?: Note[]; /** 'open': the server's backup id (hex), null if it gave none */ id?: string | null }
  | { ok: false; error: string; refused: boolean; notes?: Note[] };

/**
 * The plugin's entry is bundled into dist/src/plugin/main.js, so this module's URL may be the bundle's;
 * the worker file stays at dist/src/backends/socket/worker.js either way.
 */
function workerPath(): string {
  for (const rel of ['./worker.js', '../backends/socket/worker.js']) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(p)) return p;
  }
  throw new Error(`cannot find the socket worker (worker.js) next to ${fileURLToPath(import.meta.url)}; reinstall clnvault`);
}

export class SyncWorker {
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly flag = new Int32Array(new SharedArrayBuffer(4));
  private readonly fast = new Float64Array(new SharedArrayBuffer(4 * 8));
  private readonly wt: typeof import('node:worker_threads');
  /** set when a call gave up waiting: the worker's late answer would be taken for the next call's */
  private broken: string | null = null;

  constructor(
    url: SocketUrl,
    budgetMs: number,
    private readonly onNote: (n: Note) => void,
    seal: SealOptions | null = null,
  ) {
    // loaded lazily: file: destinations (and the plugin's start-up) never pay for worker_threads
    this.wt = createRequire(import.meta.url)('node:worker_threads') as typeof import('node:worker_threads');
    const { port1, port2 } = new this.wt.MessageChannel();
    this.port = port1;
    const setup: WorkerSetup = {
      url,
      budgetMs,
      port: port2,
      flag: this.flag.buffer as SharedArrayBuffer,
      fast: this.fast.buffer as SharedArrayBuffer,
      seal: seal === null ? null : { key: { key: seal.key.key, kind: seal.key.kind, fingerprint: seal.key.fingerprint }, encryptEmpty: seal.encryptEmpty },
    };
    this.worker = new this.wt.Worker(workerPath(), { workerData: setup, transferList: [port2] });
    this.worker.unref();
    this.port.unref();
  }

  /**
   * Blocks until the worker answers. `maxMs` is a backstop only (the worker enforces remote_timeout
   * itself); it guards against a worker that died without answering.
   */
  call(req: WorkerRequest, maxMs: number, transfer: ArrayBuffer[] = []): WorkerReply {
    if (this.broken !== null) return { ok: false, refused: true, error: this.broken };
    Atomics.store(this.flag, 0, REPLY_NONE);
    this.port.postMessage(req, transfer);
    const end = Date.now() + maxMs;
    for (;;) {
      const left = end - Date.now();
      if (left <= 0) {
        this.broken = `the socket worker did not answer within ${Math.round(maxMs / 1000)} s; the connection is given up`;
        this.terminate();
        return { ok: false, refused: false, error: this.broken };
      }
      if (Atomics.wait(this.flag, 0, REPLY_NONE, left) !== 'timed-out' || Atomics.load(this.flag, 0) !== REPLY_NONE) break;
    }
    if (Atomics.load(this.flag, 0) === REPLY_IN_SAB) {
      const f = this.fast;
      return { ok: true, meta: { protocol: f[0]!, version: f[1]!, prevVersion: f[2]!, versionCount: f[3]! } };
    }
    const m = this.wt.receiveMessageOnPort(this.port);
    if (m === undefined) return { ok: false, refused: false, error: 'the socket worker woke without an answer' };
    const r = m.message as WorkerReply;
    for (const n of r.notes ?? []) this.onNote(n);
    return r;
  }

  terminate(): void {
    void this.worker.terminate();
  }
}
