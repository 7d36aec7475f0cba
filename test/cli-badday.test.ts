/**
 * Issue 10 ("the bad day"), items 3, 4, 7, 8, 9 and 10: no command may be silently wrong. URLs that
 * name a host, a base directory given as the network directory, misleading messages, progress in cron
 * mail, inconsistent exit codes and JSON, and files the node's user cannot open.
 */
import assert from 'node:assert/strict';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, test } from 'node:test';
import { createBackup } from '../src/backends/open.js';
import { V2Writer } from '../src/backends/file/v2.js';
import { runCli, scratchArea, show, type CliRun } from './helpers/cli.js';
import { FIXTURES } from './helpers/fixtures.js';

const REF = join(FIXTURES, 'reference-backups');
const NODE_DB = join(REF, 'snapshot-init/expected.sqlite3');
const BKP = join(REF, 'empty-init/backup.dbak');
const area = scratchArea('clnvault-badday-');
after(() => area.cleanup());
const url = (p: string): string => pathToFileURL(p).href;
const isRoot = process.getuid?.() === 0;

function nodeDir(parent: string, name = 'regtest'): string {
  const net = join(parent, name);
  mkdirSync(net, { recursive: true });
  copyFileSync(NODE_DB, join(net, 'lightningd.sqlite3'));
  chmodSync(join(net, 'lightningd.sqlite3'), 0o644);
  return net;
}

function lastLine(r: CliRun): string {
  return r.stdout.trimEnd().split('\n').at(-1) ?? '';
}

/** a v2 backup of 6 changes with one byte flipped in the middle record: damaged, not a torn tail */
function damagedV2(path: string): void {
  createBackup(url(path), '/', 'v2');
  const w = V2Writer.open(path);
  for (let v = 1; v <= 6; v++) w.appendChange(v, [`CREATE TABLE IF NOT EXISTS t (a); INSERT INTO t VALUES (${v});`]);
  w.close();
  const b = readFileSync(path);
  b[Math.floor(b.length / 2)]! ^= 0xff;
  writeFileSync(path, b);
}

