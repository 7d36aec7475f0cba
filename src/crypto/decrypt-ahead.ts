import { existsSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import type { RecordCrypt } from './records.js';

/**
 * Decryption of an encrypted backup's change records in a worker thread, ahead of a restore that applies
 * them in file order (docs/encryption.md, "Cost"): the per-record GCM context is about a third of an
 * encrypted restore's CPU, and SQLite's apply cannot run anywhere but on the restore's thread, so the
 * two run side by side. Only successes come from here: a record the worker could not authenticate, or
 * whose bytes do not match the checksum its header gives, is decrypted again on the reader's own path,
 * which says what is wrong exactly as it always did. Memory: at most DEPTH + 1 batches of BATCH_BYTES.
 */

/** Per record of a job: offset, version, record flags, start and length of its stored payload in the job's bytes. */
export const JOB_FIELDS = 5;
/** Per record of an answer: status (0: authenticated), CRC of the stored payload, write time (ms), start and length of the plaintext. */
export const DONE_FIELDS = 5;
/** Stored bytes per batch, and how many batches are decrypted ahead of the one being applied. */
export const BATCH_BYTES = 256 << 10;
const DEPTH = 2;
/** Less than this left to read from where a restore starts: not worth a worker's start-up (~30 ms). */
export const MIN_AHEAD_BYTES = 4 << 20;
/** A worker that does not answer within this long is given up (the records are then decrypted inline). */
const STALL_MS = 30_000;

export interface DecryptJob {
  id: number;
  recs: Float64Array;
  buf: ArrayBuffer;
}

export interface DecryptDone {
  id: number;
  recs: Float64Array;
  out: ArrayBuffer;
}

/** The next batch of change records from `from`: the job's records and bytes, and where the batch after it starts (null: none). */
export type Batcher = (from: number) => { recs: Float64Array; buf: ArrayBuffer; next: number | null } | null;

/** An authenticated plaintext, with what the reader checks it against. */
export interface AheadPlain {
  plain: Buffer;
  crc: number;
  timeMs: number;
}

const WORKER_URL = new URL('./decrypt-worker.js', import.meta.url);

export class DecryptAhead {
  private worker: Worker | null = null;
  private port: MessagePort | null = null;
  private sig: Int32Array | null = null;
  private nextId = 0;
  /** where the next batch starts; null once the batcher said there is none */
  private next: number | null;
  /** dispatched batches not yet received, in order: the offsets of their records */
  private readonly inflight: Array<{ id: number; offsets: number[] }> = [];
  /** the batch being consumed */
  private current: { offsets: number[]; done: DecryptDone; out: Buffer; i: number } | null = null;
  private off = false;

  private constructor(
    private readonly crypt: RecordCrypt,
    private readonly batcher: Batcher,
    start: number,
  ) {
    this.next = start;
  }

  /**
   * A pipeline from the record at `start`, or null where the worker's code is not beside this module (the
   * plugin's bundle: it never restores), the rest is too small to be worth it, or (unless `always`) no core
   * looks free: the worker only shortens a restore that has a core to itself. Without one it adds the
   * copies to and from the worker to a CPU already shared (measured: a lower rate at load 6 on 2 cores).
   */
  static start(crypt: RecordCrypt, batcher: Batcher, start: number, remaining: number, always = false): DecryptAhead | null {
    if (remaining < MIN_AHEAD_BYTES || !existsSync(fileURLToPath(WORKER_URL))) return null;
    if (!always && loadavg()[0]! > availableParallelism() - 1) return null;
    return new DecryptAhead(crypt, batcher, start);
  }

  /** The plaintext of the change record at `offset`, or null: decrypt it inline. */
  take(offset: number): AheadPlain | null {
    if (this.off) return null;
    try {
      return this.find(offset);
    } catch {
      // a worker that failed or stalled: everything from here on is decrypted inline
      this.close();
      return null;
    }
  }

  private find(offset: number): AheadPlain | null {
    for (;;) {
      const c = this.current ?? this.advance();
      if (c === null) return null;
      // records the restore does not apply (stale entries) are passed over
      while (c.i < c.offsets.length && c.offsets[c.i]! < offset) c.i++;
      if (c.i === c.offsets.length) {
        this.current = null;
        continue;
      }
      // a record the batches left out (bigger than a batch), or a step back: decrypted inline
      if (c.offsets[c.i]! !== offset) return null;
      const k = c.i++ * DONE_FIELDS;
      const r = c.done.recs;
      if (r[k] !== 0) return null;
      return { plain: c.out.subarray(r[k + 3]!, r[k + 3]! + r[k + 4]!), crc: r[k + 1]!, timeMs: r[k + 2]! };
    }
  }

  /** Makes the oldest batch in flight the current one, keeping DEPTH more on their way. */
  private advance(): DecryptAhead['current'] {
    if (this.worker === null) this.spawn();
    this.fill();
    const head = this.inflight.shift();
    if (head === undefined) return null;
    const done = this.receive();
    if (done.id !== head.id) throw new Error('decrypt worker answered out of order');
    this.current = { offsets: head.offsets, done, out: Buffer.from(done.out), i: 0 };
    this.fill();
    return this.current;
  }

  private fill(): void {
    while (this.inflight.length < DEPTH + (this.current === null ? 1 : 0) && this.next !== null) {
      const b = this.batcher(this.next);
      if (b === null || b.recs.length === 0) {
        this.next = null;
        return;
      }
      const id = this.nextId++;
      const offsets: number[] = [];
      for (let k = 0; k < b.recs.length; k += JOB_FIELDS) offsets.push(b.recs[k]!);
      const job: DecryptJob = { id, recs: b.recs, buf: b.buf };
      this.port!.postMessage(job, [b.buf, b.recs.buffer as ArrayBuffer]);
      this.inflight.push({ id, offsets });
      this.next = b.next;
    }
  }

  private receive(): DecryptDone {
    const deadline = performance.now() + STALL_MS;
    for (;;) {
      const seen = Atomics.load(this.sig!, 0);
      const m = receiveMessageOnPort(this.port!);
      if (m !== undefined) {
        const done = m.message as DecryptDone | { error: string };
        if ('error' in done) throw new Error(done.error);
        return done;
      }
      if (performance.now() > deadline) throw new Error('decrypt worker stalled');
      Atomics.wait(this.sig!, 0, seen, 100);
    }
  }

  private spawn(): void {
    const { port1, port2 } = new MessageChannel();
    const signal = new SharedArrayBuffer(4);
    this.sig = new Int32Array(signal);
    this.port = port1;
    this.worker = new Worker(WORKER_URL, {
      workerData: { ...this.crypt.forWorker(), port: port2, signal },
      transferList: [port2],
    });
    // never what keeps a process alive; its errors show as a stall or an error answer
    this.worker.unref();
    this.worker.on('error', () => undefined);
  }

  close(): void {
    this.off = true;
    this.current = null;
    this.inflight.length = 0;
    this.port?.close();
    void this.worker?.terminate();
    this.worker = null;
  }
}
