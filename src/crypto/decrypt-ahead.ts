import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads';
import type { RecordCrypt } from './records.js';

/**
 * Decryption of an encrypted backup's change records in a worker thread, ahead of a restore that applies
 * them in file order (docs/encryption.md, "Cost"): the per-record GCM context is about a third of an
 * encrypted restore's CPU, and SQLite's apply cannot run anywhere but on the restore's thread, so the
 * two run side by side. The worker reads the file itself (the reader's descriptor, shared by the
 * threads): the restore's thread only asks for the next batch and takes the plaintexts, no copy or header
 * parse of its own. Only successes come from here: a record the worker could not authenticate, or
 * whose bytes do not match the checksum the reader's own read of its header gives, is decrypted again on
 * the reader's own path, which says what is wrong exactly as it always did. Memory: at most DEPTH + 1
 * batches of BATCH_BYTES and their plaintexts, and the worker's read buffer.
 */

/**
 * Per record of an answer: its offset, status (0: authenticated), CRC of the stored payload, write time
 * (ms), start and length of the plaintext in the answer's bytes.
 */
export const DONE_FIELDS = 6;
/** Stored bytes per batch, and how many batches are decrypted ahead of the one being applied. */
export const BATCH_BYTES = 256 << 10;
const DEPTH = 4;
/** Less than this left to read from where a restore starts: not worth a worker's start-up (~30 ms). */
export const MIN_AHEAD_BYTES = 4 << 20;
/**
 * The worker is given up, and the rest decrypted inline, when the restore has spent more than this share of
 * its time since the first batch waiting for the next (checked once LAG_AFTER_MS have passed; not with
 * `always`). With a CPU of its own the worker stays ahead and the restore never waits; on a machine busy
 * enough that it does not (measured: load 9 on 2 CPUs, where inline won every round), the restore's thread
 * is better off decrypting itself. Break-even: with the worker the restore's thread needs ~1/0.93 of a
 * plain restore's CPU per transaction, inline ~1/0.67, so waiting more than ~28% of the time loses;
 * 20% gives up a little early (bench/README.md, "Encrypted restore").
 */
const LAG_SHARE = 0.2;
const LAG_AFTER_MS = 100;
/** A worker that does not answer within this long is given up (the records are then decrypted inline). */
const STALL_MS = 30_000;

/** Where the worker reads: the backup file's descriptor, its records' header CRC seed, the end of its data, the biggest record it decrypts. */
export interface AheadSource {
  fd: number;
  seed: number;
  end: number;
  maxRecord: number;
}

/**
 * The shared control words (Int32Array over a SharedArrayBuffer): batches answered (the worker counts, the
 * restore waits on it), batches asked for (the restore counts, the worker waits on it), stop. Asking is not
 * a message: a postMessage to a port whose thread is busy in a message handler waits for that handler to
 * end (measured: ~0.8 ms of the restore thread's CPU per request, 20% of it in all, with the worker busy
 * decrypting), so the worker blocks on the counter instead and never runs an event loop handler.
 */
export const CTL_ANSWERED = 0;
export const CTL_ASKED = 1;
export const CTL_STOP = 2;
/** set by the worker once it reads no more (however it ends): the reader closes the file only after it */
export const CTL_DONE = 3;
/** How long close() waits for the worker to be out of its reads (at most one batch's work, or its start-up). */
const CLOSE_WAIT_MS = 1000;

