/**
 * Several destinations (backup.lock "destinations", "ack"): the built plugin under the lightningd
 * simulator (real SQLite, real pipes) writing to a local file and to a real `clnvault server` over TCP on
 * 127.0.0.1, which is SIGKILLed, brought back, and brought back with an older copy of its file.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { runCli, scratchArea } from './helpers/cli.js';
import { killAllPlugins } from './helpers/plugin-proc.js';
import { killAllServers, startServer } from './helpers/socket-rig.js';
import { dump } from './helpers/sqlite.js';
import {
  firstWrite,
  freePort,
  initFile,
  restoreDump as restoreIn,
  rig as rigIn,
  startNode,
  until,
  writes,
  type Rig,
} from './helpers/multi-rig.js';
import Database from 'better-sqlite3';

const area = scratchArea('clnvault-multi-');
after(async () => {
  killAllPlugins();
  await killAllServers();
  area.cleanup();
});

const rig = (lock: Record<string, unknown>): Promise<Rig> => rigIn(() => area.dir(), lock);
const restoreDump = (url: string): Promise<string> => restoreIn(url, area.dir());

describe('several destinations: a local file and a clnvault server over TCP', () => {
  it('k=1: the server SIGKILLed while writes flow, the node keeps running; it catches up when back; metrics, heartbeat, notifications', { timeout: 120_000 }, async () => {
    const metricsPort = await freePort();
    const beats: string[] = [];
    const hb: Server = createServer((req, res) => {
      beats.push(req.url ?? '');
      res.end('ok');
    });
    hb.listen(0, '127.0.0.1');
    await once(hb, 'listening');
    const hbPort = (hb.address() as { port: number }).port;
    const r = await rig({
      ack: 1,
      remote_timeout: 5,
      metrics: `127.0.0.1:${metricsPort}`,
      heartbeat_url: `http://127.0.0.1:${hbPort}/ping`,
      heartbeat_interval: 1,
      metrics_textfile: join(area.dir(), 'clnvault.prom'),
    });
    const node = await startNode(r.netDir);
    try {
      await firstWrite(node);
      await writes(node, 20, 'a');
      let d = await until(node, 'both live', (x) => x.every((y) => y.healthy && y.lag_versions === 0), 'a2');
      assert.equal(d[1]!.acked_version, node.dataVersion());

      // the heartbeat is received while both are healthy
      const beatEnd = Date.now() + 10_000;
      while (beats.length === 0 && Date.now() < beatEnd) await new Promise((res) => setTimeout(res, 100));
      assert.ok(beats.length > 0 && beats[0] === '/ping', 'no heartbeat received');

      // metrics scraped over HTTP
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      const dv = node.dataVersion();
      assert.match(text, new RegExp(`clnvault_destination_version\\{destination="${r.fileUrl.replace(/[/.]/g, '\\$&')}",index="0"\\} ${dv}\\n`));
      assert.match(text, /clnvault_destination_healthy\{destination="socket:127\.0\.0\.1:\d+",index="1"\} 1\n/);
      assert.match(text, /clnvault_ack_required 1\n/);
      const lock = JSON.parse(readFileSync(join(r.netDir, 'backup.lock'), 'utf8')) as { metrics_textfile: string };
      const tf = readFileSync(lock.metrics_textfile, 'utf8');
      assert.match(tf, /# TYPE clnvault_destination_version gauge\n/);
      assert.match(tf, /clnvault_destination_version\{destination="socket:127\.0\.0\.1:\d+",index="1"\} \d+\n/);
      assert.match(text, /clnvault_destination_ack_latency_seconds\{[^}]*quantile="0\.99"\} [0-9.e-]+\n/);

      // the server dies while writes flow: k=1 is still met by the file, every write is acknowledged
      await r.server.kill('SIGKILL');
      await writes(node, 30, 'b');
      d = await until(node, 'server seen down', (x) => !x[1]!.healthy, 'b2');
      assert.equal(d[0]!.healthy, true);
      assert.ok(d[1]!.lag_versions > 0, JSON.stringify(d));
      assert.ok(d[1]!.last_error !== null, JSON.stringify(d));
      const behind = node.notifications.filter((n) => n.method === 'clnvault_destination');
      assert.ok(
        behind.some((n) => (n.params as { event: string; url: string }).event === 'behind' && (n.params as { url: string }).url === r.socketUrl),
        JSON.stringify(node.notifications),
      );
      const down = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      assert.match(down, /clnvault_destination_healthy\{destination="socket:127\.0\.0\.1:\d+",index="1"\} 0\n/);

      // back on the same port: it replays what it missed
      const again = await startServer(r.serverUrl, r.port);
      r.server = again.proc;
      d = await until(node, 'server caught up', (x) => x[1]!.healthy && x[1]!.acked_version === node.dataVersion(), 'c', 30_000);
      assert.ok(
        node.notifications.some((n) => (n.params as { event?: string }).event === 'recovered'),
        JSON.stringify(node.notifications),
      );
      await writes(node, 5, 'd');
      await until(node, 'both hold the last write', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'e');
      await node.stop();
      const want = dump(node.dbPath);
      assert.equal(await restoreDump(r.fileUrl), want);
      assert.equal(await restoreDump(r.socketUrl), want);
      assert.equal(await restoreDump(r.serverUrl), want);
    } finally {
      hb.close();
      if (node.state === 'running') await node.stop();
    }
  });

  it('k=2 with the server down: the write is refused within remote_timeout, nothing acknowledged is lost', { timeout: 90_000 }, async () => {
    const r = await rig({ ack: 'all', remote_timeout: 2 });
    let node = await startNode(r.netDir);
    await firstWrite(node);
    await writes(node, 10, 'a');
    const committed = node.dataVersion();
    await r.server.kill('SIGKILL');
    const t0 = Date.now();
    const refused = await node.transaction(["INSERT INTO t(v) VALUES ('never')"]);
    assert.equal(refused.answered, 'error');
    assert.match((refused as { detail: string }).detail, /only 1 of 2 destinations hold version \d+ after 2 s and \\?"ack\\?" requires 2: .*socket:127\.0\.0\.1:\d+: (no answer|down)/);
    assert.ok(Date.now() - t0 < 20_000, 'refusal not bounded by remote_timeout');
    assert.equal(node.dataVersion(), committed, 'the refused write was committed');
    // the server back: the next start rewinds the uncommitted entry on the file, and both restore to the node
    const again = await startServer(r.serverUrl, r.port);
    r.server = again.proc;
    node = await startNode(r.netDir);
    await writes(node, 3, 'b');
    await node.stop();
    const want = dump(node.dbPath);
    assert.doesNotMatch(want, /never/);
    assert.equal(await restoreDump(r.fileUrl), want);
    assert.equal(await restoreDump(r.serverUrl), want);
  });

  it('the server comes back with an older copy of its file: detected, not trusted, re-seeded from a snapshot', { timeout: 90_000 }, async () => {
    const r = await rig({ ack: 1, remote_timeout: 5 });
    const node = await startNode(r.netDir);
    try {
      await firstWrite(node);
      await writes(node, 5, 'a');
      await until(node, 'both live', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'a2');
      await r.server.kill('SIGKILL');
      const old = `${r.serverFile}.old`;
      copyFileSync(r.serverFile, old);
      const again0 = await startServer(r.serverUrl, r.port);
      r.server = again0.proc;
      await writes(node, 15, 'b');
      await until(node, 'both live again', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'b2');
      // while it is down, its file is swapped for the older copy
      await r.server.kill('SIGKILL');
      await writes(node, 5, 'c');
      copyFileSync(old, r.serverFile);
      for (const suffix of ['-journal', '.lock']) if (existsSync(r.serverFile + suffix)) writeFileSync(r.serverFile + suffix, '');
      const again = await startServer(r.serverUrl, r.port);
      r.server = again.proc;
      await until(node, 're-seeded', (x) => x[1]!.healthy && x[1]!.acked_version === node.dataVersion(), 'd', 30_000);
      assert.ok(
        node.logs.some((l) => /ROLLED BACK OR REPLACED BY AN OLDER COPY/.test(l.message) || /NOT TRUSTED/.test(l.message)),
        node.logs.map((l) => l.message).join('\n'),
      );
      assert.ok(node.logs.some((l) => /re-seeding .* with a snapshot/.test(l.message)), node.logs.map((l) => l.message).join('\n'));
      await writes(node, 3, 'e');
      await until(node, 'both hold the last write', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'f');
      await node.stop();
      const want = dump(node.dbPath);
      assert.equal(await restoreDump(r.fileUrl), want);
      assert.equal(await restoreDump(r.serverUrl), want);
      assert.ok(readFileSync(join(r.netDir, 'clnvault-destinations.json'), 'utf8').includes(r.socketUrl));
    } finally {
      if (node.state === 'running') await node.stop();
    }
  });
});

describe('a local destination replaced by an older copy while the node was stopped', () => {
  it('is detected at the next start from clnvault-destinations.json, not trusted, and re-seeded', { timeout: 90_000 }, async () => {
    const r = await rig({ ack: 1, remote_timeout: 5 });
    let node = await startNode(r.netDir);
    await firstWrite(node);
    await writes(node, 5, 'a');
    await node.stop();
    const local = r.fileUrl.slice('file://'.length);
    copyFileSync(local, `${local}.old`);
    node = await startNode(r.netDir);
    await writes(node, 10, 'b');
    await node.stop();
    const held = JSON.parse(readFileSync(join(r.netDir, 'clnvault-destinations.json'), 'utf8')) as { destinations: Record<string, { held: number }> };
    assert.equal(held.destinations[r.fileUrl]!.held, node.dataVersion());
    copyFileSync(`${local}.old`, local);
    node = await startNode(r.netDir);
    try {
      await until(node, 're-seeded', (x) => x[0]!.healthy && x[0]!.acked_version === node.dataVersion(), 'c', 30_000);
      assert.ok(
        node.logs.some((l) => l.level === 'error' && /ROLLED BACK OR REPLACED BY AN OLDER COPY: it held version \d+ and now holds version \d+/.test(l.message)),
        node.logs.map((l) => l.message).join('\n'),
      );
      await writes(node, 2, 'd');
      await until(node, 'both hold the last write', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'e');
    } finally {
      await node.stop();
    }
    const want = dump(node.dbPath);
    assert.equal(await restoreDump(r.fileUrl), want);
    assert.equal(await restoreDump(r.serverUrl), want);
  });
});

describe('clnvault init / status / restore with several destinations', () => {
  it('init sends one snapshot to each; status lists each; restore picks the most advanced (or --destination) and says why', { timeout: 90_000 }, async () => {
    const netDir = area.dir();
    const d = area.dir();
    const serverUrl = await initFile(join(d, 'server.bkp'));
    const { proc, port } = await startServer(serverUrl);
    const socketUrl = `socket:127.0.0.1:${port}`;
    const fileUrl = `file://${join(d, 'local.bkp')}`;
    const db = new Database(join(netDir, 'lightningd.sqlite3'));
    db.exec("CREATE TABLE vars (name TEXT PRIMARY KEY, val TEXT, intval INTEGER); INSERT INTO vars VALUES ('data_version', NULL, 7); CREATE TABLE t (v TEXT)");
    db.close();
    const init = await runCli(['init', '--lightning-dir', netDir, '--ack', '1', fileUrl, socketUrl]);
    assert.equal(init.code, 0, init.stderr + init.stdout);
    const lock = JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(lock, { backend_url: fileUrl, destinations: [fileUrl, socketUrl], ack: 1 });
    const st = await runCli(['status', '--json', '--lightning-dir', netDir]);
    assert.equal(st.code, 0, st.stdout + st.stderr);
    const sj = JSON.parse(st.stdout) as { state: string; destinations: Array<{ head: number; error: string | null }> };
    assert.equal(sj.state, 'in-step');
    assert.deepEqual(sj.destinations.map((x) => [x.head, x.error]), [[7, null], [7, null]]);

    const node = await startNode(netDir);
    await writes(node, 5, 'a');
    await until(node, 'both hold the writes', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'a2');
    await proc.kill('SIGKILL');
    await writes(node, 5, 'b');
    await node.stop();
    const want = dump(node.dbPath);
    await startServer(serverUrl, port);

    const text = await runCli(['status', '--lightning-dir', netDir]);
    assert.match(text.stdout, /\[1\] socket:127\.0\.0\.1:\d+: version \d+, \d+ behind the most advanced/);
    const dest = join(area.dir(), 'r.sqlite3');
    const r = await runCli(['restore', '--lightning-dir', netDir, dest]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout + r.stderr, /restoring from destination \[0\] file:.*the most advanced readable destination/);
    assert.equal(dump(dest), want);
    const dest1 = join(area.dir(), 'r1.sqlite3');
    const r1 = await runCli(['restore', '--lightning-dir', netDir, '--destination', '1', dest1]);
    assert.equal(r1.code, 0, r1.stderr);
    assert.match(r1.stdout + r1.stderr, /restoring from destination \[1\] socket:.*chosen with --destination/);
    assert.notEqual(dump(dest1), want, 'the server missed the last writes');
    // the drill of each destination against the node: the file passes, the server (behind) fails
    const v = await runCli(['verify', '--json', '--lightning-dir', netDir]);
    assert.equal(v.code, 1, v.stdout + v.stderr);
    const vj = JSON.parse(v.stdout) as { ok: boolean; destinations: Array<{ ok: boolean; url: string }> };
    assert.deepEqual(vj.destinations.map((x) => x.ok), [true, false]);
  });
});