describe('item 3: file: URLs and resolved paths', () => {
  test('file://host/path is refused with the spellings that work; nothing is created anywhere', async () => {
    const d = area.dir();
    // two slashes: "clnvaulthost" would be the host and the file would land at d/x.bkp (the reference's urlparse)
    const bad = `file://clnvaulthost${d}/x.bkp`;
    const r = await runCli(['init', bad]);
    assert.equal(r.code, 2, show(r));
    assert.match(r.stderr, /names the host "clnvaulthost", not a directory/);
    assert.ok(r.stderr.includes(`file:///clnvaulthost${d}/x.bkp`), r.stderr);
    assert.ok(r.stderr.includes(`file:/clnvaulthost${d}/x.bkp`), r.stderr);
    assert.deepEqual(readdirSync(d), []);
    for (const cmd of [['inspect', bad], ['verify', bad], ['restore', bad, join(d, 'out')], ['compact', bad]]) {
      const c = await runCli(cmd);
      assert.equal(c.code, 2, `${cmd[0]}: ${show(c)}`);
      assert.match(c.stderr, /names the host "clnvaulthost"/);
    }
  });

  test('an empty host or localhost is the local file', async () => {
    const d = area.dir();
    const r = await runCli(['init', `file://localhost${d}/a.bkp`]);
    assert.equal(r.code, 0, show(r));
    assert.ok(existsSync(join(d, 'a.bkp')));
    const i = await runCli(['inspect', `file://${d}/a.bkp`]);
    assert.equal(i.code, 0, show(i));
  });

  test('every command names the resolved absolute path of the backup, even for a relative argument', async () => {
    const d = area.dir();
    const net = nodeDir(d);
    const init = await runCli(['init', '--lightning-dir', 'regtest', 'b.bkp'], { cwd: d });
    assert.equal(init.code, 0, show(init));
    const abs = join(d, 'b.bkp');
    assert.ok(init.stdout.includes(abs), init.stdout);
    // the lock holds an absolute file:// URL: a plain relative path is relative to where the user typed it
    assert.equal(JSON.parse(readFileSync(join(net, 'backup.lock'), 'utf8')).backend_url, `file://${abs}`);
    for (const args of [['inspect', 'b.bkp'], ['verify', 'b.bkp'], ['restore', 'b.bkp', 'out.sqlite3'], ['compact', 'b.bkp']]) {
      const r = await runCli(args, { cwd: d });
      assert.equal(r.code, 0, `${args[0]}: ${show(r)}`);
      assert.ok(r.stdout.includes(abs), `${args[0]} names ${abs}:\n${r.stdout}`);
    }
    const st = await runCli(['status', '--lightning-dir', net]);
    assert.ok(st.stdout.includes(abs), st.stdout);
  });

  test('init warns when the backup is on the filesystem of the database', async () => {
    const d = area.dir();
    const net = nodeDir(d);
    const r = await runCli(['init', '--lightning-dir', net, url(join(d, 'b.bkp'))]);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /WARNING: the backup .*b\.bkp is on the same filesystem as the database .*a failed disk takes both/);
  });

  test('and does not when it is elsewhere (/dev/shm, when that is another filesystem)', async (t) => {
    if (!existsSync('/dev/shm') || statSync('/dev/shm').dev === statSync(tmpdir()).dev) {
      t.skip('/dev/shm is not a separate filesystem here');
      return;
    }
    const d = area.dir();
    const net = nodeDir(d);
    const shm = join('/dev/shm', `clnvault-badday-${process.pid}`);
    mkdirSync(shm, { recursive: true });
    try {
      const r = await runCli(['init', '--lightning-dir', net, url(join(shm, 'b.bkp'))]);
      assert.equal(r.code, 0, show(r));
      assert.doesNotMatch(r.stdout, /same filesystem/);
      assert.match(lastLine(r), /you can now start Core Lightning/);
    } finally {
      (await import('node:fs')).rmSync(shm, { recursive: true, force: true });
    }
  });
});

describe("item 4: --lightning-dir may be lightningd's base directory", () => {
  test('one network directory with a database: used, and said', async () => {
    const base = area.dir();
    const net = nodeDir(base, 'regtest');
    const r = await runCli(['init', '--lightning-dir', base, url(join(area.dir(), 'b.bkp'))]);
    assert.equal(r.code, 0, show(r));
    assert.ok(r.stdout.startsWith(`${base} holds no lightningd.sqlite3, but its network directory ${net} does: using ${net}`), r.stdout);
    assert.ok(existsSync(join(net, 'backup.lock')));
    assert.ok(!existsSync(join(base, 'backup.lock')), 'no backup.lock in the base directory');
    const st = await runCli(['status', '--lightning-dir', base]);
    assert.equal(st.code, 0, show(st));
    assert.match(st.stdout, /in step/);
  });

  test('a config naming the network picks it among several', async () => {
    const base = area.dir();
    nodeDir(base, 'bitcoin');
    const net = nodeDir(base, 'regtest');
    writeFileSync(join(base, 'config'), '# test node\nnetwork=regtest\nlog-level=debug\n');
    const r = await runCli(['init', '--lightning-dir', base, url(join(area.dir(), 'b.bkp'))]);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /its config names the network regtest, so using .*regtest/);
    assert.ok(existsSync(join(net, 'backup.lock')));
  });

  test('several candidates and no config: refused, listing them; nothing created', async () => {
    const base = area.dir();
    nodeDir(base, 'bitcoin');
    nodeDir(base, 'testnet');
    const out = area.dir();
    const r = await runCli(['init', '--lightning-dir', base, url(join(out, 'b.bkp'))]);
    assert.equal(r.code, 1, show(r));
    assert.ok(r.stderr.includes(join(base, 'bitcoin')) && r.stderr.includes(join(base, 'testnet')), r.stderr);
    assert.match(r.stderr, /pass the one you mean as --lightning-dir/);
    assert.deepEqual(readdirSync(out), []);
    assert.ok(!existsSync(join(base, 'bitcoin', 'backup.lock')));
  });

  test('a base directory whose node never ran (config, no network directory): refused with the mkdir', async () => {
    const base = area.dir();
    writeFileSync(join(base, 'config'), 'alias=x\n');
    const out = area.dir();
    const r = await runCli(['init', '--lightning-dir', base, url(join(out, 'b.bkp'))]);
    assert.equal(r.code, 1, show(r));
    assert.match(r.stderr, new RegExp(`network directory ${join(base, 'bitcoin')} does not exist yet.*mkdir`));
    assert.deepEqual(readdirSync(out), []);
    assert.deepEqual(readdirSync(base), ['config']);
  });

  test('init without --lightning-dir says in its last line that no backup.lock was written', async () => {
    const d = area.dir();
    const r = await runCli(['init', url(join(d, 'b.bkp'))]);
    assert.equal(r.code, 0, show(r));
    assert.doesNotMatch(r.stdout, /you can now start Core Lightning/);
    assert.match(lastLine(r), /wrote no backup\.lock \(no --lightning-dir\): the plugin does not know about this backup/);
  });
});

