/**
 * The clnvault CLI as an operator meets it: the built executable spawned on real files. Here: the
 * dispatcher, init (snapshot of an existing database, every refusal, nothing left behind) and restore
 * (refusals, --force, --to-version, --json, progress on a terminal and off it).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, test } from 'node:test';
import { CLI, copyFixture, REPO_ROOT, runCli, scratchArea, show, type CliRun } from './helpers/cli.js';
import { FIXTURES } from './helpers/fixtures.js';
import { dataVersion, dump } from './helpers/sqlite.js';

const REF = join(FIXTURES, 'reference-backups');
const area = scratchArea('clnvault-cli-');
after(() => area.cleanup());

const url = (p: string): string => pathToFileURL(p).href;

/** A copy of a fixture file the test may write to (fixtures are read-only). */
function writableCopy(src: string, dest: string): string {
  copyFixture(src, dest);
  chmodSync(dest, 0o644);
  return dest;
}

/** Errors are one line naming what failed and what to do; a stack trace only with --debug. */
function assertOneLineError(r: CliRun, code: number, re: RegExp): void {
  assert.equal(r.code, code, show(r));
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one error line expected:\n${r.stderr}`);
  assert.match(lines[0]!, re);
  assert.doesNotMatch(r.stderr, /^\s+at /m);
}

describe('dispatcher', () => {
  test('--help lists every command; no command is a usage error; unknown commands exit 2', async () => {
    const h = await runCli(['--help']);
    assert.equal(h.code, 0, show(h));
    for (const c of ['init', 'restore', 'inspect', 'verify', 'status', 'demo']) assert.match(h.stdout, new RegExp(`^  ${c} `, 'm'));
    const none = await runCli([]);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /Usage: clnvault <command>/);
    assert.equal(none.stdout, '', 'a usage error writes nothing on stdout');
    const bad = await runCli(['frobnicate']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown command "frobnicate"/);
  });

  test('every command has --help with an example and its exit codes', async () => {
    for (const c of ['init', 'restore', 'inspect', 'verify', 'status', 'demo']) {
      const r = await runCli([c, '--help']);
      assert.equal(r.code, 0, show(r));
      assert.match(r.stdout, new RegExp(`^Usage: clnvault ${c}`));
      assert.match(r.stdout, /Exit codes: 0 /);
      assert.match(r.stdout, /\nExample/);
    }
  });

  test('an unknown option is a usage error (2) that points to --help', async () => {
    const r = await runCli(['restore', '--frob', 'file:x', 'y']);
    assertOneLineError(r, 2, /clnvault restore: .*see 'clnvault restore --help'/);
  });

  test('--debug adds the stack trace to the error line', async () => {
    const d = area.dir();
    const plain = await runCli(['restore', url(join(d, 'missing.bkp')), join(d, 'out.sqlite3')]);
    assertOneLineError(plain, 1, /missing\.bkp does not exist \(is the backup disk mounted\?\)/);
    const debug = await runCli(['restore', '--debug', url(join(d, 'missing.bkp')), join(d, 'out.sqlite3')]);
    assert.equal(debug.code, 1);
    assert.match(debug.stderr, /^\s+at /m);
  });
});

describe('init', () => {
  test('without a node: an empty v2 backup, or v1 with --format v1', async () => {
    const d = area.dir();
    const r = await runCli(['init', url(join(d, 'a.bkp'))]);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /Created an empty backup file/);
    assert.equal(readFileSync(join(d, 'a.bkp')).subarray(0, 8).toString(), 'CLNVAULT');
    const v1 = await runCli(['init', '--format', 'v1', 'file:b.bkp'], { cwd: d });
    assert.equal(v1.code, 0, show(v1));
    assert.equal(statSync(join(d, 'b.bkp')).size, 512, 'a fresh reference header');
    assert.deepEqual(readdirSync(d).sort(), ['a.bkp', 'b.bkp'], 'no writer lock or temp file left');
  });

  test('with an existing database: a consistent snapshot, backup.lock, and it restores to the same database', async () => {
    const d = area.dir();
    const net = area.dir(`${d.split('/').pop()}/regtest`);
    writableCopy(join(REF, 'snapshot-init/expected.sqlite3'), join(net, 'lightningd.sqlite3'));
    const want = dataVersion(join(net, 'lightningd.sqlite3'));
    const bkp = join(d, 'backup.bkp');
    const r = await runCli(['init', '--lightning-dir', net, url(bkp)]);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /Found an existing database/);
    assert.match(r.stdout, new RegExp(`initial snapshot \\(data_version ${want}\\)`));
    assert.equal(readFileSync(join(net, 'backup.lock'), 'utf8'), `{"backend_url": ${JSON.stringify(url(bkp))}}`);
    assert.deepEqual(readdirSync(d).sort(), ['backup.bkp', 'regtest']);

    const out = join(d, 'restored.sqlite3');
    const rr = await runCli(['restore', url(bkp), out]);
    assert.equal(rr.code, 0, show(rr));
    assert.equal(dump(out), dump(join(net, 'lightningd.sqlite3')));
    assert.equal(dataVersion(out), want);

    const noRb = area.dir();
    const r2 = await runCli(['init', '--no-rebaseline', '--lightning-dir', noRb, url(join(noRb, 'x.bkp'))]);
    assert.equal(r2.code, 0, show(r2));
    assert.match(r2.stdout, /Database does not exist yet/);
    assert.equal(readFileSync(join(noRb, 'backup.lock'), 'utf8'), `{"backend_url": ${JSON.stringify(url(join(noRb, 'x.bkp')))}, "rebaseline": false}`);
  });

  test('refusals: usage errors exit 2, the others 1, each one line, nothing created', async () => {
    const d = area.dir();
    writeFileSync(join(d, 'exists.bkp'), 'x');
    const locked = area.dir();
    writeFileSync(join(locked, 'backup.lock'), '{"backend_url": "file:///elsewhere.bkp"}');
    const cases: Array<[string[], number, RegExp]> = [
      [['init'], 2, /expected one backup URL/],
      [['init', '--format', 'v3', url(join(d, 'n.bkp'))], 2, /--format must be v1 or v2/],
      [['init', url(join(d, 'exists.bkp'))], 1, /exists\.bkp already exists/],
      [['init', url(join(d, 'nodir/n.bkp'))], 1, /directory .*nodir does not exist; create it \(or mount the backup disk\)/],
      [['init', 'ftp://host/n.bkp'], 2, /no backend for "ftp:\/\/host\/n\.bkp": give a file: URL/],
      [['init', '--lightning-dir', join(d, 'nope'), url(join(d, 'n.bkp'))], 1, /is not a directory/],
      [['init', '--lightning-dir', locked, url(join(d, 'n.bkp'))], 1, /backup\.lock already exists \(it points to file:\/\/\/elsewhere\.bkp\)/],
    ];
    for (const [args, code, re] of cases) assertOneLineError(await runCli(args), code, re);
    assert.deepEqual(readdirSync(d), ['exists.bkp']);
    assert.deepEqual(readdirSync(locked), ['backup.lock']);
  });

  test('refuses while a process holds the database open (as lightningd does), leaving nothing behind', async () => {
    const d = area.dir();
    const net = area.dir(`${d.split('/').pop()}/regtest`);
    const db = writableCopy(join(REF, 'snapshot-init/expected.sqlite3'), join(net, 'lightningd.sqlite3'));
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
      const r = await runCli(['init', '--lightning-dir', net, url(join(d, 'b.bkp'))]);
      assertOneLineError(r, 1, new RegExp(`lightningd seems to be running \\(process ${holder.pid} \\(node\\) has .*lightningd\\.sqlite3 open\\); stop it before 'clnvault init'`));
    } finally {
      holder.kill('SIGKILL');
    }
    assert.deepEqual(readdirSync(d).sort(), ['regtest']);
    assert.deepEqual(readdirSync(net), ['lightningd.sqlite3']);
  });

  test('refuses while lightningd answers on lightning-rpc, leaving nothing behind', async () => {
    const d = area.dir();
    const net = area.dir(`${d.split('/').pop()}/regtest`);
    writableCopy(join(REF, 'snapshot-init/expected.sqlite3'), join(net, 'lightningd.sqlite3'));
    const server: Server = createServer((s) => s.end());
    await new Promise<void>((resolve) => server.listen(join(net, 'lightning-rpc'), resolve));
    try {
      const r = await runCli(['init', '--lightning-dir', net, url(join(d, 'b.bkp'))]);
      assertOneLineError(r, 1, /lightningd seems to be running \(lightningd answers on .*lightning-rpc\)/);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
    assert.deepEqual(readdirSync(d), ['regtest']);
    assert.deepEqual(readdirSync(net), ['lightningd.sqlite3']);
    // A stale socket file with nobody listening is not a running node.
    writeFileSync(join(net, 'lightning-rpc'), '');
    const ok = await runCli(['init', '--lightning-dir', net, url(join(d, 'b.bkp'))]);
    assert.equal(ok.code, 0, show(ok));
  });

  test('a failure after the backup was created removes it and writes no lock', async () => {
    const d = area.dir();
    const net = area.dir(`${d.split('/').pop()}/regtest`);
    writeFileSync(join(net, 'lightningd.sqlite3'), 'this is not an SQLite database, but long enough to look like a file '.repeat(20));
    const r = await runCli(['init', '--lightning-dir', net, url(join(d, 'b.bkp'))]);
    assertOneLineError(r, 1, /cannot snapshot .*regtest\/lightningd\.sqlite3 \(file is not a database\); check that it is lightningd's database.*Nothing was created/);
    assert.deepEqual(readdirSync(d), ['regtest'], 'no backup, no writer lock, no snapshot temp file');
    assert.deepEqual(readdirSync(net), ['lightningd.sqlite3'], 'no backup.lock');
  });
});

describe('restore', () => {
  const afterRewind = join(REF, 'after-rewind');

  test('into a directory and into a file; refuses an existing destination; --force replaces it', async () => {
    const d = area.dir();
    const bkp = url(join(afterRewind, 'backup.dbak'));
    const r = await runCli(['restore', bkp, `${d}/`]);
    assert.equal(r.code, 0, show(r));
    const dest = join(d, 'lightningd.sqlite3');
    assert.match(r.stdout, new RegExp(`Restored ${dest} at data_version 21: .*1 stale entries skipped`));
    assert.equal(dump(dest), readFileSync(join(afterRewind, 'expected.dump.sql'), 'utf8'));

    writeFileSync(join(d, 'other.sqlite3'), 'keep me');
    const refused = await runCli(['restore', bkp, join(d, 'other.sqlite3')]);
    assertOneLineError(refused, 1, /destination .*other\.sqlite3 exists; move it aside or pass --force/);
    assert.equal(readFileSync(join(d, 'other.sqlite3'), 'utf8'), 'keep me');
    const again = await runCli(['restore', bkp, d]);
    assertOneLineError(again, 1, /lightningd\.sqlite3 exists; move it aside or pass --force/);

    const forced = await runCli(['restore', '--force', bkp, join(d, 'other.sqlite3')]);
    assert.equal(forced.code, 0, show(forced));
    assert.equal(dataVersion(join(d, 'other.sqlite3')), 21);
    const names = readdirSync(d).sort();
    assert.equal(names.length, 3, `no temp file left beside them: ${names.join(', ')}`);
    assert.deepEqual(names.slice(0, 2), ['lightningd.sqlite3', 'other.sqlite3']);
    // the replaced file is kept (issue 10 item 1)
    assert.match(names[2]!, /^other\.sqlite3\.replaced-\d{8}T\d{6}Z$/);
    assert.equal(readFileSync(join(d, names[2]!), 'utf8'), 'keep me');
  });

  test('--to-version stops at a chosen version, and says which versions exist when it cannot', async () => {
    const d = area.dir();
    const bkp = url(join(afterRewind, 'backup.dbak'));
    const r = await runCli(['restore', '--to-version', '10', bkp, join(d, 'at10.sqlite3')]);
    assert.equal(r.code, 0, show(r));
    assert.equal(dataVersion(join(d, 'at10.sqlite3')), 10);
    const high = await runCli(['restore', '--to-version', '99', bkp, join(d, 'at99.sqlite3')]);
    assertOneLineError(high, 1, /version 99 is newer than anything backed up.*\bversions 1 to 21\b.*\(21 is the newest\)/);
    const bad = await runCli(['restore', '--to-version', 'ten', bkp, join(d, 'x.sqlite3')]);
    assertOneLineError(bad, 2, /--to-version takes a data_version/);
    assert.deepEqual(readdirSync(d), ['at10.sqlite3']);
  });

  test('--json prints the result; a missing backup names the file and the disk to mount', async () => {
    const d = area.dir();
    const r = await runCli(['restore', '--json', url(join(REF, 'compacted/backup.dbak')), d]);
    assert.equal(r.code, 0, show(r));
    const j = JSON.parse(r.stdout) as Record<string, unknown>;
    assert.equal(j.ok, true);
    assert.equal(j.path, join(d, 'lightningd.sqlite3'));
    assert.equal(j.head, Number(readFileSync(join(REF, 'compacted/expected-data_version.txt'), 'utf8')));
    assert.equal(typeof j.snapshotVersion, 'number');
    for (const k of ['applied', 'statements', 'dropped', 'elapsedMs']) assert.equal(typeof j[k], 'number', k);
    assert.equal(j.integrity, 'ok');
    assert.equal(j.foreignKeyViolations, 0);
    const missing = await runCli(['restore', url(join(d, 'gone.bkp')), join(d, 'x.sqlite3')]);
    assertOneLineError(missing, 1, /backup file .*gone\.bkp does not exist \(is the backup disk mounted\?\)/);
  });

  test('progress: none when stderr is not a terminal; plain lines there with --progress; --quiet prints nothing on success', async () => {
    const silent = await runCli(['restore', url(join(afterRewind, 'backup.dbak')), area.dir()]);
    assert.equal(silent.code, 0, show(silent));
    assert.equal(silent.stderr, '', 'a cron job must not get mail for progress');
    const quiet = await runCli(['restore', '--quiet', url(join(afterRewind, 'backup.dbak')), area.dir()]);
    assert.equal(quiet.code, 0, show(quiet));
    assert.equal(quiet.stderr + quiet.stdout, '');
    const d = area.dir();
    const r = await runCli(['restore', '--progress', url(join(afterRewind, 'backup.dbak')), d]);
    assert.equal(r.code, 0, show(r));
    assert.doesNotMatch(r.stderr, /[\r\x1b]/, 'no carriage returns or escape sequences in a log');
    assert.match(r.stderr, /^restoring 23\/23 entries \(100%\), \d+ entries\/s, ETA 0s$/m);
    assert.doesNotMatch(r.stdout, /restoring \d+\//, 'progress never goes to stdout');
  });

  test('progress: a redrawn bar with rate and ETA on a terminal (run under script(1))', async (t) => {
    if (spawnSync('script', ['--version'], { stdio: 'ignore' }).status !== 0) {
      t.skip('script(1) is not installed: cannot give the CLI a terminal');
      return;
    }
    const d = area.dir();
    const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
    const cmd = `${q(CLI)} restore ${q(url(join(afterRewind, 'backup.dbak')))} ${q(d)}`;
    const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { encoding: 'utf8', timeout: 60_000 });
    assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout, /\r\[#{24}\] restoring 23\/23 entries \(100%\), \d+ entries\/s, ETA 0s\x1b\[K/);
    assert.ok(existsSync(join(d, 'lightningd.sqlite3')));
  });
});
