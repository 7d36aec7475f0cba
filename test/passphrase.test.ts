/**
 * Passphrase keys (docs/keys.md, "From a passphrase"): `init --encrypt --passphrase-file`, the plugin
 * reading "passphrase_file" from backup.lock at start-up, restore/verify/inspect/compact with
 * --passphrase-file, and what is refused. The key is scrypt(passphrase, salt from the backup id) with
 * the cost in the file header: the backup plus the passphrase is all a restore needs.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { after, describe, it } from 'node:test';
import { SimNode } from '../src/sim/lightningd.js';
import { FIXTURES } from './helpers/fixtures.js';
import { dump } from './helpers/sqlite.js';
import { PluginProc } from './helpers/plugin-proc.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const CLN = join(FIXTURES, 'cln-v26.06.6');
const PASS = 'correct horse battery staple';
const dirs: string[] = [];
after(() => {
  if (!process.env.CLNVAULT_KEEP_TMP) for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function cli(args: string[], cwd: string, input?: string): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', ...(input !== undefined ? { input } : {}) });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'clnvault-pass-'));
  dirs.push(d);
  return d;
}

interface Node {
  dir: string;
  netDir: string;
  bkp: string;
  url: string;
  passFile: string;
}

function initNode(withDb: boolean): Node {
  const dir = tmp();
  const netDir = join(dir, 'regtest');
  mkdirSync(netDir);
  mkdirSync(join(dir, 'usb'));
  if (withDb) copyFileSync(join(CLN, 'session-basic/final.sqlite3'), join(netDir, 'lightningd.sqlite3'));
  const passFile = join(dir, 'passphrase');
  writeFileSync(passFile, `${PASS}\n`, { mode: 0o600 });
  const bkp = join(dir, 'usb', 'node.bkp');
  const url = `file://${bkp}`;
  const r = cli(['init', '--lightning-dir', netDir, '--encrypt', '--passphrase-file', passFile, url], dir);
  assert.equal(r.code, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /the passphrase in .*key fingerprint [0-9a-f]{16}/);
  assert.deepEqual(JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8')).encrypt, { passphrase_file: passFile });
  return { dir, netDir, bkp, url, passFile };
}

function restore(n: Node, passFile: string): { code: number; stdout: string; stderr: string; dest: string } {
  const dest = join(n.dir, `restored-${Math.random().toString(16).slice(2)}`);
  mkdirSync(dest);
  return { ...cli(['restore', '--passphrase-file', passFile, n.url, dest], n.dir), dest };
}

describe('passphrase keys', () => {
  it('init snapshots the node, the plugin writes through the recorded restart session, and the passphrase alone restores it', { timeout: 240_000 }, async () => {
    const n = initNode(true);
    // the header says passphrase and its scrypt cost (log2 N = 16, r = 8, p = 1), readable without the key
    const h = readFileSync(n.bkp).subarray(0, 64);
    assert.deepEqual([h[48], h[49], h[50], h[51]], [3, 16, 8, 1]);
    const ins = cli(['inspect', '--json', n.url], n.dir);
    assert.equal(ins.code, 0, ins.stderr);
    assert.match(ins.stdout, /"passphrase"/);

    const node = new SimNode({ netDir: n.netDir, hookSafetyTimeoutMs: 60_000 });
    const r = await node.replay(join(CLN, 'session-basic/hooks-restart.jsonl'));
    assert.equal(r.failure, undefined, JSON.stringify(r.failure));
    await node.stop();
    assert.deepEqual(node.violations, []);

    // a machine with nothing but the backup and the passphrase (typed into standard input)
    const dest = join(n.dir, 'fresh-machine');
    mkdirSync(dest);
    const rs = cli(['restore', '--passphrase-file', '-', n.url, dest], n.dir, `${PASS}\n`);
    assert.equal(rs.code, 0, rs.stderr + rs.stdout);
    assert.match(rs.stdout, /newest authenticated version \d+/);
    assert.equal(dump(join(dest, 'lightningd.sqlite3')), readFileSync(join(CLN, 'session-basic/final-after-restart.dump.sql'), 'utf8'));

    // none of the session's text is in the backup's bytes; the same needles are in the node's database
    const needles = ['CREATE TABLE', 'lnbcrt', 'INSERT INTO'];
    for (const f of readdirSync(join(n.dir, 'usb'))) {
      const b = readFileSync(join(n.dir, 'usb', f));
      for (const s of needles) assert.ok(!b.includes(s), `${f} holds ${s}`);
    }
    assert.ok(readFileSync(join(n.netDir, 'lightningd.sqlite3')).includes('CREATE TABLE'));

    // verify and status read the key the same way
    const v = cli(['verify', '--passphrase-file', n.passFile, n.url, '--against', n.netDir], n.dir);
    assert.equal(v.code, 0, v.stderr + v.stdout);
    const st = cli(['status', '--json', '--lightning-dir', n.netDir], n.dir);
    assert.equal(st.code, 0, st.stderr + st.stdout);
    assert.equal(JSON.parse(st.stdout).backup.encryption.keyKind, 'passphrase');
  });

  it('a wrong passphrase: restore fails with one line and leaves nothing; the plugin refuses to write', async () => {
    const n = initNode(false);
    const bad = join(n.dir, 'bad');
    writeFileSync(bad, 'correct horse battery stapler\n');
    const r = restore(n, bad);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /wrong passphrase/);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.deepEqual(readdirSync(r.dest), []);
    assert.ok(!r.stderr.includes('stapler'), 'the passphrase is never printed');

    const size = statSync(n.bkp).size;
    writeFileSync(join(n.netDir, 'backup.lock'), JSON.stringify({ backend_url: n.url, encrypt: { passphrase_file: bad } }));
    const p = new PluginProc(n.netDir);
    assert.ok((await p.call('m', 'getmanifest', {})).result);
    const w = await p.call('w', 'db_write', { data_version: 1, writes: ['CREATE TABLE secret_table (x)'] });
    assert.ok(w.error, JSON.stringify(w));
    assert.match(w.error!.message, /wrong passphrase/);
    await p.close();
    assert.equal(statSync(n.bkp).size, size, 'nothing written');
  });

  it('a header whose scrypt cost was altered is refused before scrypt runs (no gigabytes allocated)', () => {
    const n = initNode(false);
    const b = readFileSync(n.bkp);
    b[49] = 30; // N = 2^30: 128 GiB of scrypt memory
    b.writeUInt32BE(crc32(b.subarray(0, 60)), 60);
    writeFileSync(n.bkp, b);
    const r = restore(n, n.passFile);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /out of bounds/);
  });

  it('compact --new-key-file moves a passphrase backup to a key file; the scrypt cost leaves the header', () => {
    const n = initNode(true);
    const newKey = join(n.dir, 'new.key');
    rmSync(join(n.netDir, 'backup.lock'));
    const c = cli(['compact', '--passphrase-file', n.passFile, '--new-key-file', newKey, n.url], n.dir);
    assert.equal(c.code, 0, c.stderr + c.stdout);
    const h = readFileSync(n.bkp).subarray(0, 64);
    assert.deepEqual([h[48], h[49], h[50], h[51]], [2, 0, 0, 0]);
    const dest = join(n.dir, 'after-rotation');
    mkdirSync(dest);
    const rs = cli(['restore', '--key-file', newKey, n.url, dest], n.dir);
    assert.equal(rs.code, 0, rs.stderr + rs.stdout);
    assert.equal(dump(join(dest, 'lightningd.sqlite3')), dump(join(n.netDir, 'lightningd.sqlite3')));
    const old = restore(n, n.passFile);
    assert.equal(old.code, 1);
    assert.match(old.stderr, /not a passphrase/);
  });

  it('what init refuses, leaving nothing behind', () => {
    const dir = tmp();
    const net = join(dir, 'net');
    mkdirSync(net);
    const short = join(dir, 'short');
    writeFileSync(short, 'abc\n');
    const ok = join(dir, 'ok');
    writeFileSync(ok, `${PASS}\n`);
    const url = `file://${join(dir, 'b.bkp')}`;
    const cases: Array<[string[], number, RegExp]> = [
      [['--passphrase-file', ok, url], 2, /--passphrase-file goes with --encrypt/],
      [['--encrypt', '--passphrase-file', ok, '--key-file', join(dir, 'k'), url], 2, /give one key/],
      [['--encrypt', '--passphrase-file', '-', url], 2, /needs a file/],
      [['--encrypt', '--passphrase-file', short, url], 1, /too short/],
      [['--encrypt', '--passphrase-file', join(dir, 'missing'), url], 1, /no such file/],
      [['--encrypt', '--passphrase-file', ok, 'postgresql://u@127.0.0.1:9/db?backup=n'], 2, /--passphrase-file is for file: backups/],
    ];
    for (const [args, code, re] of cases) {
      const r = cli(['init', '--lightning-dir', net, ...args], dir);
      assert.equal(r.code, code, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re, args.join(' '));
    }
    assert.deepEqual(readdirSync(dir).sort(), ['net', 'ok', 'short']);
    assert.deepEqual(readdirSync(net), []);
    assert.ok(!existsSync(join(dir, 'b.bkp')));
  });
});
