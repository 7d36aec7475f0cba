import { readSync } from 'node:fs';
import { workerData, type MessagePort } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
import { CTL_ANSWERED, CTL_ASKED, CTL_DONE, CTL_STOP, type AheadSource, type DecryptDone } from './decrypt-ahead.js';
import { FLAG_ENCRYPTED, FLAG_PRAGMA_ONLY, parseRecordHeader, RECORD_HEADER_LEN, RECORD_OVERHEAD, TYPE_CHANGE } from '../backends/file/v2/codec.js';
import { parsePrefix, RecordCrypt } from './records.js';

/**
 * The worker of src/crypto/decrypt-ahead.ts: reads the backup's change records from where the restore
 * starts (the reader's descriptor; the file's other records are passed over), decrypts and authenticates
 * them with the backup's key, and answers each request with the next batch's plaintexts. A record that
 * fails for any reason is answered with a non-zero status and no plaintext: the reader decrypts it again
 * itself and reports it as it always did. Where the records stop making sense (a header that does not
 * check: the reader's own walk says why) the batches end.
 */

const data = workerData as AheadSource & {
  key: Buffer;
  backupId: Buffer;
  fingerprint: string;
  start: number;
  batchBytes: number;
  port: MessagePort;
  signal: SharedArrayBuffer;
};
const ctl = new Int32Array(data.signal);
// the restore closes the file once this is set (decrypt-ahead.ts, close()), however this thread ends
function markDone(): void {
  Atomics.store(ctl, CTL_DONE, 1);
  Atomics.notify(ctl, CTL_DONE);
}
process.on('exit', markDone);
const crypt = new RecordCrypt(Buffer.from(data.key), Buffer.from(data.backupId), data.fingerprint);
const port = data.port;
const { fd, seed, end, maxRecord, batchBytes } = data;
/** one batch's stored bytes, and room for the record that crosses its end */
const win = Buffer.allocUnsafe(batchBytes + maxRecord + RECORD_OVERHEAD);
/** where the next batch starts; null: nothing more */
let next: number | null = data.start;

function readAt(pos: number, n: number): number {
  let got = 0;
  while (got < n) {
    const r = readSync(fd, win, got, n - got, pos + got);
    if (r <= 0) break;
    got += r;
  }
  return got;
}

/** Where the next batch starts when this one stopped at `o` for want of bytes: none if nothing was read (the file shrank). */
function progress(o: number, base: number): number | null {
  return o > base ? o : null;
}

function batch(): { recs: Float64Array; out: ArrayBuffer } {
  const fields: number[] = [];
  const plains: Buffer[] = [];
  let total = 0;
  if (next === null) return { recs: new Float64Array(0), out: new ArrayBuffer(0) };
  const base = next;
  const have = readAt(base, Math.min(win.length, end - base));
  let o = base;
  let stored = 0;
  next = null;
  while (o < end && end - o >= RECORD_OVERHEAD) {
    if (stored >= batchBytes) {
      next = o;
      break;
    }
    if (o + RECORD_HEADER_LEN > base + have) {
      next = progress(o, base);
      break;
    }
    const h = parseRecordHeader(win.subarray(o - base, o - base + RECORD_HEADER_LEN), seed);
    if (typeof h === 'string' || h.length > end - o - RECORD_OVERHEAD) break;
    if (h.type === TYPE_CHANGE && RECORD_HEADER_LEN + h.length <= maxRecord) {
      if (o + RECORD_HEADER_LEN + h.length > base + have) {
        // not all in this read: the next batch starts with it
        next = progress(o, base);
        break;
      }
      const payload = win.subarray(o - base + RECORD_HEADER_LEN, o - base + RECORD_HEADER_LEN + h.length);
      let status = 0;
      let timeMs = 0;
      let plainLen = 0;
      try {
        const { plain } = crypt.open({ type: TYPE_CHANGE, flags: FLAG_ENCRYPTED | (h.flags & FLAG_PRAGMA_ONLY), version: h.version, parts: 0 }, payload);
        timeMs = parsePrefix(payload, TYPE_CHANGE).timeMs;
        plainLen = plain.length;
        plains.push(plain);
      } catch {
        status = 1;
      }
      // DONE_FIELDS per record
      fields.push(o, status, crc32(payload), timeMs, total, plainLen);
      total += plainLen;
      stored += h.length;
    }
    o += RECORD_OVERHEAD + h.length;
  }
  // an ArrayBuffer of its own, so that it can be handed over without a copy
  const out = new ArrayBuffer(total);
  const view = Buffer.from(out);
  let at = 0;
  for (const p of plains) at += p.copy(view, at);
  return { recs: Float64Array.from(fields), out };
}

/** Waits until batch `id` is asked for; false once the restore is done with this worker. */
function asked(id: number): boolean {
  for (;;) {
    if (Atomics.load(ctl, CTL_STOP) !== 0) return false;
    const n = Atomics.load(ctl, CTL_ASKED);
    if (n > id) return true;
    Atomics.wait(ctl, CTL_ASKED, n);
  }
}

// batch by batch, as the restore asks (CTL_ASKED): never a message handler (decrypt-ahead.ts, CTL_ANSWERED)
for (let id = 0; asked(id); id++) {
  let answer: DecryptDone | { id: number; error: string };
  const transfer: ArrayBuffer[] = [];
  try {
    const { recs, out } = batch();
    answer = { id, recs, out, last: next === null };
    transfer.push(out, recs.buffer as ArrayBuffer);
  } catch (e) {
    answer = { id, error: (e as Error).message };
  }
  port.postMessage(answer, transfer);
  Atomics.add(ctl, CTL_ANSWERED, 1);
  Atomics.notify(ctl, CTL_ANSWERED);
}
markDone();
port.close();
