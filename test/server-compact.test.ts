/**
 * COMPACT through `clnvault server` (the reference plugin's `backup-compact`, and clnvault's own over
 * `socket:`): the server compacts its file (v1 as the reference lays it out, v2) in a worker thread and
 * answers COMPACT_RES with the reference's statistics, as `backup-cli server` does; the writer goes on in
 * the compacted file, the one legal rewind still works after it, and everything restores to the node's
 * database, through the socket and from the server's file. The built plugin under the lightningd
 * simulator (real SQLite, real pipes), a real `clnvault server` over TCP on 127.0.0.1.
 */
import assert from 'node:assert/strict';
import { readdirSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { SimNode } from '../src/sim/lightningd.js';
import { runCli, scratchArea } from './helpers/cli.js';
import { killAllPlugins } from './helpers/plugin-proc.js';
import { killAllServers, startServer, type ServerProc } from './helpers/socket-rig.js';
import { churn, compactWhileWriting, restoreDump } from './helpers/multi-rig.js';
import { addNode, nodesServer } from './helpers/nodes-rig.js';
import { dump } from './helpers/sqlite.js';

const area = scratchArea('clnvault-server-compact-');
after(async () => {
  killAllPlugins();
  await killAllServers();
  area.cleanup();
});

/** 6 KB per write: the entries outweigh the node's database (~0.35 MB) several times over */
const PAD = 6000;

type Served = 'v1 file, socket:' | 'v2 file, socket:' | 'clnvault:// (server --dir)';

/**
 * A backup served by `clnvault server` (a v1 or v2 file over socket:, or a node's backup in clnvault's own
 * mode), and a simulated node writing to it (table t, ten rows). `socketUrl`: the node's URL.
 */
async function servedNode(how: Served, remoteTimeout: number): Promise<{ file: string; fileUrl: string; socketUrl: string; port: number; proc: ServerProc; node: SimNode }> {
  const netDir = area.dir();
  let file: string;
  let proc: ServerProc;
  let port: number;
  let socketUrl: string;
  if (how === 'clnvault:// (server --dir)') {
    const dir = area.dir();
    const key = await addNode(dir, 'alice');
    ({ proc, port } = await nodesServer(dir));
    file = join(dir, 'nodes', 'alice', 'backup.bkp');
    writeFileSync(join(netDir, 'clnvault-remote.key'), `${key}\n`, { mode: 0o600 });
    socketUrl = `clnvault://alice@127.0.0.1:${port}`;
  } else {
    file = join(area.dir(), 'srv.bkp');
    const init = await runCli(['init', '--format', how.slice(0, 2), `file://${file}`]);
    assert.equal(init.code, 0, init.stderr);
    ({ proc, port } = await startServer(`file://${file}`));
    socketUrl = `socket:127.0.0.1:${port}`;
  }
  const fileUrl = `file://${file}`;
  writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: socketUrl, remote_timeout: remoteTimeout }));
  const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000 });
  await node.boot();
  assert.equal((await node.transaction(['CREATE TABLE t (v TEXT)'])).answered, 'continue');
  for (let i = 0; i < 10; i++) assert.equal((await node.transaction([`INSERT INTO t(v) VALUES ('row-${i}')`])).answered, 'continue');
  return { file, fileUrl, socketUrl, port, proc, node };
}

interface Stats {
  before: { backupsize: number; version_count: number };
  after: { version_count: number; backupsize: number };
}

