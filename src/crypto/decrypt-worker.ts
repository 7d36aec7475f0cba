import { workerData, type MessagePort } from 'node:worker_threads';
import { crc32 } from 'node:zlib';
import { DONE_FIELDS, JOB_FIELDS, type DecryptDone, type DecryptJob } from './decrypt-ahead.js';
import { TYPE_CHANGE } from '../backends/file/v2/codec.js';
import { parsePrefix, RecordCrypt } from './records.js';

/**
 * The worker of src/crypto/decrypt-ahead.ts: decrypts and authenticates batches of stored change payloads
 * with the backup's key, in the order they come, and answers each with the plaintexts. A record that fails
 * for any reason is answered with a non-zero status and no plaintext: the reader decrypts it again itself
 * and reports it as it always did.
 */

const data = workerData as { key: Buffer; backupId: Buffer; fingerprint: string; port: MessagePort; signal: SharedArrayBuffer };
const crypt = new RecordCrypt(Buffer.from(data.key), Buffer.from(data.backupId), data.fingerprint);
const sig = new Int32Array(data.signal);
const port = data.port;

port.on('message', (job: DecryptJob) => {
  let answer: DecryptDone | { id: number; error: string };
  const transfer: ArrayBuffer[] = [];
  try {
    const input = Buffer.from(job.buf);
    const n = job.recs.length / JOB_FIELDS;
    const res = new Float64Array(n * DONE_FIELDS);
    const plains: Buffer[] = [];
    let total = 0;
    for (let i = 0; i < n; i++) {
      const j = i * JOB_FIELDS;
      const stored = input.subarray(job.recs[j + 3]!, job.recs[j + 3]! + job.recs[j + 4]!);
      const k = i * DONE_FIELDS;
      res[k + 1] = crc32(stored);
      try {
        const { plain } = crypt.open({ type: TYPE_CHANGE, flags: job.recs[j + 2]!, version: job.recs[j + 1]!, parts: 0 }, stored);
        res[k + 2] = parsePrefix(stored, TYPE_CHANGE).timeMs;
        res[k + 3] = total;
        res[k + 4] = plain.length;
        plains.push(plain);
        total += plain.length;
      } catch {
        res[k] = 1;
      }
    }
    // an ArrayBuffer of its own, so that it can be handed over without a copy
    const out = new ArrayBuffer(total);
    const view = Buffer.from(out);
    let at = 0;
    for (const p of plains) at += p.copy(view, at);
    answer = { id: job.id, recs: res, out };
    transfer.push(out, res.buffer);
  } catch (e) {
    answer = { id: job.id, error: (e as Error).message };
  }
  port.postMessage(answer, transfer);
  Atomics.add(sig, 0, 1);
  Atomics.notify(sig, 0);
});