describe('item 7: messages that say what happened', () => {
  test("restore's hint 'clnvault verify /path' works: plain paths are taken everywhere", async () => {
    const d = area.dir();
    const bkp = join(d, 'd.bkp');
    damagedV2(bkp);
    const r = await runCli(['restore', url(bkp), join(d, 'out.sqlite3')]);
    assert.equal(r.code, 1, show(r));
    const hint = /'clnvault verify ([^']+)'/.exec(r.stderr);
    assert.ok(hint, r.stderr);
    const v = await runCli(['verify', hint[1]!]);
    assert.equal(v.code, 1, `the drill ran and found the damage: ${show(v)}`);
    assert.match(v.stdout, /FAIL: the backup is damaged/);
  });

  test('inspect of a damaged backup does not call it empty', async () => {
    const d = area.dir();
    const bkp = join(d, 'd.bkp');
    damagedV2(bkp);
    const r = await runCli(['inspect', url(bkp)]);
    assert.equal(r.code, 1, show(r));
    assert.doesNotMatch(r.stdout, /empty backup/);
    assert.match(r.stdout, /head version   6 \(as the file says; its entries could not be listed because of the damage below\)/);
  });

  test('a missing backup during restore does not suggest creating one', async () => {
    const d = area.dir();
    const r = await runCli(['restore', url(join(d, 'gone.bkp')), join(d, 'out.sqlite3')]);
    assert.equal(r.code, 1, show(r));
    assert.doesNotMatch(r.stderr, /clnvault init/);
    assert.match(r.stderr, /gone\.bkp does not exist \(is the backup disk mounted\?\)/);
  });

  test('a destination directory the user may not write is reported as that, not as a damaged backup', { skip: !isRoot && 'needs root to run the CLI as another user' }, async () => {
    const d = area.dir();
    chmodSync(d, 0o755);
    const dest = join(d, 'dest');
    mkdirSync(dest, { mode: 0o555 });
    chmodSync(dest, 0o555);
    copyFileSync(BKP, join(d, 'b.bkp'));
    chmodSync(join(d, 'b.bkp'), 0o644);
    const { spawnSync } = await import('node:child_process');
    const { CLI } = await import('./helpers/cli.js');
    // the scratch root is 0700 (mkdtemp): nobody must be able to reach it
    chmodSync(area.root, 0o755);
    const r = spawnSync(process.execPath, [CLI, 'restore', url(join(d, 'b.bkp')), dest], { uid: 65534, gid: 65534, encoding: 'utf8' });
    assert.equal(r.status, 1, `${r.stdout}\n${r.stderr}`);
    assert.doesNotMatch(r.stderr, /Check the backup|verify/);
    assert.match(r.stderr, /this user \(uid 65534\) may not write in .*dest/);
    assert.deepEqual(readdirSync(dest), []);
  });
});

