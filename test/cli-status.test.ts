/**
 * `clnvault status` in each state a node and its backup can be in, and the plugin's own
 * `clnvault-status` RPC (what `lightning-cli clnvault-status` prints), driven through the real plugin.
 */
import assert from 'node:assert/strict';
import { chmodSync, copyFileSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { openWriter } from '../src/backends/open.js';
import { killAllPlugins, PluginProc } from './helpers/plugin-proc.js';
import { runCli, scratchArea, show, type CliRun } from './helpers/cli.js';
import { FIXTURES } from './helpers/fixtures.js';
import { dataVersion } from './helpers/sqlite.js';

const area = scratchArea('clnvault-cli-status-');
after(() => {
  killAllPlugins();
  area.cleanup();
});
const NODE_DB = join(FIXTURES, 'reference-backups/snapshot-init/expected.sqlite3');

interface Setup {
  net: string;
  db: string;
  bkp: string;
  url: string;
  v: number;
}

/** A node directory with a database and a backup made by `clnvault init` (in step at version v). */
async function setup(opts: { url?: (dir: string) => string; lock?: string[] } = {}): Promise<Setup> {
  const d = area.dir();
  const net = join(d, 'regtest');
  mkdirSync(net);
  const db = join(net, 'lightningd.sqlite3');
  copyFileSync(NODE_DB, db);
  chmodSync(db, 0o644);
  const bkp = join(d, 'backup.bkp');
  const url = opts.url ? opts.url(d) : pathToFileURL(bkp).href;
  const r = await runCli(['init', ...(opts.lock ?? []), '--lightning-dir', net, url], { cwd: d });
  assert.equal(r.code, 0, show(r));
  return { net, db, bkp, url, v: dataVersion(db) };
}

function status(net: string, json = false, cwd?: string): Promise<CliRun> {
  return runCli(['status', '--lightning-dir', net, ...(json ? ['--json'] : [])], cwd ? { cwd } : {});
}

function bumpNode(db: string, n: number): void {
  const h = new Database(db);
  h.prepare("UPDATE vars SET intval = intval + ? WHERE name = 'data_version'").run(n);
  h.close();
}

function appendToBackup(s: Setup, version: number): void {
  const w = openWriter(s.url, s.net);
  try {
    w.appendChange(version, ["UPDATE vars SET val='x' WHERE name='nothing'", `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${version - 1}`]);
  } finally {
    w.close();
  }
  rmSync(`${s.bkp}.writer`, { force: true });
}

async function listenRpc(net: string): Promise<Server> {
  const server = createServer((c) => c.end());
  await new Promise<void>((resolve) => server.listen(join(net, 'lightning-rpc'), resolve));
  return server;
}

const firstLine = (r: CliRun): string => r.stdout.split('\n')[0]!;

describe('clnvault status', () => {
  test('in step: one line, exit 0, and the JSON shape', async () => {
    const s = await setup();
    const r = await status(s.net);
    assert.equal(r.code, 0, show(r));
    assert.equal(firstLine(r), `in step: the node and the backup are both at data_version ${s.v}; nothing to do`);
    const j = JSON.parse((await status(s.net, true)).stdout);
    assert.deepEqual(Object.keys(j).sort(), ['backup', 'lightningDir', 'lock', 'message', 'node', 'ok', 'running', 'runningEvidence', 'state']);
    assert.equal(j.state, 'in-step');
    assert.equal(j.ok, true);
    // a boolean as the text says "not running" (issue 10 item 9), never null
    assert.equal(j.running, false);
    assert.equal(j.runningEvidence, null);
    assert.deepEqual(j.lock, { backend_url: s.url, path: join(s.net, 'backup.lock') });
    // encryption: null for a plain backup (docs/encryption.md)
    assert.deepEqual(j.backup, { url: s.url, path: s.bkp, format: 'v2', head: s.v, headKind: 'snapshot', entries: 1, bytes: j.backup.bytes, encryption: null });
    assert.deepEqual(j.node, { db: s.db, dataVersion: s.v });
  });

  test('a relative file: URL is relative to the network directory, as for the plugin', async () => {
    const s = await setup({ url: () => 'file:../backup.bkp' });
    const r = await status(s.net, false, '/');
    assert.equal(r.code, 0, show(r));
    assert.match(firstLine(r), /^in step/);
  });

  test('backup one ahead after a crash between hook and commit: fine (exit 0)', async () => {
    const s = await setup();
    // the real plugin backs up version v+1, then lightningd dies before committing it
    const p = new PluginProc(s.net);
    assert.ok((await p.call('cln:getmanifest#1', 'getmanifest', {})).result);
    const w = await p.call('cln:db_write#2', 'db_write', {
      data_version: s.v + 1,
      writes: ['UPDATE version SET version=282;', `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${s.v}`],
    });
    assert.deepEqual(w.result, { result: 'continue' });
    p.kill('SIGKILL');
    await p.exit;
    const r = await status(s.net);
    assert.equal(r.code, 0, show(r));
    assert.match(firstLine(r), new RegExp(`^in step after a crash: the backup holds version ${s.v + 1}, one ahead of the node's ${s.v} .*the plugin drops that entry at the next start; nothing to do$`));
    assert.equal(JSON.parse((await status(s.net, true)).stdout).state, 'backup-ahead');

    const server = await listenRpc(s.net);
    try {
      const running = await status(s.net);
      assert.equal(running.code, 0, show(running));
      assert.match(firstLine(running), /because lightningd is committing it right now/);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  test('node behind the backup: DANGER with the exact restore command (exit 1)', async () => {
    const s = await setup();
    appendToBackup(s, s.v + 1);
    appendToBackup(s, s.v + 2);
    const r = await status(s.net);
    assert.equal(r.code, 1, show(r));
    assert.equal(
      firstLine(r),
      `DANGER: the node's database is at data_version ${s.v} but the backup holds ${s.v + 2}: the database lost committed ` +
        `transactions (an old copy, a failed disk?) and starting lightningd on it would broadcast revoked states. Do not ` +
        `start lightningd; move ${s.db} aside and run 'clnvault restore ${pathToFileURL(s.bkp).href} ${s.db}'`,
    );
    assert.equal(JSON.parse((await status(s.net, true)).stdout).state, 'node-behind');
  });

  test('node ahead: re-baselines at the next start (exit 0), or refuses with "rebaseline": false (exit 1); running = not backing up', async () => {
    const s = await setup();
    bumpNode(s.db, 3);
    const r = await status(s.net);
    assert.equal(r.code, 0, show(r));
    assert.match(firstLine(r), new RegExp(`^will re-baseline: the node's database \\(data_version ${s.v + 3}\\) is 3 transaction\\(s\\) ahead of the backup \\(${s.v}\\).*CLN #5859`));

    const server = await listenRpc(s.net);
    try {
      const running = await status(s.net, true);
      assert.equal(running.code, 1, show(running));
      const j = JSON.parse(running.stdout);
      assert.equal(j.state, 'not-backing-up');
      assert.equal(j.running, true);
      assert.match(j.runningEvidence, /lightningd answers on/);
      assert.match(j.message, /the plugin is not loaded or died. Check 'lightning-cli plugin list'/);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }

    const n = await setup({ lock: ['--no-rebaseline'] });
    bumpNode(n.db, 1);
    const refuse = await status(n.net);
    assert.equal(refuse.code, 1, show(refuse));
    assert.match(firstLine(refuse), /"rebaseline": false, so the plugin will refuse to start/);
  });

  test('no lock, no backup file, no database, damaged backup, bad input', async () => {
    const bare = area.dir();
    const none = await status(bare);
    assert.equal(none.code, 1, show(none));
    assert.match(firstLine(none), new RegExp(`^no backup: ${bare}/backup\\.lock is missing.*'clnvault init --lightning-dir ${bare} file:///path/to/backup\\.bkp'`));

    const s = await setup();
    rmSync(s.bkp);
    const gone = await status(s.net);
    assert.equal(gone.code, 1, show(gone));
    assert.match(firstLine(gone), /backup\.bkp \(from .*backup\.lock\) does not exist: is the backup disk mounted\?/);

    const t = await setup();
    rmSync(t.db);
    const noDb = await status(t.net);
    assert.equal(noDb.code, 1, show(noDb));
    assert.match(firstLine(noDb), new RegExp(`the node has no database .* but the backup holds version ${t.v}: restore it before starting lightningd: 'clnvault restore `));

    const fresh = area.dir();
    const init = await runCli(['init', '--lightning-dir', fresh, pathToFileURL(join(fresh, 'b.bkp')).href]);
    assert.equal(init.code, 0, show(init));
    const ready = await status(fresh);
    assert.equal(ready.code, 0, show(ready));
    assert.match(firstLine(ready), /^ready: the backup .* is empty and the node has no database yet/);

    const u = await setup();
    writeFileSync(u.bkp, Buffer.alloc(1000, 9));
    const damaged = await status(u.net);
    assert.equal(damaged.code, 1, show(damaged));
    assert.match(firstLine(damaged), /cannot be used: .*Run 'clnvault inspect file:/);

    writeFileSync(join(u.net, 'backup.lock'), '{not json');
    const badLock = await status(u.net);
    assert.equal(badLock.code, 2, show(badLock));
    assert.match(badLock.stderr, /backup\.lock is not valid JSON/);
    assert.equal((await runCli(['status', '--lightning-dir', join(bare, 'nope')])).code, 2);
    assert.equal((await runCli(['status', 'extra'])).code, 2);
  });
});

describe('clnvault-status RPC (lightning-cli clnvault-status)', () => {
  test('head version, last write latency, bytes written, destination, format, re-baseline', async () => {
    const s = await setup();
    const p = new PluginProc(s.net);
    assert.ok((await p.call('cln:getmanifest#1', 'getmanifest', {})).result);
    const before = (await p.call('cln:clnvault-status#2', 'clnvault-status', {})).result as Record<string, unknown>;
    assert.equal(before.head_version, s.v);
    assert.equal(before.last_write_version, null);
    assert.equal(before.writes_this_run, 0);
    for (let i = 1; i <= 3; i++) {
      const r = await p.call(`cln:db_write#${2 + i}`, 'db_write', {
        data_version: s.v + i,
        writes: [`INSERT INTO vars(name, intval) VALUES ('n${i}', ${i})`, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${s.v + i - 1}`],
      });
      assert.deepEqual(r.result, { result: 'continue' });
    }
    const st = (await p.call('cln:clnvault-status#9', 'clnvault-status', {})).result as Record<string, unknown>;
    await p.close();
    assert.deepEqual(Object.keys(st).sort(), [
      'backup_bytes', 'destination', 'entries', 'error', 'format', 'head_version', 'last_write_latency_us', 'last_write_version',
      'location', 'ok', 'rebaselined', 'rewinds_this_run', 'bytes_written_this_run', 'writes_this_run', 'encrypted', 'key_fingerprint',
    ].sort());
    assert.equal(st.ok, true);
    assert.equal(st.encrypted, false);
    assert.equal(st.key_fingerprint, null);
    assert.equal(st.destination, s.url);
    assert.equal(st.location, s.bkp);
    assert.equal(st.format, 'v2');
    assert.equal(st.head_version, s.v + 3);
    assert.equal(st.entries, 4);
    assert.equal(st.writes_this_run, 3);
    assert.equal(st.last_write_version, s.v + 3);
    assert.ok(Number.isInteger(st.last_write_latency_us) && (st.last_write_latency_us as number) > 0, String(st.last_write_latency_us));
    assert.ok((st.bytes_written_this_run as number) > 3 * 100, String(st.bytes_written_this_run));
    assert.ok((st.backup_bytes as number) > (st.bytes_written_this_run as number));
    assert.equal(st.rewinds_this_run, 0);
    assert.equal(st.rebaselined, null);
    assert.equal(st.error, null);

    // the node committed more after the plugin stopped: the next start re-baselines, and says so
    // (the plugin was driven without the node's DB, which is still at v: move it past the backup's v+3)
    bumpNode(s.db, 5);
    const q = new PluginProc(s.net);
    assert.ok((await q.call('cln:getmanifest#1', 'getmanifest', {})).result);
    // taken in the first db_write hook, where no start-up timer runs (issue 10 item 12)
    const pending = (await q.call('cln:clnvault-status#2', 'clnvault-status', {})).result as Record<string, unknown>;
    assert.equal(pending.rebaselined, null);
    const w = await q.call('cln:db_write#3', 'db_write', {
      data_version: s.v + 6,
      writes: [`INSERT INTO vars(name, intval) VALUES ('n6', 6)`, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${s.v + 5}`],
    });
    assert.deepEqual(w.result, { result: 'continue' });
    const rb = (await q.call('cln:clnvault-status#4', 'clnvault-status', {})).result as Record<string, unknown>;
    await q.close();
    assert.deepEqual(rb.rebaselined, { from: s.v + 3, to: s.v + 5 });
    assert.equal(rb.head_version, s.v + 6);
  });
});