for (const how of ['v1 file, socket:', 'v2 file, socket:', 'clnvault:// (server --dir)'] as const) {
  describe(`clnvault server compacts on COMPACT (${how})`, () => {
    it('backup-compact returns the statistics, the file shrinks, writes and the rewind after a crash go on in the compacted file, and it restores to the node', { timeout: 150_000 }, async () => {
      const { file, fileUrl, socketUrl, proc, node } = await servedNode(how, 20);
      try {
        await churn(node, 300, 'a', PAD);
        const sizeBefore = (JSON.parse((await runCli(['inspect', '--json', fileUrl])).stdout) as { bytes: number }).bytes;

        // db_writes go on while the server compacts: the plugin asks on a second connection
        // small ones: what they add to the compacted file is carried over, however many the load lets through
        const { answer, during } = await compactWhileWriting<{ result?: Stats; error?: { message: string } }>(node, (n, tag) => churn(n, 1, tag, 100));
        // on the writer's own connection at most the write in flight would finish before the answer
        assert.ok(during >= 3, `only ${during} db_write(s) answered while the server compacted`);
        assert.match(proc.out, /connection 2 .*asked for compaction/);
        assert.equal(answer.error, undefined, JSON.stringify(answer));
        const s = answer.result!;
        assert.ok(s.before.version_count > 300 && s.after.version_count <= during + 3, `${JSON.stringify(s)} (${during} writes meanwhile)\n${proc.out}`);
        assert.ok(s.after.backupsize < s.before.backupsize / 3, JSON.stringify(s));
        // the file itself, as `clnvault inspect` reads it (reserved space after a v2 file's data not counted)
        const inspected = await runCli(['inspect', '--json', fileUrl]);
        assert.equal(inspected.code, 0, inspected.stderr);
        const ins = JSON.parse(inspected.stdout) as { bytes: number; entries: number; snapshots: unknown[] };
        assert.ok(ins.bytes < sizeBefore / 3 && ins.entries <= s.after.version_count + during && ins.snapshots.length === 1, `${JSON.stringify(ins)} (before: ${sizeBefore} bytes)`);
        assert.match(proc.out, /compaction done/);
        // the previous file is kept beside it as a history copy, as `clnvault compact` keeps it
        assert.ok(readdirSync(dirname(file)).some((n) => n.startsWith(`${basename(file)}.hist-`)), readdirSync(dirname(file)).join(' '));

        // the writer appends to the compacted file, not to the history copy it replaced
        await churn(node, 10, 'b', PAD);
        // lightningd dies between the hook and its commit: at the restart it sends that version again with
        // other statements, and the server must rewind the compacted file's head (the one legal rewind)
        const crashed = await node.crashBeforeCommit([`UPDATE t SET v = 'never-committed' WHERE rowid = 1`]);
        assert.equal(crashed.answered, 'continue');
        await node.boot();
        await churn(node, 5, 'c', PAD);
      } finally {
        await node.stop();
      }
      const want = dump(node.dbPath);
      assert.ok(!want.includes('never-committed'));
      // a clnvault:// URL's key file is found in the node's directory
      assert.equal(await restoreDump(socketUrl, area.dir(), node.netDir), want);
      assert.equal(await restoreDump(fileUrl, area.dir()), want);
      assert.match(proc.out, /rewound the uncommitted head/);
      await proc.kill();
    });
  });
}

describe('clnvault server SIGKILLed while it compacts', () => {
  for (const delayMs of [0, 60, 150]) {
    it(`killed ${delayMs} ms into a compaction (writes flowing) and restarted: the plugin reconnects, nothing acknowledged is lost, the backup restores to the node`, { timeout: 150_000 }, async () => {
      const served = await servedNode('v2 file, socket:', 30);
      const { fileUrl, socketUrl, port, node } = served;
      let proc = served.proc;
      try {
        await churn(node, 300, 'a', PAD);
        let stop = false;
        // churn() asserts every write is answered "continue": the outage is ridden out within remote_timeout
        const bg = (async () => {
          for (let i = 0; !stop; i++) await churn(node, 1, `bg${i}`, PAD);
        })();
        const rpc = node.rpc('backup-compact', {}, 120_000);
        const t0 = Date.now();
        while (!/compaction of .* started/.test(proc.out) && Date.now() - t0 < 30_000) await new Promise((r) => setTimeout(r, 5));
        await new Promise((r) => setTimeout(r, delayMs));
        await proc.kill('SIGKILL');
        ({ proc } = await startServer(fileUrl, port));
        // the call fails or succeeds (the second connection is resent COMPACT after the restart): both are fine
        await rpc;
        await churn(node, 5, 'after', PAD);
        stop = true;
        await bg;
      } finally {
        await node.stop();
      }
      const want = dump(node.dbPath);
      assert.equal(await restoreDump(socketUrl, area.dir()), want);
      await proc.kill();
      assert.equal(await restoreDump(fileUrl, area.dir()), want);
    });
  }
});
