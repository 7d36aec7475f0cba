import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SimNode } from '../../src/sim/lightningd.js';
import { runCli } from './cli.js';
import { ServerProc, startServer } from './socket-rig.js';
import { dump } from './sqlite.js';

/**
 * The pieces of the several-destinations tests: the built plugin under the lightningd simulator, a local
 * file and a real `clnvault server` over TCP on 127.0.0.1, and polling of clnvault-status.
 */

export async function initFile(path: string): Promise<string> {
  const url = `file://${path}`;
  const r = await runCli(['init', url]);
  assert.equal(r.code, 0, r.stderr);
  return url;
}

/** `cwd`: where the command runs (a clnvault:// URL's key file is found there: the network directory). */
export async function restoreDump(url: string, dir: string, cwd?: string): Promise<string> {
  const dest = join(dir, `restored-${Date.now()}-${Math.random().toString(36).slice(2)}.sqlite3`);
  const r = await runCli(['restore', url, dest], cwd !== undefined ? { cwd } : {});
  assert.equal(r.code, 0, r.stderr);
  return dump(dest);
}

export interface Rig {
  netDir: string;
  fileUrl: string;
  serverFile: string;
  serverUrl: string;
  port: number;
  server: ServerProc;
  socketUrl: string;
}

/** A file destination and a clnvault server (socket:), listed in that order in backup.lock with `lock`'s keys. */
export async function rig(dir: () => string, lock: Record<string, unknown>): Promise<Rig> {
  const netDir = dir();
  const d = dir();
  const fileUrl = await initFile(join(d, 'local.bkp'));
  const serverFile = join(d, 'server.bkp');
  const serverUrl = await initFile(serverFile);
  const { proc, port } = await startServer(serverUrl);
  const socketUrl = `socket:127.0.0.1:${port}`;
  writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ destinations: [fileUrl, socketUrl], ...lock }));
  return { netDir, fileUrl, serverFile, serverUrl, port, server: proc, socketUrl };
}

/** Two fresh file destinations (a.bkp, b.bkp) and a network directory whose backup.lock lists them with `lock`'s keys. */
export async function twoFiles(dir: () => string, lock: Record<string, unknown>): Promise<{ netDir: string; a: string; b: string; bPath: string }> {
  const netDir = dir();
  const d = dir();
  const a = await initFile(join(d, 'a.bkp'));
  const bPath = join(d, 'b.bkp');
  const b = await initFile(bPath);
  writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ destinations: [a, b], ...lock }));
  return { netDir, a, b, bPath };
}

export interface NodesRig {
  netDir: string;
  fileUrl: string;
  remoteUrl: string;
  /** the file the server keeps the node's backup in */
  stored: string;
  /** stops the server, runs `change`, starts it again on the same port */
  restart: (change: () => Promise<void>) => Promise<void>;
  stop: () => Promise<void>;
  /** starts it again (after stop) on the same port */
  start: () => Promise<void>;
}

/**
 * `clnvault server --dir` with one node, alice, and a network directory holding her key whose
 * backup.lock lists a file and her clnvault:// URL (TLS-PSK on 127.0.0.1), with `lock`'s keys.
 */
export async function nodesRig(dir: () => string, lock: Record<string, unknown>): Promise<NodesRig> {
  const serverDir = dir();
  const added = await runCli(['server', 'add-node', '--dir', serverDir, 'alice']);
  assert.equal(added.code, 0, added.stderr);
  const key = /echo ([0-9a-f]{64}) >/.exec(added.stdout)![1]!;
  const start = async (port: number): Promise<{ proc: ServerProc; port: number }> => {
    const proc = new ServerProc('', 0, [], undefined, undefined, ['--dir', serverDir, '--listen', `127.0.0.1:${port}`]);
    return { proc, port: await proc.ready };
  };
  let server = await start(0);
  const port = server.port;
  const netDir = dir();
  writeFileSync(join(netDir, 'clnvault-remote.key'), `${key}\n`, { mode: 0o600 });
  const fileUrl = await initFile(join(dir(), 'local.bkp'));
  const remoteUrl = `clnvault://alice@127.0.0.1:${port}`;
  writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ destinations: [fileUrl, remoteUrl], ...lock }));
  return {
    netDir,
    fileUrl,
    remoteUrl,
    stored: join(serverDir, 'nodes', 'alice', 'backup.bkp'),
    restart: async (change) => {
      await server.proc.kill();
      await change();
      server = await start(port);
    },
    stop: () => server.proc.kill(),
    start: async () => {
      server = await start(port);
    },
  };
}

