/**
 * The least a db_write plugin written in Node can do, for the plugin bench to run beside clnvault's:
 * read the request from a blocking stdin, JSON.parse it, append the raw message to a file, fdatasync,
 * answer. No version checks, no record format, no checksum. The gap between this and the bare
 * write+fdatasync floor is what the protocol itself costs on this machine (two pipe wake-ups per call,
 * moving and parsing the JSON); the gap between this and clnvault is what clnvault adds.
 *
 * With `seal`, each message is sealed with AES-256-GCM (Node's crypto, a counter nonce, 60 bytes of
 * AAD, the tag appended) before it is written, the next message's cipher made right after answering, as
 * clnvault does: the least per-record encryption costs a Node plugin here (bench/encryption.ts).
 *
 *   node dist/bench/minimal-plugin.js [seal]   (cwd: a directory it may write minimal.bin into)
 */
import { createCipheriv, randomBytes, type CipherGCM } from 'node:crypto';
import { fdatasyncSync, openSync, readSync, writeSync } from 'node:fs';

const SEAL = process.argv[2] === 'seal';
const key = randomBytes(32);
const nonce = Buffer.alloc(12);
const aad = Buffer.alloc(60);
let counter = 0;
let ready: CipherGCM | null = null;
const cipher = (): CipherGCM => {
  nonce.writeUInt32BE(counter++, 8);
  return createCipheriv('aes-256-gcm', key, nonce, { authTagLength: 16 });
};
const seal = (b: Buffer): Buffer => {
  const c = ready ?? cipher();
  ready = null;
  c.setAAD(aad);
  const ct = c.update(b);
  c.final();
  return Buffer.concat([ct, c.getAuthTag()]);
};

const out = openSync('minimal.bin', 'w');
let buf = Buffer.allocUnsafe(1 << 20);
let have = 0;
let pos = 0;
for (;;) {
  if (have === buf.length) {
    const bigger = Buffer.allocUnsafe(buf.length * 2);
    buf.copy(bigger, 0, 0, have);
    buf = bigger;
  }
  const n = readSync(0, buf, have, buf.length - have, null);
  if (n === 0) process.exit(0);
  let from = Math.max(0, have - 1);
  have += n;
  let sep: number;
  let start = 0;
  while ((sep = buf.indexOf('\n\n', from)) >= 0 && sep + 1 < have) {
    const msg = JSON.parse(buf.toString('latin1', start, sep)) as { id: string | number; method: string };
    if (msg.method === 'db_write') {
      const rec = SEAL ? seal(buf.subarray(start, sep)) : buf.subarray(start, sep);
      writeSync(out, rec, 0, rec.length, pos);
      pos += rec.length;
      fdatasyncSync(out);
      writeSync(1, `{"jsonrpc":"2.0","id":${JSON.stringify(msg.id)},"result":{"result":"continue"}}\n\n`);
      if (SEAL) ready = cipher();
    } else if (msg.method === 'getmanifest') {
      // lightningd requires "options" and "rpcmethods" (bench/e2e.ts runs this under a real lightningd)
      writeSync(1, `{"jsonrpc":"2.0","id":${JSON.stringify(msg.id)},"result":{"options":[],"rpcmethods":[],"hooks":[{"name":"db_write"}],"dynamic":false}}\n\n`);
    } else {
      writeSync(1, `{"jsonrpc":"2.0","id":${JSON.stringify(msg.id)},"result":{}}\n\n`);
    }
    start = from = sep + 2;
  }
  buf.copy(buf, 0, start, have);
  have -= start;
}
