/**
 * Several destinations: a destination's lane thread (or the monitor thread) that dies must be seen. The
 * plugin's main thread sits blocked in read(2) and never gets a Worker's 'error'/'exit' events, so
 * without help a dead lane stays "live" in status, metrics and the heartbeat while it holds nothing new,
 * and a hook waits the whole remote_timeout for it. Each case runs the real built plugin under the
 * lightningd simulator from a copy of the built tree where one module is damaged the way an install or
 * a bug can damage it (it throws, ends its thread without running any JavaScript as the heap limit does,
 * or cannot load); the rest of the copy is the product as built, writing to a real file and a real
 * `clnvault server` over TCP.
 */
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { scratchArea } from './helpers/cli.js';
import { killAllPlugins } from './helpers/plugin-proc.js';
import { killAllServers } from './helpers/socket-rig.js';
import { dump } from './helpers/sqlite.js';
import { destinations, firstWrite, freePort, restoreDump, rig, startNode, until, writes } from './helpers/multi-rig.js';

const BUILT_SRC = fileURLToPath(new URL('../src', import.meta.url));
const NODE_MODULES = fileURLToPath(new URL('../../node_modules', import.meta.url));

const area = scratchArea('clnvault-multi-threads-');
const copies: string[] = [];
after(async () => {
  killAllPlugins();
  await killAllServers();
  area.cleanup();
  for (const c of copies) rmSync(c, { recursive: true, force: true });
});

/**
 * A copy of the built plugin where `rel` (under src/) is wrapped: the real module loads, then a file
 * `<netDir>/<trigger>-<index>` makes the thread throw an uncaught error ("throw") or end without any
 * JavaScript running ("silent", process.reallyExit, as at its heap limit). `broken`: the module is
 * replaced by one that throws while loading.
 */
