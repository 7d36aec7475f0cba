/**
 * PostgreSQL SIGKILLed (postmaster and backends, as a crash) while the plugin writes, then restarted:
 * nothing acknowledged is lost, and the write in flight either lands (the plugin reconnects within
 * "remote_timeout" and checks before writing again) or is refused (the node stops without committing);
 * never acknowledged and lost. The backup restores to exactly the node's database after each round.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SimNode } from '../src/sim/lightningd.js';
import { runCli, show } from './helpers/cli.js';
import { dump } from './helpers/sqlite.js';
import { PG_SKIP, PgServer } from './helpers/postgres.js';

let server: PgServer;
const dirs: string[] = [];
/** stopped in after() too, so that a failed assertion does not leave a plugin process holding the test open */
const nodes: SimNode[] = [];
function newNode(netDir: string, hookSafetyTimeoutMs: number, env: NodeJS.ProcessEnv = {}): SimNode {
  const n = new SimNode({ netDir, hookSafetyTimeoutMs, env });
  nodes.push(n);
  return n;
}

async function setUp(name: string, remoteTimeout: number, encrypt = false): Promise<{ dir: string; netDir: string; url: string; keyArgs: string[] }> {
  const dir = mkdtempSync(join(tmpdir(), 'clnvault-pgcrash-'));
  dirs.push(dir);
  const netDir = join(dir, 'regtest');
  mkdirSync(netDir);
  await server.createNodeRole(name, `pw-${name}`);
  const url = server.url(name, `pw-${name}`, name);
  const keyArgs = encrypt ? ['--key-file', join(dir, 'backup.key')] : [];
  const init = await runCli(['init', '--lightning-dir', netDir, ...(encrypt ? ['--encrypt', ...keyArgs] : []), url], { cwd: dir });
  assert.equal(init.code, 0, show(init));
  const lock = JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ ...lock, remote_timeout: remoteTimeout }));
  return { dir, netDir, url, keyArgs };
}

async function restoredEqualsNode(dir: string, url: string, node: SimNode, keyArgs: string[] = []): Promise<void> {
  const dest = join(dir, `restored-${Date.now()}`);
  mkdirSync(dest);
  const r = await runCli(['restore', ...keyArgs, url, dest], { cwd: dir });
  assert.equal(r.code, 0, show(r));
  assert.equal(dump(join(dest, 'lightningd.sqlite3')), dump(node.dbPath));
}

const tx = (i: number): string[] => [`INSERT INTO vars (name, intval) VALUES ('crash-${i}', ${i})`];

