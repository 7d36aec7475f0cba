import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { downloadBackup } from './download.js';
import { SocketSession } from './session.js';
import type { SocketUrl } from './url.js';
import { REPLY_IN_SAB, REPLY_ON_PORT, type WorkerReply, type WorkerRequest, type WorkerSetup } from './sync.js';

/**
 * The network half of a socket: destination. The main thread is synchronous (the plugin blocks in
 * read(2) on stdin between hooks), so it posts one request and sleeps on a shared flag; this thread does
 * the asynchronous I/O and wakes it with the answer.
 */

const setup = workerData as WorkerSetup;
const port: MessagePort = setup.port;
const flag = new Int32Array(setup.flag);
const fast = new Float64Array(setup.fast);
let session: SocketSession | null = null;

function reply(r: WorkerReply): void {
  // the values are written before the flag is raised (Atomics.store orders them), and read after it
  if (r.ok && r.meta !== null && r.entries === undefined && r.bytes === undefined && r.raw === undefined && r.text === undefined && r.id === undefined && (r.notes ?? []).length === 0) {
    fast[0] = r.meta.protocol;
    fast[1] = r.meta.version;
    fast[2] = r.meta.prevVersion;
    fast[3] = r.meta.versionCount;
    Atomics.store(flag, 0, REPLY_IN_SAB);
  } else {
    port.postMessage(r);
    Atomics.store(flag, 0, REPLY_ON_PORT);
  }
  Atomics.notify(flag, 0);
}

async function handle(req: WorkerRequest, url: SocketUrl): Promise<WorkerReply> {
  switch (req.op) {
    case 'open': {
      const seal = setup.seal === null ? null : { key: { ...setup.seal.key, key: Buffer.from(setup.seal.key.key) }, encryptEmpty: setup.seal.encryptEmpty };
      session = new SocketSession(url, setup.budgetMs, seal);
      const meta = await session.open();
      return { ok: true, meta, id: session.backupId };
    }
    case 'change':
      await session!.change(req.version, Buffer.from(req.packet.buffer, req.packet.byteOffset, req.packet.byteLength));
      return { ok: true, meta: session!.meta! };
    case 'sealedChange':
      await session!.sealedChange(req.version, req.statements);
      return { ok: true, meta: session!.meta! };
    case 'snapshot':
      await session!.snapshot(req.version, req.path);
      return { ok: true, meta: session!.meta! };
    case 'rewind':
      return { ok: true, meta: await session!.rewind(req.target) };
    case 'download': {
      const d = await downloadBackup(url, req.dest, setup.budgetMs);
      return { ok: true, meta: d.meta, entries: d.entries, bytes: d.bytes, raw: d.raw };
    }
    case 'compact': {
      const text = await session!.compact();
      return { ok: true, meta: session!.meta!, text };
    }
    case 'compactSealed': {
      const text = await session!.compactSealed(req.version, req.path, setup.budgetMs);
      return { ok: true, meta: session!.meta!, text };
    }
    case 'close':
      session?.drop();
      return { ok: true, meta: null };
  }
}

port.on('message', (req: WorkerRequest) => {
  handle(req, setup.url).then(
    (r) => reply({ ...r, notes: session?.notes.splice(0) ?? [] }),
    (e: Error) => reply({ ok: false, error: e.message, refused: e.name === 'RefusedError', notes: session?.notes.splice(0) ?? [] }),
  );
});
parentPort?.unref();