describe('item 8: progress only on a terminal or with --progress; --quiet', () => {
  test('verify >/dev/null from cron: nothing on stderr; --quiet: nothing at all on a pass', async () => {
    const plain = await runCli(['verify', url(BKP)]);
    assert.equal(plain.code, 0, show(plain));
    assert.equal(plain.stderr, '');
    const quiet = await runCli(['verify', '--quiet', url(BKP)]);
    assert.equal(quiet.code, 0, show(quiet));
    assert.equal(quiet.stdout + quiet.stderr, '');
    const prog = await runCli(['verify', '--progress', url(BKP)]);
    assert.equal(prog.code, 0, show(prog));
    assert.match(prog.stderr, /^restore drill \d+\/\d+ entries \(100%\)/m);
    const insp = await runCli(['inspect', url(BKP)]);
    assert.equal(insp.stderr, '');
  });

  test('--quiet still prints a failure', async () => {
    const d = area.dir();
    damagedV2(join(d, 'd.bkp'));
    const r = await runCli(['verify', '--quiet', url(join(d, 'd.bkp'))]);
    assert.equal(r.code, 1, show(r));
    assert.match(r.stdout, /^FAIL: /);
  });
});

describe('item 9: exit codes and JSON that scripts can rely on', () => {
  test('an unknown scheme is a usage error (2) in every command', async () => {
    const d = area.dir();
    for (const args of [['init', 'ftp://h/x.bkp'], ['restore', 'ftp://h/x.bkp', join(d, 'o')], ['inspect', 'ftp://h/x.bkp'], ['verify', 'ftp://h/x.bkp'], ['compact', 'ftp://h/x.bkp']]) {
      const r = await runCli(args);
      assert.equal(r.code, 2, `${args[0]}: ${show(r)}`);
      assert.match(r.stderr, /no backend for "ftp:\/\/h\/x\.bkp"/);
    }
  });

  test("every command's --json failure is one JSON object on stdout with the same fields", async () => {
    const d = area.dir();
    const gone = url(join(d, 'gone.bkp'));
    const cases: Array<[string[], number]> = [
      [['init', '--json', 'ftp://h/x.bkp'], 2],
      [['restore', '--json', gone, join(d, 'o')], 1],
      [['inspect', '--json', gone], 2],
      [['verify', '--json', gone], 2],
      [['status', '--json', '--lightning-dir', join(d, 'nope')], 2],
      [['compact', '--json', gone], 1],
      [['restore', '--json', '--frobnicate', gone, join(d, 'o')], 2],
    ];
    for (const [args, code] of cases) {
      const r = await runCli(args);
      assert.equal(r.code, code, `${args.join(' ')}: ${show(r)}`);
      let j: Record<string, unknown>;
      try {
        j = JSON.parse(r.stdout) as Record<string, unknown>;
      } catch {
        assert.fail(`${args.join(' ')}: stdout is not one JSON object: ${show(r)}`);
      }
      assert.equal(j.ok, false, args.join(' '));
      assert.equal(j.result, 'error', args.join(' '));
      assert.equal(j.command, args[0]);
      assert.equal(j.exitCode, code);
      assert.equal(typeof j.message, 'string');
      // the same message as the one line on stderr
      assert.equal(r.stderr.trim(), `clnvault ${args[0]}: ${String(j.message)}`);
    }
  });
});