function pluginCopy(rel: string, how: 'wrap' | 'broken', trigger = 'crash'): string {
  const root = mkdtempSync(join(tmpdir(), 'clnvault-damaged-threads-'));
  copies.push(root);
  cpSync(BUILT_SRC, join(root, 'src'), { recursive: true });
  symlinkSync(NODE_MODULES, join(root, 'node_modules'));
  writeFileSync(join(root, 'package.json'), '{"type":"module"}\n');
  const file = join(root, 'src', rel);
  if (how === 'broken') writeFileSync(file, "throw new Error('this module is damaged');\n");
  else {
    const real = file.replace(/\.js$/, '-real.js');
    renameSync(file, real);
    writeFileSync(
      file,
      "import { existsSync, readFileSync, rmSync } from 'node:fs';\n" +
        "import { join } from 'node:path';\n" +
        "import { workerData } from 'node:worker_threads';\n" +
        `await import('./${real.split('/').pop()}');\n` +
        `const trigger = join(workerData.cwd ?? process.cwd(), '${trigger}-' + (workerData.index ?? 'monitor'));\n` +
        'setInterval(() => {\n' +
        '  if (!existsSync(trigger)) return;\n' +
        "  const how = readFileSync(trigger, 'utf8');\n" +
        "  if (how.includes('once')) rmSync(trigger);\n" +
        "  if (how.startsWith('silent')) process.reallyExit(9);\n" +
        "  throw new Error('a fault in this thread');\n" +
        '}, 50).unref();\n',
    );
  }
  return join(root, 'src', 'plugin', 'main.js');
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('several destinations: a thread that dies is seen', () => {
  it('k=1: the server lane throws; status, metrics, notification and heartbeat say so at once; writes go on; restarted, re-seeded, both restore', { timeout: 150_000 }, async () => {
    const plugin = pluginCopy('backends/multi/lane.js', 'wrap');
    const metricsPort = await freePort();
    const beats: number[] = [];
    const hb: Server = createServer((_req, res) => {
      beats.push(Date.now());
      res.end('ok');
    });
    hb.listen(0, '127.0.0.1');
    await once(hb, 'listening');
    const r = await rig(() => area.dir(), {
      ack: 1,
      remote_timeout: 5,
      metrics: `127.0.0.1:${metricsPort}`,
      heartbeat_url: `http://127.0.0.1:${(hb.address() as { port: number }).port}/ping`,
      heartbeat_interval: 1,
    });
    const node = await startNode(r.netDir, plugin);
    try {
      await firstWrite(node);
      await writes(node, 10, 'a');
      await until(node, 'both live', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'a2');
      const end = Date.now() + 10_000;
      while (beats.length === 0 && Date.now() < end) await sleep(100);
      assert.ok(beats.length > 0, 'no heartbeat while both are healthy');

      // the lane keeps dying (each restart too) until the file is removed
      writeFileSync(join(r.netDir, 'crash-1'), 'throw');
      const d = await until(node, 'the lane seen dead', (x) => x[1]!.state === 'error', 'b', 10_000);
      assert.equal(d[1]!.healthy, false);
      assert.match(d[1]!.last_error ?? '', /its thread died: Error: a fault in this thread/);
      assert.equal(d[0]!.healthy, true, JSON.stringify(d));
      assert.ok(
        node.logs.some((l) => l.level === 'error' && /destination socket:127\.0\.0\.1:\d+: its thread DIED \(Error: a fault in this thread\)/.test(l.message)),
        node.logs.map((l) => l.message).join('\n'),
      );
      assert.ok(
        node.notifications.some((n) => n.method === 'clnvault_destination' && (n.params as { event: string; state: string }).event === 'behind' && (n.params as { state: string }).state === 'error'),
        JSON.stringify(node.notifications),
      );
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      assert.match(text, /clnvault_destination_healthy\{destination="socket:127\.0\.0\.1:\d+",index="1"\} 0\n/);
      // k=1 is met by the file: the node keeps running
      await writes(node, 10, 'c');
      // the heartbeat stops (a ping already under way may still land)
      await sleep(1500);
      const seen = beats.length;
      for (let i = 0; i < 6; i++) {
        await writes(node, 1, `d${i}`);
        await sleep(500);
      }
      assert.equal(beats.length, seen, 'the heartbeat went on while a destination was dead');
      assert.equal((await destinations(node))[1]!.healthy, false);

      // fixed: the next restart holds, is re-seeded and catches up
      rmSync(join(r.netDir, 'crash-1'));
      await until(node, 'restarted and caught up', (x) => x[1]!.healthy && x[1]!.acked_version === node.dataVersion(), 'e', 90_000);
      assert.ok(node.logs.some((l) => /re-seeding socket:.* with a snapshot/.test(l.message)), node.logs.map((l) => l.message).join('\n'));
      await writes(node, 3, 'f');
      await until(node, 'both hold the last write', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'g');
      await node.stop();
      const want = dump(node.dbPath);
      assert.equal(await restoreDump(r.fileUrl, area.dir()), want);
      assert.equal(await restoreDump(r.serverUrl, area.dir()), want);
    } finally {
      hb.close();
      if (node.state === 'running') await node.stop();
    }
  });

  it('k=2: a lane that ends without running any JavaScript (heap limit) is seen; the write is refused at once, not after remote_timeout, and nothing acknowledged is lost', { timeout: 150_000 }, async () => {
    const plugin = pluginCopy('backends/multi/lane.js', 'wrap');
    const r = await rig(() => area.dir(), { ack: 'all', remote_timeout: 60 });
    let node = await startNode(r.netDir, plugin);
    await firstWrite(node);
    await writes(node, 10, 'a');
    await until(node, 'both hold the writes', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'a2');
    const committed = node.dataVersion();
    writeFileSync(join(r.netDir, 'crash-1'), 'silent once');
    while (existsSync(join(r.netDir, 'crash-1'))) await sleep(50);
    const t0 = Date.now();
    const refused = await node.transaction(["INSERT INTO t(v) VALUES ('never')"]);
    const took = Date.now() - t0;
    assert.equal(refused.answered, 'error', JSON.stringify(refused));
    assert.match(
      (refused as { detail: string }).detail,
      /only 1 of 2 destinations hold version \d+ and no other one can take it now, \\?"ack\\?" requires 2: .*socket:127\.0\.0\.1:\d+: error \(its thread died: its thread ended without a word/,
    );
    assert.ok(took < 30_000, `the hook waited ${took} ms for a dead lane (remote_timeout is 60 s)`);
    assert.equal(node.dataVersion(), committed, 'the refused write was committed');
    assert.ok(node.logs.some((l) => l.level === 'error' && /its thread DIED/.test(l.message)), node.logs.map((l) => l.message).join('\n'));
    if (node.state === 'running') await node.stop();
    // the next start has healthy threads: both destinations end where the node is
    node = await startNode(r.netDir, plugin);
    await writes(node, 3, 'b');
    await until(node, 'both hold the writes', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'b2');
    await node.stop();
    const want = dump(node.dbPath);
    assert.doesNotMatch(want, /never/);
    assert.equal(await restoreDump(r.fileUrl, area.dir()), want);
    assert.equal(await restoreDump(r.serverUrl, area.dir()), want);
  });

  it('a lane module that cannot load: the destination is `error` with the cause, not `opening` forever; k=1 writes go on', { timeout: 90_000 }, async () => {
    const plugin = pluginCopy('backends/multi/lane.js', 'broken');
    const r = await rig(() => area.dir(), { ack: 1, remote_timeout: 5 });
    const node = await startNode(r.netDir, plugin);
    try {
      await firstWrite(node);
      const d = await until(node, 'the lane seen dead', (x) => x[1]!.state === 'error', 'a', 10_000);
      assert.match(d[1]!.last_error ?? '', /cannot load .*lane\.js: this module is damaged; the installation is damaged: reinstall clnvault/);
      assert.equal(d[0]!.healthy, true);
      await writes(node, 5, 'b');
    } finally {
      await node.stop();
    }
  });

  it('the monitor thread dies: logged, shown by status, restarted; metrics are served again', { timeout: 90_000 }, async () => {
    const plugin = pluginCopy('metrics/monitor.js', 'wrap');
    const metricsPort = await freePort();
    const r = await rig(() => area.dir(), { ack: 1, remote_timeout: 5, metrics: `127.0.0.1:${metricsPort}` });
    const node = await startNode(r.netDir, plugin);
    try {
      await firstWrite(node);
      await writes(node, 3, 'a');
      writeFileSync(join(r.netDir, 'crash-monitor'), 'throw once');
      const end = Date.now() + 10_000;
      let st: { monitor_error: string | null } = { monitor_error: null };
      for (let i = 0; st.monitor_error === null; i++) {
        if (Date.now() > end) assert.fail('the monitor was not seen dead');
        await writes(node, 1, `b${i}`);
        st = (await node.rpc('clnvault-status')).result as typeof st;
        await sleep(100);
      }
      assert.match(st.monitor_error ?? '', /Error: a fault in this thread/);
      assert.ok(node.logs.some((l) => l.level === 'error' && /the monitor thread DIED/.test(l.message)), node.logs.map((l) => l.message).join('\n'));
      const back = Date.now() + 20_000;
      for (let i = 0; st.monitor_error !== null; i++) {
        if (Date.now() > back) assert.fail('the monitor was not restarted');
        await writes(node, 1, `c${i}`);
        st = (await node.rpc('clnvault-status')).result as typeof st;
        await sleep(200);
      }
      let text = '';
      for (let i = 0; i < 50 && text === ''; i++) {
        try {
          text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
        } catch {
          await sleep(100);
        }
      }
      assert.match(text, /clnvault_destination_healthy\{destination="file:[^"]+",index="0"\} 1\n/);
    } finally {
      await node.stop();
    }
  });
});