export async function writes(node: SimNode, n: number, tag: string): Promise<void> {
  for (let i = 0; i < n; i++) {
    const r = await node.transaction([`INSERT INTO t(v) VALUES ('${tag}-${i}')`]);
    assert.equal(r.answered, 'continue', JSON.stringify(r));
  }
}

/** Ten rows of table t rewritten over and over, `pad` characters each: the entries outweigh the database, so compaction gains. */
export async function churn(node: SimNode, n: number, tag: string, pad = 1500): Promise<void> {
  const fill = 'x'.repeat(pad);
  for (let i = 0; i < n; i++) {
    const r = await node.transaction([`UPDATE t SET v = '${tag}-${i}-${fill}' WHERE rowid = ${(i % 10) + 1}`]);
    assert.equal(r.answered, 'continue', JSON.stringify(r));
  }
}

/**
 * backup-compact while one write after another goes through `write` (which asserts each is answered
 * "continue"); returns the answer and how many writes were answered before it.
 */
export async function compactWhileWriting<T>(node: SimNode, write: (node: SimNode, tag: string) => Promise<void>): Promise<{ answer: T; during: number }> {
  let stop = false;
  let during = 0;
  const bg = (async () => {
    for (let i = 0; !stop; i++) {
      await write(node, `bg${i}`);
      during++;
    }
  })();
  try {
    const answer = (await node.rpc('backup-compact', {}, 120_000)) as T;
    return { answer, during };
  } finally {
    stop = true;
    await bg;
  }
}

export interface DestStatus {
  url: string;
  state: string;
  healthy: boolean;
  acked_version: number;
  lag_versions: number;
  errors: number;
  last_error: string | null;
  ack_latency_p50_us: number | null;
}

export async function destinations(node: SimNode): Promise<DestStatus[]> {
  const r = await node.rpc('clnvault-status');
  return (r.result as { destinations: DestStatus[] }).destinations;
}

/** Polls (with writes, which is when the plugin takes news from its threads) until `pred` holds. */
export async function until(node: SimNode, what: string, pred: (d: DestStatus[]) => boolean, tag: string, maxMs = 20_000): Promise<DestStatus[]> {
  const end = Date.now() + maxMs;
  for (let i = 0; ; i++) {
    const d = await destinations(node);
    if (pred(d)) return d;
    if (Date.now() > end) assert.fail(`${what}: not reached in ${maxMs} ms: ${JSON.stringify(d)}`);
    await writes(node, 1, `${tag}-${i}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function freePort(): Promise<number> {
  const s = createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  s.close();
  await once(s, 'close');
  return port;
}

/** A fresh node's first transaction: lightningd's vars table (data_version) and a table to write to. */
export async function firstWrite(node: SimNode): Promise<void> {
  const r = await node.dbWrite(1, [
    'CREATE TABLE vars (name TEXT PRIMARY KEY, val TEXT, intval INTEGER)',
    "INSERT INTO vars VALUES ('data_version', NULL, 1)",
    'CREATE TABLE t (v TEXT)',
  ]);
  assert.equal(r.answered, 'continue', JSON.stringify(r));
}

export async function startNode(netDir: string, pluginPath?: string): Promise<SimNode> {
  const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000, ...(pluginPath !== undefined ? { pluginPath } : {}) });
  await node.start();
  await node.init();
  return node;
}
