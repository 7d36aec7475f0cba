/**
 * Several destinations with a database among them: a local file, a `clnvault server` over TCP and a real
 * PostgreSQL server (test/helpers/postgres.ts), ack 2. The socket server is SIGKILLed while writes flow
 * (two destinations still hold each write), comes back and catches up; each of the three then restores
 * to the node's database.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SimNode } from '../src/sim/lightningd.js';
import { runCli, scratchArea, show } from './helpers/cli.js';
import { killAllPlugins } from './helpers/plugin-proc.js';
import { PG_SKIP, PgServer } from './helpers/postgres.js';
import { killAllServers, startServer } from './helpers/socket-rig.js';
import { dump } from './helpers/sqlite.js';

const area = scratchArea('clnvault-multi-pg-');
let server: PgServer;

describe('several destinations: file + socket + postgresql, ack 2', { skip: PG_SKIP }, () => {
  before(async () => {
    server = await PgServer.startWithSchema();
  });
  after(async () => {
    killAllPlugins();
    await killAllServers();
    await server?.stop();
    area.cleanup();
  });

  it('the server SIGKILLed while writes flow: file + PostgreSQL still make k=2, it catches up, all three restore to the node', { timeout: 120_000 }, async () => {
    await server.createNodeRole('node_multi', 'pw-node_multi');
    const pgUrl = server.url('node_multi', 'pw-node_multi', 'multi');
    const netDir = area.dir();
    const d = area.dir();
    const serverUrl = `file://${join(d, 'server.bkp')}`;
    assert.equal((await runCli(['init', serverUrl])).code, 0);
    const srv = await startServer(serverUrl);
    const socketUrl = `socket:127.0.0.1:${srv.port}`;
    const fileUrl = `file://${join(d, 'local.bkp')}`;
    const init = await runCli(['init', '--lightning-dir', netDir, '--ack', '2', fileUrl, socketUrl, pgUrl]);
    assert.equal(init.code, 0, show(init));
    assert.doesNotMatch(init.stdout + init.stderr, /pw-node_multi/, 'the password must not be printed');

    const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000 });
    await node.start();
    await node.init();
    const tx = async (n: number, tag: string): Promise<void> => {
      for (let i = 0; i < n; i++) assert.equal((await node.transaction([`INSERT INTO t(v) VALUES ('${tag}-${i}')`])).answered, 'continue');
    };
    const status = async (): Promise<Array<{ url: string; healthy: boolean; acked_version: number }>> =>
      ((await node.rpc('clnvault-status')).result as { destinations: Array<{ url: string; healthy: boolean; acked_version: number }> }).destinations;
    try {
      const first = await node.dbWrite(1, [
        'CREATE TABLE vars (name TEXT PRIMARY KEY, val TEXT, intval INTEGER)',
        "INSERT INTO vars VALUES ('data_version', NULL, 1)",
        'CREATE TABLE t (v TEXT)',
      ]);
      assert.equal(first.answered, 'continue', JSON.stringify(first));
      await tx(10, 'a');
      await srv.proc.kill('SIGKILL');
      await tx(20, 'b');
      const st = await status();
      assert.doesNotMatch(JSON.stringify(st), /pw-node_multi/, 'the password must not reach the status');
      await startServer(serverUrl, srv.port);
      const end = Date.now() + 30_000;
      for (let i = 0; ; i++) {
        const s = await status();
        if (s.every((x) => x.healthy && x.acked_version === node.dataVersion())) break;
        assert.ok(Date.now() < end, `not caught up: ${JSON.stringify(s)}`);
        await tx(1, `c${i}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      await node.stop();
    }
    assert.doesNotMatch(readFileSync(join(netDir, 'clnvault-destinations.json'), 'utf8'), /pw-node_multi/, 'no password in the progress file');
    const want = dump(node.dbPath);
    for (const url of [fileUrl, socketUrl, pgUrl]) {
      const dest = join(area.dir(), 'r.sqlite3');
      const r = await runCli(['restore', url, dest]);
      assert.equal(r.code, 0, show(r));
      assert.equal(dump(dest), want, `restore from ${url.replace(/pw-[^@]*/, '***')}`);
    }
  });

  it('backup-compact with a file and PostgreSQL, ack 1: each compacted in turn (PostgreSQL inside the database) while writes flow; both restore', { timeout: 120_000 }, async () => {
    await server.createNodeRole('node_multi_c', 'pw-node_multi_c');
    const pgUrl = server.url('node_multi_c', 'pw-node_multi_c', 'multi_c');
    const netDir = area.dir();
    const fileUrl = `file://${join(area.dir(), 'local.bkp')}`;
    const init = await runCli(['init', '--lightning-dir', netDir, '--ack', '1', fileUrl, pgUrl]);
    assert.equal(init.code, 0, show(init));
    const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000 });
    await node.start();
    await node.init();
    const tx = async (stmt: (i: number) => string, n: number): Promise<void> => {
      for (let i = 0; i < n; i++) assert.equal((await node.transaction([stmt(i)])).answered, 'continue');
    };
    try {
      const first = await node.dbWrite(1, [
        'CREATE TABLE vars (name TEXT PRIMARY KEY, val TEXT, intval INTEGER)',
        "INSERT INTO vars VALUES ('data_version', NULL, 1)",
        'CREATE TABLE t (v TEXT)',
        "INSERT INTO t(v) VALUES ('row')",
      ]);
      assert.equal(first.answered, 'continue', JSON.stringify(first));
      await tx((i) => `UPDATE t SET v = 'a${i}-${'z'.repeat(1000)}'`, 150);
      let stop = false;
      const bg = (async () => {
        for (let i = 0; !stop; i++) await tx(() => `UPDATE t SET v = 'bg${i}'`, 1);
      })();
      let answer: { result?: { destinations: Array<{ url: string; result: string; before?: { entries: number }; after?: { entries: number } }> } };
      try {
        answer = (await node.rpc('backup-compact', {}, 120_000)) as typeof answer;
      } finally {
        stop = true;
        await bg;
      }
      const out = answer.result?.destinations ?? [];
      assert.deepEqual(out.map((x) => x.result), ['compacted', 'compacted'], JSON.stringify(answer));
      assert.ok(out[1]!.after!.entries < out[1]!.before!.entries, JSON.stringify(out[1]));
      assert.doesNotMatch(JSON.stringify(answer), /pw-node_multi_c/, 'the password must not reach the answer');
      await tx((i) => `UPDATE t SET v = 'c${i}'`, 5);
      const end = Date.now() + 30_000;
      for (let i = 0; ; i++) {
        const st = ((await node.rpc('clnvault-status')).result as { destinations: Array<{ healthy: boolean; acked_version: number }> }).destinations;
        if (st.every((x) => x.healthy && x.acked_version === node.dataVersion())) break;
        assert.ok(Date.now() < end, `not caught up: ${JSON.stringify(st)}`);
        await tx(() => `UPDATE t SET v = 'd${i}'`, 1);
        await new Promise((r) => setTimeout(r, 100));
      }
    } finally {
      await node.stop();
    }
    const want = dump(node.dbPath);
    for (const url of [fileUrl, pgUrl]) {
      const dest = join(area.dir(), 'r.sqlite3');
      const r = await runCli(['restore', url, dest]);
      assert.equal(r.code, 0, show(r));
      assert.equal(dump(dest), want, `restore from ${url.replace(/pw-[^@]*/, '***')}`);
    }
  });
});