/** A batch: DONE_FIELDS per record, the plaintexts; `last`: the worker has nothing after it. */
export interface DecryptDone {
  id: number;
  recs: Float64Array;
  out: ArrayBuffer;
  last: boolean;
}

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
  private ctl: Int32Array | null = null;
  private nextId = 0;
  /** the worker said it has nothing more: no more requests */
  private last = false;
  /** requested batches not yet received, in order */
  private readonly inflight: number[] = [];
  /** the batch being consumed */
  private current: { done: DecryptDone; out: Buffer; i: number } | null = null;
  private off = false;
  /** when the first batch came (-1: not yet), and how long the restore waited for the worker since (ms) */
  private firstAt = -1;
  private waited = 0;
  /** the worker fell behind and was given up (tests, benches) */
  gaveUp = false;

  private constructor(
    private readonly crypt: RecordCrypt,
    private readonly source: AheadSource,
    private readonly start: number,
    /** give the worker up when it does not keep ahead (LAG_SHARE) */
    private readonly adaptive: boolean,
  ) {}

  /**
   * A pipeline from the record at `start`, or null where the worker's code is not beside this module (the
   * plugin's bundle: it never restores), the rest is too small to be worth it, or (unless `always`) the
   * process may use a single CPU, where the two threads cannot run side by side. Not the load average, and
   * not the CPUs' idle time during the open scan (tried: it read ~0 idle where the worker won): interleaved
   * runs on 2 CPUs (bench/encryption.ts --ahead never,always) had the worker ahead at load 1.9-2.6 (0.83x
   * against 0.66x inline, every round) and at 5-7, behind in one run at load 2 and at 9-14, where the
   * restore waits for it and gives it up (LAG_SHARE) (bench/README.md, "Encrypted restore").
   */
  static start(crypt: RecordCrypt, source: AheadSource, start: number, always = false): DecryptAhead | null {
    if (source.end - start < MIN_AHEAD_BYTES || !existsSync(fileURLToPath(WORKER_URL))) return null;
    if (!always && availableParallelism() < 2) return null;
    return new DecryptAhead(crypt, source, start, !always);
  }

  /** The plaintext of the change record at `offset`, or null: decrypt it inline. */
  take(offset: number): AheadPlain | null {
    if (this.off) return null;
    try {
      return this.find(offset);
    } catch {
      // a worker that failed, stalled or fell behind: everything from here on is decrypted inline
      this.close();
      return null;
    }
  }

  private find(offset: number): AheadPlain | null {
    for (;;) {
      const c = this.current ?? this.advance();
      if (c === null) return null;
      const r = c.done.recs;
      const n = r.length / DONE_FIELDS;
      // records the restore does not apply (stale entries) are passed over
      while (c.i < n && r[c.i * DONE_FIELDS]! < offset) c.i++;
      if (c.i === n) {
        this.current = null;
        continue;
      }
      // a record the batches left out (bigger than a batch), or a step back: decrypted inline
      if (r[c.i * DONE_FIELDS]! !== offset) return null;
      const k = c.i++ * DONE_FIELDS;
      if (r[k + 1] !== 0) return null;
      return { plain: c.out.subarray(r[k + 4]!, r[k + 4]! + r[k + 5]!), crc: r[k + 2]!, timeMs: r[k + 3]! };
    }
  }

  /** Makes the oldest batch in flight the current one, keeping DEPTH more on their way. */
  private advance(): DecryptAhead['current'] {
    if (this.worker === null) this.spawn();
    this.fill();
    const head = this.inflight.shift();
    if (head === undefined) return null;
    const t0 = performance.now();
    const done = this.receive();
    const t1 = performance.now();
    if (done.id !== head) throw new Error('decrypt worker answered out of order');
    // the first batch's wait is the worker's start-up; after it, waiting means it is not keeping ahead
    if (this.firstAt < 0) this.firstAt = t1;
    else {
      this.waited += t1 - t0;
      const since = t1 - this.firstAt;
      if (this.adaptive && since > LAG_AFTER_MS && this.waited > LAG_SHARE * since) {
        this.gaveUp = true;
        throw new Error('decrypt worker behind');
      }
    }
    // requests made after the last batch are answered empty
    if (done.last) this.last = true;
    this.current = { done, out: Buffer.from(done.out), i: 0 };
    this.fill();
    return this.current;
  }

  private fill(): void {
    while (this.inflight.length < DEPTH + (this.current === null ? 1 : 0) && !this.last) {
      const id = this.nextId++;
      Atomics.add(this.ctl!, CTL_ASKED, 1);
      Atomics.notify(this.ctl!, CTL_ASKED);
      this.inflight.push(id);
    }
  }

  private receive(): DecryptDone {
    const deadline = performance.now() + STALL_MS;
    for (;;) {
      const seen = Atomics.load(this.ctl!, CTL_ANSWERED);
      const m = receiveMessageOnPort(this.port!);
      if (m !== undefined) {
        const done = m.message as DecryptDone | { error: string };
        if ('error' in done) throw new Error(done.error);
        return done;
      }
      if (performance.now() > deadline) throw new Error('decrypt worker stalled');
      Atomics.wait(this.ctl!, CTL_ANSWERED, seen, 100);
    }
  }

  private spawn(): void {
    const { port1, port2 } = new MessageChannel();
    const signal = new SharedArrayBuffer(4 * 4);
    this.ctl = new Int32Array(signal);
    this.port = port1;
    this.worker = new Worker(WORKER_URL, {
      workerData: { ...this.crypt.forWorker(), ...this.source, start: this.start, batchBytes: BATCH_BYTES, port: port2, signal },
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
    if (this.ctl !== null) {
      Atomics.store(this.ctl, CTL_STOP, 1);
      Atomics.notify(this.ctl, CTL_ASKED);
      // the reader closes its descriptor next: a worker still reading through it could read whatever file
      // gets that number, or block on it
      if (this.worker !== null) Atomics.wait(this.ctl, CTL_DONE, 0, CLOSE_WAIT_MS);
    }
    this.port?.close();
    void this.worker?.terminate();
    this.worker = null;
  }
}
