/**
 * Issue 10, item 1: `restore --force` never puts a stale database under a node. It refuses while
 * lightningd runs in DEST's directory or while a plugin holds the backup's writer lock, refuses to go
 * backwards in data_version unless --allow-older says so, and keeps the file it replaces.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, test } from 'node:test';
import { copyFixture, REPO_ROOT, runCli, scratchArea, show } from './helpers/cli.js';
import { FIXTURES } from './helpers/fixtures.js';
import { killAllPlugins, PluginProc } from './helpers/plugin-proc.js';
import { dataVersion } from './helpers/sqlite.js';

const REF = join(FIXTURES, 'reference-backups');
/** a reference (v1) backup holding versions 1 to 24 */
const BKP = join(REF, 'empty-init/backup.dbak');
const area = scratchArea('clnvault-badday-restore-');
after(() => {
  killAllPlugins();
  area.cleanup();
});
const url = (p: string): string => pathToFileURL(p).href;

async function restoredAt(dir: string, version?: number): Promise<string> {
  const args = ['restore', ...(version !== undefined ? ['--to-version', String(version)] : []), url(BKP), dir];
  const r = await runCli(args);
  assert.equal(r.code, 0, show(r));
  return join(dir, 'lightningd.sqlite3');
}

describe('restore --force', () => {
  test('refuses to go backwards in data_version without --allow-older, naming both versions', async () => {
    const d = area.dir();
    const db = await restoredAt(d);
    assert.equal(dataVersion(db), 24);
    const before = readFileSync(db);
    const r = await runCli(['restore', '--force', '--to-version', '5', url(BKP), d]);
    assert.equal(r.code, 1, show(r));
    assert.match(r.stderr, /refusing to go backwards: .*lightningd\.sqlite3 is at data_version 24, newer than the backup's 5 .*--allow-older/);
    assert.deepEqual(readFileSync(db), before, 'the newer database is untouched');
    assert.deepEqual(readdirSync(d), ['lightningd.sqlite3']);

    // --json failure: the same message, as an object on stdout
    const j = await runCli(['restore', '--force', '--json', '--to-version', '5', url(BKP), d]);
    assert.equal(j.code, 1, show(j));
    const obj = JSON.parse(j.stdout) as Record<string, unknown>;
    assert.equal(obj.ok, false);
    assert.equal(obj.result, 'error');
    assert.match(String(obj.message), /refusing to go backwards/);

    const ok = await runCli(['restore', '--force', '--allow-older', '--to-version', '5', url(BKP), d]);
    assert.equal(ok.code, 0, show(ok));
    assert.equal(dataVersion(db), 5);
    const kept = readdirSync(d).filter((n) => n.startsWith('lightningd.sqlite3.replaced-'));
    assert.equal(kept.length, 1, readdirSync(d).join(', '));
    assert.match(kept[0]!, /^lightningd\.sqlite3\.replaced-\d{8}T\d{6}Z$/);
    assert.deepEqual(readFileSync(join(d, kept[0]!)), before, 'the replaced file is kept byte for byte');
    assert.match(ok.stdout, new RegExp(`data_version 24\\) is kept as ${join(d, kept[0]!).replace(/[.]/g, '\\.')}`));
  });

  test('going forward replaces too, and still keeps the old file with its journal', async () => {
    const d = area.dir();
    const db = await restoredAt(d, 5);
    const before = readFileSync(db);
    const fwd = await runCli(['restore', '--force', url(BKP), d]);
    assert.equal(fwd.code, 0, show(fwd));
    assert.equal(dataVersion(db), 24);
    assert.equal(readdirSync(d).filter((n) => n.includes('.replaced-')).length, 1);

    // a hot journal: the old file's version cannot be read read-only, so only --allow-older replaces it
    const d2 = area.dir();
    const db2 = await restoredAt(d2, 5);
    writeFileSync(`${db2}-journal`, 'not a real journal');
    const refused = await runCli(['restore', '--force', url(BKP), d2]);
    assert.equal(refused.code, 1, show(refused));
    assert.match(refused.stderr, /cannot read the data_version of .*--allow-older/);
    const r = await runCli(['restore', '--force', '--allow-older', url(BKP), d2]);
    assert.equal(r.code, 0, show(r));
    assert.equal(dataVersion(db2), 24);
    const names = readdirSync(d2).sort();
    const kept = names.find((n) => /replaced-\d{8}T\d{6}Z$/.test(n))!;
    assert.ok(kept, names.join(', '));
    assert.deepEqual(readFileSync(join(d2, kept)), before);
    assert.equal(readFileSync(join(d2, `${kept}-journal`), 'utf8'), 'not a real journal');
    assert.ok(!names.includes('lightningd.sqlite3-journal'), names.join(', '));
  });

  test('a DEST that is no SQLite file at all has no version to lose: replaced with --force, and kept', async () => {
    const d = area.dir();
    writeFileSync(join(d, 'lightningd.sqlite3'), 'garbage, not SQLite '.repeat(100));
    const ok = await runCli(['restore', '--force', url(BKP), d]);
    assert.equal(ok.code, 0, show(ok));
    assert.equal(dataVersion(join(d, 'lightningd.sqlite3')), 24);
    assert.match(ok.stdout, /The database it replaced \(data_version unknown: file is not a database\) is kept as /);
  });

  test('refuses while lightningd answers on DEST\'s lightning-rpc', async () => {
    const d = area.dir();
    const db = await restoredAt(d, 5);
    const before = readFileSync(db);
    const server: Server = createServer((s) => s.end());
    await new Promise<void>((resolve) => server.listen(join(d, 'lightning-rpc'), resolve));
    try {
      const r = await runCli(['restore', '--force', url(BKP), d]);
      assert.equal(r.code, 1, show(r));
      assert.match(r.stderr, /lightningd seems to be running \(lightningd answers on .*lightning-rpc\); stop it before restoring/);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    assert.deepEqual(readFileSync(db), before);
  });

  test('refuses while a process holds DEST open', async () => {
    const d = area.dir();
    const db = await restoredAt(d, 5);
    const before = readFileSync(db);
    const holder = spawn(
      process.execPath,
      ['--input-type=module', '-e', `import D from 'better-sqlite3'; const db = new D(process.argv[1]); db.prepare('SELECT 1 FROM vars').get(); console.log('open'); setInterval(() => {}, 1000);`, db],
      { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      await new Promise<void>((resolve, reject) => {
        holder.stdout.once('data', () => resolve());
        holder.once('exit', (c) => reject(new Error(`holder exited ${c}`)));
      });
      const r = await runCli(['restore', '--force', url(BKP), d]);
      assert.equal(r.code, 1, show(r));
      assert.match(r.stderr, new RegExp(`process ${holder.pid} \\(node\\) has .*lightningd\\.sqlite3 open`));
    } finally {
      holder.kill('SIGKILL');
    }
    assert.deepEqual(readFileSync(db), before);
  });

  test("refuses while a plugin holds the backup's writer lock (a running node writes to it)", async () => {
    const net = area.dir();
    const bkp = copyFixture(BKP, join(net, 'node.bkp'));
    chmodSync(bkp, 0o644);
    writeFileSync(join(net, 'backup.lock'), JSON.stringify({ backend_url: url(bkp) }));
    const p = new PluginProc(net);
    try {
      const m = await p.call('m', 'getmanifest', {});
      assert.ok(m.result, JSON.stringify(m));
      const d = area.dir();
      const db = await restoredAt(d, 5);
      const before = readFileSync(db);
      const r = await runCli(['restore', '--force', url(bkp), d]);
      assert.equal(r.code, 1, show(r));
      assert.match(r.stderr, /node\.bkp is held by a writer \(the clnvault plugin of a running lightningd.*--force would replace a database under it/);
      assert.deepEqual(readFileSync(db), before);
      assert.deepEqual(readdirSync(d), ['lightningd.sqlite3']);
      // a copy into a new file (a drill) is still allowed while the node runs
      const copy = area.dir();
      const c = await runCli(['restore', url(bkp), copy]);
      assert.equal(c.code, 0, show(c));
    } finally {
      await p.close();
    }
    // the plugin gone, the same --force restore works
    const d = area.dir();
    await restoredAt(d, 5);
    const ok = await runCli(['restore', '--force', url(bkp), d]);
    assert.equal(ok.code, 0, show(ok));
  });
});