describe('PostgreSQL killed mid-write', { skip: PG_SKIP }, () => {
  before(async () => {
    server = await PgServer.startWithSchema();
  });
  after(async () => {
    for (const n of nodes) await n.stop().catch(() => undefined);
    await server?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  // encrypted: the write in flight is the same ciphertext record when it is sent again, and the chain goes on
  for (const encrypt of [false, true]) {
    it(`SIGKILL and restart within remote_timeout: the write in flight lands, nothing acknowledged is lost${encrypt ? ' (encrypted backup)' : ''}`, { timeout: 300_000 }, async () => {
      const { dir, url, keyArgs } = await setUp(encrypt ? 'crash_back_enc' : 'crash_back', 60, encrypt);
      const node = newNode(join(dir, 'regtest'), 120_000);
      await node.boot();
      let n = 0;
      for (let round = 0; round < (encrypt ? 3 : 5); round++) {
        for (let k = 0; k < 20; k++) assert.equal((await node.transaction(tx(n++))).answered, 'continue');
        // the write goes out, and the server dies some microseconds to milliseconds into it
        const inFlight = node.transaction(tx(n++));
        await new Promise((r) => setTimeout(r, round));
        await server.kill();
        await new Promise((r) => setTimeout(r, 500));
        await server.run();
        const res = await inFlight;
        assert.equal(res.answered, 'continue', `round ${round}: ${JSON.stringify(res)}\n${node.stderr.slice(-2000)}`);
        for (let k = 0; k < 5; k++) assert.equal((await node.transaction(tx(n++))).answered, 'continue');
        await restoredEqualsNode(dir, url, node, keyArgs);
      }
      // the operator sees the outage and its end in lightningd's log, every time (no password in it)
      const said = JSON.stringify(node.logs);
      // lost in flight: "...: why; reconnecting (giving up after 60 s)", then "reconnected ... after N s"; lost
      // while idle between two writes: "... while idle (why); reconnected at once"
      const lost = said.match(/lost the connection to PostgreSQL \(backup \\"crash_back(_enc)?\\"\)(: [^"]*; reconnecting \(giving up after 60 s\)| while idle \([^"]*\); reconnected at once)/g) ?? [];
      const back = said.match(/reconnected to PostgreSQL \(backup \\"crash_back(_enc)?\\"\) after \d+\.\d s|; reconnected at once/g) ?? [];
      assert.ok(lost.length >= 1 && back.length >= 1, `lost/reconnected lines in the log: ${lost.length}/${back.length}\n${said.slice(-3000)}\n${node.stderr.slice(-3000)}`);
      console.log(`# ${lost.length} outage(s) logged: ${[...new Set(lost.map((l) => (l.includes('while idle') ? 'while idle' : 'in flight')))].join(', ')}`);
      assert.doesNotMatch(said, /pw-/);
      await node.stop();
      assert.deepEqual(node.violations, []);
      await restoredEqualsNode(dir, url, node, keyArgs);
    });
  }

  it('the session killed while idle: the next write reconnects, takes the writer lease again, and lands', { timeout: 120_000 }, async () => {
    const { dir, url } = await setUp('idle_kill', 30);
    const node = newNode(join(dir, 'regtest'), 60_000);
    await node.boot();
    let n = 0;
    for (let k = 0; k < 5; k++) assert.equal((await node.transaction(tx(n++))).answered, 'continue');
    const admin = await server.superClient();
    // the writer lease (src/backends/postgres/lease.ts) names a live session of this backup's role
    const lockHolders = async (): Promise<number> =>
      Number(
        (
          await admin.query(
            `SELECT count(*) AS n FROM clnvault.backups b JOIN pg_stat_activity a ON a.pid = b.writer_pid AND a.backend_start = b.writer_started
              WHERE b.name = 'idle_kill' AND a.usename = 'idle_kill'`,
          )
        ).rows[0].n,
      );
    try {
      assert.equal(lockHolders.length, 0);
      assert.equal(await lockHolders(), 1);
      const killed = await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'idle_kill'`);
      assert.equal(killed.rowCount, 1);
      for (let i = 0; i < 50 && (await lockHolders()) > 0; i++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(await lockHolders(), 0);
      assert.equal((await node.transaction(tx(n++))).answered, 'continue');
      // the new session holds the lock again: one writer per backup still holds
      assert.equal(await lockHolders(), 1);
    } finally {
      await admin.end();
    }
    await node.stop();
    await restoredEqualsNode(dir, url, node);
  });

  // also with the connection in a worker thread (as in a set of destinations): its notes travel in its replies
  for (const worker of [false, true]) it(`server down longer than remote_timeout: the write is refused (never hangs), and the restarted node is in step${worker ? ' (connection in a worker thread)' : ''}`, { timeout: 300_000 }, async () => {
    const name = worker ? 'crash_gone_w' : 'crash_gone';
    const { dir, url } = await setUp(name, 2);
    const node = newNode(join(dir, 'regtest'), 120_000, worker ? { CLNVAULT_REMOTE_WORKER: '1' } : {});
    await node.boot();
    let n = 0;
    for (let k = 0; k < 20; k++) assert.equal((await node.transaction(tx(n++))).answered, 'continue');
    // the server is gone before the write goes out (test 1 covers a write caught in flight)
    await server.kill();
    const t0 = Date.now();
    const res = await node.transaction(tx(n++));
    const waited = Date.now() - t0;
    assert.equal(res.answered, 'error', JSON.stringify(res));
    assert.match((res as { detail: string }).detail, /could not get it back within 2 s/);
    const said = JSON.stringify(node.logs);
    assert.ok(said.includes(`lost the connection to PostgreSQL (backup \\"${name}\\")`) && /; reconnecting \(giving up after 2 s\)/.test(said), said);
    assert.ok(waited < 30_000, `refused after ${waited} ms`);
    await server.run();
    // lightningd died without committing; restarted, it carries on from its own database
    await node.stop();
    await node.boot();
    for (let k = 0; k < 5; k++) assert.equal((await node.transaction(tx(n++))).answered, 'continue');
    await node.stop();
    await restoredEqualsNode(dir, url, node);
  });

  it('server down when the plugin starts: start-up ends within the bound and every write is refused, naming the cause', { timeout: 120_000 }, async () => {
    const { dir, url } = await setUp('start_down', 2);
    const node = newNode(join(dir, 'regtest'), 60_000);
    await node.boot();
    assert.equal((await node.transaction(tx(0))).answered, 'continue');
    await node.stop();
    await server.kill();
    try {
      const t0 = Date.now();
      await node.start();
      const res = await node.transaction(tx(1));
      assert.equal(res.answered, 'error');
      assert.match((res as { detail: string }).detail, /cannot start the backup|could not get it back within 2 s/);
      assert.ok(Date.now() - t0 < 30_000);
      await node.stop();
    } finally {
      await server.run();
    }
    await node.boot();
    assert.equal((await node.transaction(tx(2))).answered, 'continue');
    await node.stop();
    await restoredEqualsNode(dir, url, node);
  });
});