describe("item 10: files belong to lightningd's user", { skip: !isRoot && 'needs root to own files as another user' }, () => {
  test('init as root gives the backup and backup.lock to the owner of the network directory', async () => {
    const d = area.dir();
    const net = nodeDir(d);
    chownSync(net, 65534, 65534);
    chownSync(join(net, 'lightningd.sqlite3'), 65534, 65534);
    const r = await runCli(['init', '--lightning-dir', net, url(join(d, 'b.bkp'))]);
    assert.equal(r.code, 0, show(r));
    for (const f of [join(d, 'b.bkp'), join(net, 'backup.lock')]) {
      const st = statSync(f);
      assert.equal(st.uid, 65534, f);
      assert.equal(st.gid, 65534, f);
    }
    // the backup's directory is root's 0755: the plugin could not create its writer lock there
    assert.match(r.stdout, /WARNING: the node's user \(uid 65534\) cannot create files in /);
    assert.match(lastLine(r), /fix the WARNING above before starting Core Lightning/);
  });

  test('status checks access as that user: a root-owned 0600 backup is not "in step"', async () => {
    const d = area.dir();
    const net = nodeDir(d);
    const bdir = join(d, 'backups');
    mkdirSync(bdir);
    const r = await runCli(['init', '--lightning-dir', net, url(join(bdir, 'b.bkp'))]);
    assert.equal(r.code, 0, show(r));
    const ok = await runCli(['status', '--lightning-dir', net]);
    assert.match(ok.stdout, /^in step/, show(ok));
    // now the node runs as nobody, but the files init made are root's
    chownSync(net, 65534, 65534);
    chownSync(join(net, 'lightningd.sqlite3'), 65534, 65534);
    chownSync(bdir, 65534, 65534);
    chmodSync(join(bdir, 'b.bkp'), 0o600);
    const st = await runCli(['status', '--lightning-dir', net]);
    assert.equal(st.code, 1, show(st));
    assert.doesNotMatch(st.stdout, /in step/);
    assert.match(st.stdout, /^the plugin cannot use the backup: the node's user \(uid 65534\) cannot read .*backup\.lock.*cannot read and write .*b\.bkp.*chown 65534:65534 /);
    const j = JSON.parse((await runCli(['status', '--json', '--lightning-dir', net])).stdout) as { state: string };
    assert.equal(j.state, 'no-access');
  });
});

describe('item 11: compact never swaps in a larger backup', () => {
  test('a small backup whose snapshot would outweigh its entries: "nothing to gain", exit 0, file untouched', async () => {
    const d = area.dir();
    const bkp = join(d, 'b.bkp');
    copyFileSync(join(REF, 'after-rewind/backup.dbak'), bkp);
    chmodSync(bkp, 0o644);
    const before = readFileSync(bkp);
    const r = await runCli(['compact', url(bkp)]);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, new RegExp(`${bkp.replace(/[.]/g, '\\.')}: nothing to gain: compacted it would be \\d+ bytes, not less than its ${before.length} bytes`));
    assert.deepEqual(readFileSync(bkp), before);
    // (b.bkp.writer is the writer lock's side file, which every writer leaves)
    assert.deepEqual(readdirSync(d).filter((n) => n !== 'b.bkp.writer'), ['b.bkp'], 'no history copy, no temp file');
    const j = await runCli(['compact', '--json', url(bkp)]);
    assert.equal(j.code, 0, show(j));
    const o = JSON.parse(j.stdout) as { ok: boolean; result: string; wouldBeBytes: number; before: { backupsize: number }; after: { backupsize: number } };
    assert.equal(o.ok, true);
    assert.equal(o.result, 'nothing-to-gain');
    assert.ok(o.wouldBeBytes >= before.length);
    assert.equal(o.after.backupsize, o.before.backupsize);
    assert.deepEqual(readFileSync(bkp), before);
  });

  test('one that does shrink is compacted, with the sizes before and after', async () => {
    const d = area.dir();
    const bkp = join(d, 'b.bkp');
    copyFileSync(join(REF, 'snapshot-init/backup.dbak'), bkp);
    chmodSync(bkp, 0o644);
    const size = statSync(bkp).size;
    const r = await runCli(['compact', '--history', '0', url(bkp)]);
    assert.equal(r.code, 0, show(r));
    const m = /^Compacted .*: (\d+) entries \/ (\d+) bytes -> (\d+) entries \/ (\d+) bytes/.exec(r.stdout);
    assert.ok(m, r.stdout);
    assert.equal(Number(m[2]), size);
    assert.ok(Number(m[4]) < size);
    assert.equal(statSync(bkp).size, Number(m[4]));
  });
});
