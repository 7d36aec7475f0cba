/**
 * The PostgreSQL destination against a real server started by the test (test/helpers/postgres.ts):
 * recorded Core Lightning sessions through the real plugin restore exactly; one writer per backup;
 * twenty nodes' backups in one database, each role seeing only its own rows; init, inspect, verify,
 * status and compact on postgresql: URLs.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { SimNode } from '../src/sim/lightningd.js';
import { FIXTURES } from './helpers/fixtures.js';
import { runCli, show } from './helpers/cli.js';
import { dump } from './helpers/sqlite.js';
import { PG_DB, PG_SKIP, PgServer } from './helpers/postgres.js';
import { killAllPlugins, PluginProc } from './helpers/plugin-proc.js';

const CLN = join(FIXTURES, 'cln-v26.06.6');
const dirs: string[] = [];
let server: PgServer;

function scratch(): string {
  const d = mkdtempSync(join(tmpdir(), 'clnvault-pgtest-'));
  dirs.push(d);
  return d;
}

const nodeRole = (name: string): ReturnType<PgServer['nodeRole']> => server.nodeRole('node', name);

async function replayed(url: string, transcripts: string[], env?: NodeJS.ProcessEnv): Promise<{ dir: string; netDir: string }> {
  const dir = scratch();
  const netDir = join(dir, 'regtest');
  mkdirSync(netDir);
  const init = await runCli(['init', '--lightning-dir', netDir, url], { cwd: dir });
  assert.equal(init.code, 0, show(init));
  assert.match(init.stdout, /Database does not exist yet/);
  assert.doesNotMatch(init.stdout, /pw-/, 'the password must not be printed');
  const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000, ...(env ? { env } : {}) });
  try {
    for (const [i, t] of transcripts.entries()) {
      if (i > 0) await node.restart();
      const r = await node.replay(join(CLN, t));
      assert.equal(r.failure, undefined, `replay of ${t} failed: ${JSON.stringify(r.failure)}\n${node.stderr.slice(-2000)}`);
    }
  } finally {
    await node.stop();
  }
  assert.deepEqual(node.violations, []);
  return { dir, netDir };
}

async function restoreDump(dir: string, url: string): Promise<string> {
  const dest = join(dir, `restored-${Date.now()}`);
  mkdirSync(dest);
  const r = await runCli(['restore', url, dest], { cwd: dir });
  assert.equal(r.code, 0, show(r));
  assert.match(r.stdout, /integrity_check ok/);
  return dump(join(dest, 'lightningd.sqlite3'));
}

describe('PostgreSQL destination', { skip: PG_SKIP }, () => {
  before(async () => {
    // the administrator's one-time step: the tables, granted to clnvault_node
    server = await PgServer.startWithSchema();
  });
  after(async () => {
    killAllPlugins();
    await server?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  const sessions: Array<[string, string[], string]> = [
    ['session-basic', ['session-basic/hooks.jsonl'], 'session-basic/final.dump.sql'],
    ['session-basic + restart', ['session-basic/hooks.jsonl', 'session-basic/hooks-restart.jsonl'], 'session-basic/final-after-restart.dump.sql'],
    ['session-abort (crash between hook and commit, re-sent data_version: the rewind)', ['session-abort/hooks.jsonl'], 'session-abort/final.dump.sql'],
    ['session-channels', ['session-channels/hooks.jsonl'], 'session-channels/final.dump.sql'],
  ];
  for (const [name, transcripts, expected] of sessions) {
    it(`recorded ${name} → plugin → postgresql: → clnvault restore is exact`, { timeout: 240_000 }, async () => {
      const { url } = await nodeRole(name);
      const { dir } = await replayed(url, transcripts);
      assert.equal(await restoreDump(dir, url), readFileSync(join(CLN, expected), 'utf8'));
    });
  }

  // the sessions above ran on the plugin's event loop (a lone destination); the worker thread's path
  // (several destinations, and CLNVAULT_REMOTE_WORKER=1 for the A/B of bench/postgres.ts) must store the same
  it('session-abort through the worker thread (CLNVAULT_REMOTE_WORKER=1) restores exactly too', { timeout: 240_000 }, async () => {
    const { url } = await nodeRole('workerpath');
    const { dir } = await replayed(url, ['session-abort/hooks.jsonl'], { CLNVAULT_REMOTE_WORKER: '1' });
    assert.equal(await restoreDump(dir, url), readFileSync(join(CLN, 'session-abort/final.dump.sql'), 'utf8'));
  });

  it('on the event loop, a request arriving while a db_write waits for its COMMIT is answered after it, and sees it', { timeout: 120_000 }, async () => {
    const { url } = await nodeRole('ordering');
    const dir = scratch();
    const netDir = join(dir, 'regtest');
    mkdirSync(netDir);
    const init = await runCli(['init', '--lightning-dir', netDir, url], { cwd: dir });
    assert.equal(init.code, 0, show(init));
    const plugin = new PluginProc(netDir);
    await plugin.call('m', 'getmanifest', {});
    // the administrator holds the entries table: the INSERT waits on the server until this transaction ends
    const admin = await server.superClient();
    try {
      await admin.query('BEGIN');
      await admin.query('LOCK TABLE clnvault.entries IN SHARE MODE');
      plugin.request('w1', 'db_write', { data_version: 1, writes: ["UPDATE vars SET intval=1 WHERE name='data_version'"] });
      plugin.request('s', 'clnvault-status', {});
      plugin.request('w2', 'db_write', { data_version: 2, writes: ["UPDATE vars SET intval=2 WHERE name='data_version'"] });
      await new Promise((r) => setTimeout(r, 500));
      assert.deepEqual(plugin.messages.filter((m) => m.method === undefined && m.id !== 'm'), [], 'nothing answered before the COMMIT');
      await admin.query('COMMIT');
    } finally {
      await admin.end();
    }
    const w2 = await plugin.reply('w2', 20_000);
    assert.deepEqual(w2.result, { result: 'continue' }, JSON.stringify(w2));
    assert.deepEqual(plugin.messages.filter((m) => m.method === undefined && m.id !== 'm').map((m) => m.id), ['w1', 's', 'w2']);
    const status = (await plugin.reply('s')).result as { writes_this_run: number; head_version: number };
    assert.equal(status.writes_this_run, 1);
    assert.equal(status.head_version, 1);
    await plugin.close();
    assert.deepEqual(plugin.garbage, []);
  });

  it('compact inside the database keeps the restore exact, then verify, inspect and status agree', { timeout: 240_000 }, async () => {
    const { url } = await nodeRole('compacted');
    const { dir, netDir } = await replayed(url, ['session-channels/hooks.jsonl']);
    const expected = readFileSync(join(CLN, 'session-channels/final.dump.sql'), 'utf8');
    const c = await runCli(['compact', '--json', url], { cwd: dir });
    assert.equal(c.code, 0, show(c));
    const stats = JSON.parse(c.stdout) as { compacted: boolean; before: { entries: number }; after: { entries: number; head: number } };
    assert.equal(stats.compacted, true);
    assert.ok(stats.after.entries < stats.before.entries && stats.after.entries >= 2, c.stdout);
    assert.equal(await restoreDump(dir, url), expected);
    const again = await runCli(['compact', url], { cwd: dir });
    assert.equal(again.code, 0, show(again));
    assert.match(again.stdout, /nothing to compact/);
    const v = await runCli(['verify', url], { cwd: dir });
    assert.equal(v.code, 0, show(v));
    const i = await runCli(['inspect', '--json', url], { cwd: dir });
    assert.equal(i.code, 0, show(i));
    assert.equal((JSON.parse(i.stdout) as { head: number }).head, stats.after.head);
    const s = await runCli(['status', '--json', '--lightning-dir', netDir], { cwd: dir });
    assert.equal(s.code, 0, show(s));
    assert.equal((JSON.parse(s.stdout) as { state: string }).state, 'in-step');
    assert.doesNotMatch(i.stdout + s.stdout + v.stdout + c.stdout, /pw-/, 'passwords stay out of reports');
  });

  it('compaction while the plugin writes: no write waits for it or is refused, and the restore equals the node', { timeout: 240_000 }, async () => {
    const { url } = await nodeRole('livecompact');
    const { dir, netDir } = await replayed(url, ['session-channels/hooks.jsonl']);
    const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000 });
    let n = 0;
    try {
      await node.boot();
      const compaction = runCli(['compact', '--json', url], { cwd: dir });
      let done = false;
      void compaction.then(() => (done = true));
      let during = 0;
      while (!done) {
        assert.equal((await node.transaction([`INSERT INTO vars (name, intval) VALUES ('live-${n++}', 1)`])).answered, 'continue');
        during++;
      }
      const c = await compaction;
      assert.equal(c.code, 0, show(c));
      assert.equal((JSON.parse(c.stdout) as { compacted: boolean }).compacted, true);
      assert.ok(during > 0);
      for (let k = 0; k < 5; k++) assert.equal((await node.transaction([`INSERT INTO vars (name, intval) VALUES ('live-${n++}', 2)`])).answered, 'continue');
    } finally {
      await node.stop();
    }
    assert.deepEqual(node.violations, []);
    assert.equal(await restoreDump(dir, url), dump(node.dbPath));
  });

  it('re-baseline at plugin start stores a multi-chunk snapshot (3 MiB blob, 1 MiB rows) that restores exactly', { timeout: 240_000 }, async () => {
    const { url } = await nodeRole('rebaseline');
    const { dir, netDir } = await replayed(url, ['session-basic/hooks.jsonl']);
    const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000 });
    // committed without the hook (what lightningd does after plugins stopped): the node is now ahead
    node.commitWithoutHook(["INSERT INTO vars (name, blobval) VALUES ('pg-big', randomblob(3145728))"]);
    try {
      await node.boot();
      assert.match(node.stderr + JSON.stringify(node.logs), /re-baselined/);
      assert.equal((await node.transaction(["INSERT INTO vars (name, intval) VALUES ('pg-after', 1)"])).answered, 'continue');
    } finally {
      await node.stop();
    }
    const admin = await server.superClient();
    try {
      const chunks = await admin.query(
        `SELECT count(*) AS n, max(octet_length(data)) AS m FROM clnvault.snapshot_chunks c JOIN clnvault.backups b ON b.id = c.backup_id WHERE b.name = $1`,
        [new URL(url).searchParams.get('backup')],
      );
      assert.ok(Number(chunks.rows[0].n) >= 4, `chunks: ${JSON.stringify(chunks.rows)}`);
      assert.equal(Number(chunks.rows[0].m), 1 << 20);
    } finally {
      await admin.end();
    }
    assert.equal(await restoreDump(dir, url), dump(node.dbPath));
  });

  it('the version rule holds in the database: a second transaction with the same data_version is rejected', async () => {
    const { role, url } = await nodeRole('unique');
    const dir = scratch();
    const r = await runCli(['init', url], { cwd: dir });
    assert.equal(r.code, 0, show(r));
    const c = new pg.Client({ connectionString: `postgresql://${role}:pw-${role}@127.0.0.1:${server.port}/${PG_DB}` });
    await c.connect();
    try {
      const id = (await c.query('SELECT id FROM clnvault.backups')).rows[0].id;
      const ins = 'INSERT INTO clnvault.entries (backup_id, seq, kind, version, pragma_only, statements, bytes) VALUES ($1, $2, 0, $3, $4, $5, 1)';
      await c.query(ins, [id, 1, 7, false, ['UPDATE vars SET intval=7']]);
      await c.query(ins, [id, 2, 7, true, ['PRAGMA foreign_keys = ON']]);
      await assert.rejects(c.query(ins, [id, 3, 7, false, ['UPDATE x']]), /entries_one_per_version/);
    } finally {
      await c.end();
    }
  });

  it('two plugins on one backup: the second is refused with a clear message, the first keeps writing', { timeout: 120_000 }, async () => {
    const { url } = await nodeRole('twoplugins');
    const dir = scratch();
    const a = join(dir, 'a');
    const b = join(dir, 'b');
    mkdirSync(a);
    mkdirSync(b);
    const init = await runCli(['init', '--lightning-dir', a, url], { cwd: dir });
    assert.equal(init.code, 0, show(init));
    writeFileSync(join(b, 'backup.lock'), readFileSync(join(a, 'backup.lock')));
    const first = new SimNode({ netDir: a, hookSafetyTimeoutMs: 60_000 });
    const second = new SimNode({ netDir: b, hookSafetyTimeoutMs: 60_000 });
    try {
      await first.boot();
      assert.equal((await first.transaction(["INSERT INTO vars (name, intval) VALUES ('pg-one', 1)"])).answered, 'continue');
      await second.start();
      const refused = await second.transaction(["INSERT INTO vars (name, intval) VALUES ('pg-two', 2)"]);
      assert.equal(refused.answered, 'error');
      assert.match((refused as { detail: string }).detail, /already being written by another clnvault plugin.*one node, one writer/);
      assert.match(second.stderr + JSON.stringify(second.logs), /already being written by another clnvault plugin/);
      // the first one is unaffected
      assert.equal((await first.transaction(["INSERT INTO vars (name, intval) VALUES ('pg-three', 3)"])).answered, 'continue');
    } finally {
      await second.stop();
      await first.stop();
    }
    // once the first is gone the lock is free again
    const third = new SimNode({ netDir: a, hookSafetyTimeoutMs: 60_000 });
    await third.boot();
    assert.equal((await third.transaction(["INSERT INTO vars (name, intval) VALUES ('pg-four', 4)"])).answered, 'continue');
    await third.stop();
    assert.deepEqual(third.violations, []);
    const db = await restoreDump(dir, url);
    assert.match(db, /pg-four/);
    assert.doesNotMatch(db, /pg-two/);
  });

  it("another role cannot hold or take a backup's writer or compaction lease; a SIGKILLed holder does not block the next start", { timeout: 120_000 }, async () => {
    const victim = await nodeRole('leasevictim');
    const hostile = await nodeRole('leasehostile');
    const dir = scratch();
    const netDir = join(dir, 'regtest');
    mkdirSync(netDir);
    const init = await runCli(['init', '--lightning-dir', netDir, victim.url], { cwd: dir });
    assert.equal(init.code, 0, show(init));
    const admin = await server.superClient();
    const victimId = Number((await admin.query(`SELECT id FROM clnvault.backups WHERE owner = $1`, [victim.role])).rows[0].id);
    await admin.end();
    // the hostile role knows the id (ids are a sequence) and holds every advisory lock an earlier release
    // used for it, and tries the lease columns directly: none of it reaches the victim's row
    const h = new pg.Client({ connectionString: `postgresql://${hostile.role}:pw-${hostile.role}@127.0.0.1:${server.port}/${PG_DB}` });
    await h.connect();
    try {
      for (const cls of [0x636c6e76, 0x636c6e63]) assert.equal((await h.query('SELECT pg_try_advisory_lock($1, $2) AS ok', [cls, victimId])).rows[0].ok, true);
      assert.equal((await h.query('UPDATE clnvault.backups SET writer_pid = pg_backend_pid(), compact_pid = pg_backend_pid() WHERE id = $1', [victimId])).rowCount, 0);
      await h.query('BEGIN');
      assert.equal((await h.query('SELECT id FROM clnvault.backups WHERE id = $1 FOR UPDATE', [victimId])).rowCount, 0);
      await h.query('ROLLBACK');
      await assert.rejects(h.query('UPDATE clnvault.backups SET owner = current_user, writer_pid = 1 WHERE id = $1', [victimId]), /permission denied/);

      const first = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000 });
      await first.boot();
      assert.equal((await first.transaction(["INSERT INTO vars (name, intval) VALUES ('lease-one', 1)"])).answered, 'continue');
      // compaction of the victim's backup is not blocked by the hostile role either
      const compact = await runCli(['compact', victim.url], { cwd: dir });
      assert.equal(compact.code, 0, show(compact));
      // a holder that dies without a word (SIGKILL: no release) does not keep the next start out
      await first.killPlugin('SIGKILL');
      const second = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000 });
      try {
        await second.boot();
        assert.equal((await second.transaction(["INSERT INTO vars (name, intval) VALUES ('lease-two', 2)"])).answered, 'continue');
      } finally {
        await second.stop();
      }
      await first.stop().catch(() => undefined);
    } finally {
      await h.end();
    }
    const db = await restoreDump(dir, victim.url);
    assert.match(db, /lease-one/);
    assert.match(db, /lease-two/);
  });
});
