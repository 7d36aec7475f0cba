/**
 * Issue 10 item 12: the start-up re-baseline is taken in the first db_write hook (no lightningd timer
 * runs there), reading the committed state while "lightningd" (a real SQLite connection in this process)
 * holds its write transaction open, as lightningd does while it waits for the hook. The built plugin
 * runs as a child process over real pipes; the database is larger than the writer's page cache.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import Database from 'better-sqlite3';
import { listHeaders } from '../src/backends/backend.js';
import { createV2, V2Reader, V2Writer } from '../src/backends/file/v2.js';
import { restoreBackup } from '../src/restore/restore.js';
import { killAllPlugins, PluginProc } from './helpers/plugin-proc.js';
import { dump } from './helpers/sqlite.js';

const dirs: string[] = [];
after(() => {
  killAllPlugins();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const ROWS = 256; // 256 x 64 KiB blobs: a 16 MiB database, far beyond the writer's 256 KiB page cache
const hex = (n: number, byte: number): string => `x'${byte.toString(16).padStart(2, '0').repeat(n)}'`;

/**
 * A network directory whose database (at version 5) is ahead of its backup (a snapshot at version 3):
 * what a clean stop that committed without the hook leaves (CLN 5859).
 */
function nodeAhead(): { dir: string; db: string; bkp: string } {
  const dir = mkdtempSync(join(tmpdir(), 'clnvault-rebaseline-hook-'));
  dirs.push(dir);
  const db = join(dir, 'lightningd.sqlite3');
  const d = new Database(db);
  d.exec("CREATE TABLE vars (name TEXT PRIMARY KEY, val TEXT, intval INTEGER); INSERT INTO vars VALUES ('data_version', NULL, 3)");
  d.exec('CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB)');
  const ins = d.prepare('INSERT INTO blobs (id, b) VALUES (?, zeroblob(65536))');
  d.transaction(() => {
    for (let i = 1; i <= ROWS; i++) ins.run(i);
  })();
  d.close();
  const bkp = join(dir, 'backup.bkp');
  createV2(bkp);
  const copy = join(dir, 'v3.sqlite3');
  copyFileSync(db, copy);
  const w = V2Writer.open(bkp);
  w.appendSnapshotFile(3, copy);
  w.close();
  rmSync(copy);
  // two transactions committed without the plugin
  const d2 = new Database(db);
  d2.exec(`UPDATE blobs SET b = ${hex(64, 0x11)} WHERE id = 7; UPDATE vars SET intval = 4 WHERE name = 'data_version'`);
  d2.exec(`UPDATE blobs SET b = ${hex(64, 0x22)} WHERE id = 9; UPDATE vars SET intval = 5 WHERE name = 'data_version'`);
  d2.close();
  writeFileSync(join(dir, 'backup.lock'), JSON.stringify({ backend_url: `file://${bkp}` }));
  return { dir, db, bkp };
}

function headOf(bkp: string): number {
  const r = V2Reader.open(bkp);
  try {
    return listHeaders(r).at(-1)?.version ?? 0;
  } finally {
    r.close();
  }
}

test('the re-baseline waits for the first db_write and stores the committed state while lightningd holds its write transaction open', async () => {
  const { dir, db, bkp } = nodeAhead();
  const p = new PluginProc(dir);
  const m = await p.call('cln:getmanifest#1', 'getmanifest', { 'allow-deprecated-apis': false });
  assert.ok(m.result, JSON.stringify(m));
  // answered before any snapshot: the backup is still at 3
  assert.equal(headOf(bkp), 3);

  // lightningd: BEGIN, the batch's statements, then the hook before COMMIT
  const ld = new Database(db);
  ld.pragma('cache_size = -256');
  const writes = [`UPDATE blobs SET b = ${hex(100, 0x33)} WHERE id = 11`, "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 5"];
  ld.exec('BEGIN IMMEDIATE');
  for (const s of writes) ld.exec(s);
  p.request('cln:db_write#2', 'db_write', { data_version: 6, writes });
  const r = await p.reply('cln:db_write#2', 60_000);
  assert.deepEqual(r.result, { result: 'continue' }, JSON.stringify(r));
  ld.exec('COMMIT');
  const status = await p.call('cln:clnvault-status#3', 'clnvault-status', {});
  assert.deepEqual((status.result as { rebaselined: unknown }).rebaselined, { from: 3, to: 5 });
  await p.call('cln:init#4', 'init', { options: {}, configuration: { 'lightning-dir': dir, 'rpc-file': 'lightning-rpc', startup: true, network: 'regtest' } });
  await p.close();
  ld.close();

  // the backup: the old snapshot, the re-baseline at 5 (the committed state, not the open transaction), the change at 6
  const rd = V2Reader.open(bkp);
  try {
    assert.deepEqual(listHeaders(rd).map((h) => [h.kind, h.version]), [['snapshot', 3], ['snapshot', 5], ['change', 6]]);
    assert.deepEqual(rd.problems(), []);
    const out = join(dir, 'restored.sqlite3');
    restoreBackup(rd, out);
    assert.equal(dump(out), dump(db));
  } finally {
    rd.close();
  }
});

test('when lightningd\'s transaction has spilled into the file (EXCLUSIVE lock), the write is refused and nothing is stored', async () => {
  const { dir, db, bkp } = nodeAhead();
  const p = new PluginProc(dir);
  await p.call('cln:getmanifest#1', 'getmanifest', { 'allow-deprecated-apis': false });
  const ld = new Database(db);
  ld.pragma('cache_size = 10'); // pages: a transaction touching 2 MiB must spill into the database file
  const writes = [`UPDATE blobs SET b = ${hex(65536, 0x44)} WHERE id <= 32`, "UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 5"];
  ld.exec('BEGIN IMMEDIATE');
  for (const s of writes) ld.exec(s);
  p.request('cln:db_write#2', 'db_write', { data_version: 6, writes });
  const r = await p.reply('cln:db_write#2', 60_000);
  assert.ok(r.error, JSON.stringify(r));
  assert.match(r.error!.message, /could not be snapshotted/);
  // lightningd aborts without committing
  ld.exec('ROLLBACK');
  ld.close();
  await p.close();
  assert.equal(headOf(bkp), 3);
  assert.equal(new Database(db, { readonly: true }).prepare("SELECT intval FROM vars WHERE name = 'data_version'").pluck().get(), 5);
});
