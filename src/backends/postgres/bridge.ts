import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import type { MessagePort, Worker } from 'node:worker_threads';
import { PG_REPLY_IN_SAB, PG_REPLY_NONE, type PgNote, type PgReply, type PgRequest, type PgWorkerData } from './protocol.js';
import type { PgTarget } from './url.js';

/**
 * A synchronous front for the worker thread that owns a PostgreSQL connection. The backup interfaces
 * are synchronous (the plugin answers each db_write from a main thread that otherwise sleeps in
 * read(2) on stdin), so each call posts the request and sleeps on an Atomics word until the worker
 * has put the reply on a MessagePort, which is then taken with receiveMessageOnPort: no event-loop turn
 * on this side, and the await lives entirely in the worker.
 *
 * The wait is bounded: the worker gives up after `timeoutMs` of reconnecting; this side waits a little
 * longer than that, and if even then no reply came (the worker is stuck), the bridge is broken for good
 * and every later call fails at once, so the hook refuses instead of hanging lightningd.
 */

export class PgBridgeError extends Error {
  constructor(message: string, readonly code?: string) {
    super(message);
    this.name = 'BackupError';
  }
}

/** The plugin is bundled into dist/src/plugin/main.js, so this module may run from there or from its own folder. */
function workerPath(): string {
  for (const rel of ['./worker.js', '../backends/postgres/worker.js']) {
    const p = fileURLToPath(new URL(rel, import.meta.url));
    if (existsSync(p)) return p;
  }
  throw new PgBridgeError('cannot find the PostgreSQL worker (dist/src/backends/postgres/worker.js): rebuild clnvault');
}

const GRACE_MS = 5_000;

export class PgBridge {
  private readonly worker: Worker;
  private readonly port: MessagePort;
  private readonly flag: Int32Array;
  private readonly fast = new Float64Array(new SharedArrayBuffer(2 * 8));
  private readonly receive: (port: MessagePort) => { message: PgReply } | undefined;
  private nextId = 1;
  private broken: string | null = null;

  constructor(
    readonly target: PgTarget,
    readonly timeoutMs: number,
    applicationName: string,
    /** where the worker's notes go (lost connection, reconnected): the plugin's log */
    private readonly onNote: (n: PgNote) => void = () => {},
  ) {
    // loaded only for PostgreSQL URLs: a plugin writing to a file never pays for it
    const wt = createRequire(import.meta.url)('node:worker_threads') as typeof import('node:worker_threads');
    this.receive = wt.receiveMessageOnPort as (port: MessagePort) => { message: PgReply } | undefined;
    const sab = new SharedArrayBuffer(4);
    this.flag = new Int32Array(sab);
    const { port1, port2 } = new wt.MessageChannel();
    this.port = port1;
    const data: PgWorkerData = {
      sab,
      fast: this.fast.buffer as SharedArrayBuffer,
      port: port2 as unknown as PgWorkerData['port'],
      connectionString: target.connectionString,
      backup: target.backup,
      applicationName,
      timeoutMs,
    };
    this.worker = new wt.Worker(workerPath(), { workerData: data, transferList: [port2] });
    // neither the worker nor its port may keep a CLI process alive after its work is done
    this.worker.unref();
    this.port.unref();
  }

  /** `waitMs` null: an operation whose length grows with the data (snapshots); the worker bounds each query. */
  call<T>(req: PgRequest, waitMs: number | null = this.timeoutMs + GRACE_MS): T {
    if (this.broken !== null) throw new PgBridgeError(this.broken);
    const id = this.nextId++;
    this.worker.postMessage({ id, req });
    const deadline = waitMs === null ? Infinity : Date.now() + waitMs;
    for (;;) {
      // clear, then look, then sleep: the worker posts (or fills `fast`) before it raises the flag, so a reply is never missed
      if (Atomics.exchange(this.flag, 0, PG_REPLY_NONE) === PG_REPLY_IN_SAB && this.fast[0] === id) return this.fast[1] as T;
      const m = this.receive(this.port);
      if (m !== undefined) {
        const reply = m.message;
        for (const n of reply.notes ?? []) this.onNote(n);
        if (reply.id !== id) continue;
        if (reply.ok) return reply.value as T;
        throw new PgBridgeError(reply.message, reply.code);
      }
      const left = deadline - Date.now();
      if (left <= 0 || Atomics.wait(this.flag, 0, PG_REPLY_NONE, left === Infinity ? undefined : left) === 'timed-out') {
        this.broken = `no answer from the PostgreSQL connection within ${Math.round((waitMs ?? 0) / 1000)} s; giving up on it`;
        void this.worker.terminate();
        throw new PgBridgeError(this.broken);
      }
    }
  }

  close(): void {
    if (this.broken === null) {
      try {
        this.call({ op: 'close' });
      } catch {
        // closing: nothing left to protect
      }
    }
    this.broken = 'closed';
    void this.worker.terminate();
  }
}
