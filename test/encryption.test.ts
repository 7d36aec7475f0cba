/**
 * Encrypted backups (issue 13, docs/encryption.md), as users run them: `clnvault init --encrypt`, the
 * recorded Core Lightning traffic through the real plugin (lightningd simulator), `clnvault restore` with
 * the key; every byte the backup leaves on disk searched for the sessions' plaintext; every single-byte
 * flip detected; dropped, reordered, replayed and spliced records detected with offset and last
 * authenticated version; wrong or missing keys refused leaving nothing behind.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { SimNode } from '../src/sim/lightningd.js';
import { FIXTURES } from './helpers/fixtures.js';
import { dump } from './helpers/sqlite.js';
import { createV2, type FileEncryption } from '../src/backends/file/v2.js';
import { SegmentedWriter } from '../src/backends/file/segments.js';
import { openReader } from '../src/backends/open.js';
import { isEncryptable, unlockAndAuthenticate } from '../src/crypto/authenticate.js';
import { keyKindCode } from '../src/crypto/records.js';
import { writeKeyFile, type BackupKey } from '../src/crypto/keys.js';
import { PluginProc } from './helpers/plugin-proc.js';
import { rpc, startWriter } from './helpers/compact-sim.js';
import { sqliteDump } from '../src/sim/db.js';
import { findNeedles, sessionNeedles as sessionNeedlesIn } from './helpers/needles.js';
import { fixChecksums } from './helpers/v2-bytes.js';
import { replaySessions } from './helpers/sim-fixtures.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const CLN = join(FIXTURES, 'cln-v26.06.6');
const dirs: string[] = [];
after(() => {
  if (!process.env.CLNVAULT_KEEP_TMP) for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function cli(args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', env: { ...process.env, ...env } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function tmp(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(d);
  return d;
}

// ---------------------------------------------------------------------------------------------------
// What must never appear in an encrypted backup: the sessions' statements, string literals (labels,
// bolt11 strings), hex blobs (node ids, keys) as text and as raw bytes.

function sessionNeedles(transcripts: string[]): Buffer[] {
  return sessionNeedlesIn(CLN, transcripts);
}

function assertNoPlaintext(dir: string, needles: Buffer[]): number {
  let files = 0;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (!statSync(p).isFile()) continue;
    files++;
    const hits = findNeedles(readFileSync(p), needles);
    assert.deepEqual(hits.slice(0, 5), [], `${p} holds plaintext of the recorded session`);
  }
  return files;
}

// ---------------------------------------------------------------------------------------------------

interface Node {
  dir: string;
  netDir: string;
  bkDir: string;
  url: string;
  keyFile: string;
}

function initEncrypted(extra: string[] = [], before?: (netDir: string) => void): Node {
  const dir = tmp('clnvault-enc-');
  const netDir = join(dir, 'regtest');
  const bkDir = join(dir, 'usb');
  const keyDir = join(dir, 'keys');
  for (const d of [netDir, bkDir, keyDir]) mkdirSync(d);
  before?.(netDir);
  const keyFile = join(keyDir, 'backup.key');
  const url = `file://${join(bkDir, 'node.bkp')}`;
  const init = cli(['init', '--lightning-dir', netDir, '--encrypt', '--key-file', keyFile, ...extra, url], dir);
  assert.equal(init.code, 0, init.stderr + init.stdout);
  assert.match(init.stdout, /key fingerprint [0-9a-f]{16}/);
  assert.deepEqual(JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8')).encrypt, { key_file: keyFile });
  return { dir, netDir, bkDir, url, keyFile };
}

async function replay(n: Node, transcripts: string[]): Promise<void> {
  await replaySessions(n.netDir, transcripts);
}

function restoreDump(n: Node, keyArgs: string[] = ['--key-file', n.keyFile]): { dump: string; stdout: string } {
  const dest = join(n.dir, `restored-${Math.random().toString(16).slice(2)}`);
  mkdirSync(dest);
  const r = cli(['restore', ...keyArgs, n.url, dest], n.dir);
  assert.equal(r.code, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /integrity_check ok/);
  assert.match(r.stdout, /newest authenticated version \d+, written at \d{4}-\d\d-\d\dT/);
  return { dump: dump(join(dest, 'lightningd.sqlite3')), stdout: r.stdout };
}

const sessions: Array<[string, string[], string]> = [
  ['session-basic + restart', ['session-basic/hooks.jsonl', 'session-basic/hooks-restart.jsonl'], 'session-basic/final-after-restart.dump.sql'],
  ['session-abort (crash between hook and commit, re-sent data_version)', ['session-abort/hooks.jsonl'], 'session-abort/final.dump.sql'],
  ['session-channels', ['session-channels/hooks.jsonl'], 'session-channels/final.dump.sql'],
];

describe('encrypted: recorded CLN v26.06.6 traffic → plugin → clnvault restore', () => {
  for (const [name, transcripts, expected] of sessions) {
    it(name, { timeout: 240_000 }, async () => {
      const n = initEncrypted();
      await replay(n, transcripts);
      assert.equal(restoreDump(n).dump, readFileSync(join(CLN, expected), 'utf8'));
      const files = assertNoPlaintext(n.bkDir, sessionNeedles(transcripts));
      assert.ok(files >= 1);
      if (name.startsWith('session-abort')) {
        // clnvault status: says encrypted, and a backup.lock naming another key is caught before the node starts
        const st = cli(['status', '--json', '--lightning-dir', n.netDir], n.dir);
        const j = JSON.parse(st.stdout);
        assert.equal(j.backup.encryption.keyKind, 'key-file', st.stdout);
        assert.match(j.backup.encryption.keyFingerprint, /^[0-9a-f]{16}$/);
        const other = join(n.dir, 'keys', 'other.key');
        writeKeyFile(other);
        writeFileSync(join(n.netDir, 'backup.lock'), JSON.stringify({ backend_url: n.url, encrypt: { key_file: other } }));
        const bad = cli(['status', '--json', '--lightning-dir', n.netDir], n.dir);
        assert.notEqual(bad.code, 0);
        assert.equal(JSON.parse(bad.stdout).state, 'wrong-key', bad.stdout);
      }
    });
  }

  it('an existing database: init stores it as an encrypted snapshot chunked across segments; the restart session goes on from it', { timeout: 240_000 }, async () => {
    const n = initEncrypted(['--segment-bytes', '65536'], (netDir) => copyFileSync(join(CLN, 'session-basic/final.sqlite3'), join(netDir, 'lightningd.sqlite3')));
    const segs = readdirSync(n.bkDir).filter((f) => f.includes('.seg-'));
    assert.ok(segs.length >= 2, `the snapshot should span segments: ${readdirSync(n.bkDir).join(', ')}`);
    await replay(n, ['session-basic/hooks-restart.jsonl']);
    assert.equal(restoreDump(n).dump, readFileSync(join(CLN, 'session-basic/final-after-restart.dump.sql'), 'utf8'));
    // the snapshot is the node's database: its schema text and every blob of the first session are in it
    const files = assertNoPlaintext(n.bkDir, sessionNeedles(['session-basic/hooks.jsonl', 'session-basic/hooks-restart.jsonl']));
    assert.ok(files >= 3);
    // the needles do find the plaintext where it is: the check itself works
    assert.ok(findNeedles(readFileSync(join(CLN, 'session-basic/final.sqlite3')), sessionNeedles(['session-basic/hooks.jsonl'])).length > 100);
  });
});

// ---------------------------------------------------------------------------------------------------
// Tampering, at the byte level and at the record level

function encOf(k: BackupKey): FileEncryption {
  return { kind: keyKindCode(k.kind), fingerprint: Buffer.from(k.fingerprint, 'hex') };
}

function bump(v: number): string {
  return `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${v - 1}`;
}

/** A small encrypted backup of `n` versions (single file); returns each record's [offset, end). */
function smallBackup(path: string, key: BackupKey, n: number): Array<[number, number]> {
  createV2(path, encOf(key));
  const w = SegmentedWriter.open(path, { key });
  w.appendChange(1, ['CREATE TABLE vars (name TEXT, intval INTEGER)', "INSERT INTO vars VALUES ('data_version', 1)"]);
  for (let v = 2; v <= n; v++) w.appendChange(v, [`INSERT INTO vars VALUES ('secret label ${v}', ${v})`, bump(v)]);
  w.close();
  return recordsOf(path);
}

function recordsOf(path: string): Array<[number, number]> {
  const b = readFileSync(path);
  const out: Array<[number, number]> = [];
  for (let o = 64; o < b.length; ) {
    const end = o + 40 + b.readUInt32BE(o + 20);
    out.push([o, end]);
    o = end;
  }
  return out;
}

/** Whether opening, authenticating and reading every entry of the backup at `path` reports anything. */
function detected(path: string, key: BackupKey): boolean {
  let reader: ReturnType<typeof openReader> | null = null;
  try {
    reader = openReader(`file://${path}`, '/');
    if (reader.problems().length > 0) return true;
    const auth = unlockAndAuthenticate(reader, key);
    if (auth === null || auth.problem !== null) return true;
    const r = reader;
    r.forEachHeader((h) => {
      r.read(h);
    });
    return false;
  } catch {
    return true;
  } finally {
    reader?.close();
  }
}

/** A record whose bytes changed, with its checksums made right again: what a forger would do. */
describe('encrypted: tampering is detected', () => {
  const dir = tmp('clnvault-enc-tamper-');
  const key = writeKeyFile(join(dir, 'k1'));
  const otherKey = writeKeyFile(join(dir, 'k2'));
  const path = join(dir, 'b.bkp');
  const recs = smallBackup(path, key, 4);
  const good = readFileSync(path);

  it('the untouched backup is not flagged (the check can pass)', () => {
    assert.equal(detected(path, key), false);
  });

  it('flipping any single byte of the backup is detected', () => {
    const t = join(dir, 'flip.bkp');
    const missed: number[] = [];
    for (let i = 0; i < good.length; i++) {
      const b = Buffer.from(good);
      b[i] ^= 0x01;
      writeFileSync(t, b);
      if (!detected(t, key)) missed.push(i);
    }
    assert.deepEqual(missed, [], `undetected flips at ${missed.join(', ')} of ${good.length} bytes`);
  });

  it('flipping any byte of a record payload with its checksums recomputed (a forgery) fails authentication', () => {
    const t = join(dir, 'forged.bkp');
    let tried = 0;
    for (const [start, end] of recs) {
      for (let i = start + 32; i < end - 8; i++) {
        const b = Buffer.from(good);
        b[i] ^= 0x80;
        fixChecksums(b, start, end);
        writeFileSync(t, b);
        const reader = openReader(`file://${t}`, '/');
        try {
          assert.deepEqual(reader.problems(), [], 'the checksums are right again');
          const auth = unlockAndAuthenticate(reader, key)!;
          assert.ok(auth.problem, `forged byte ${i} passed authentication`);
          assert.equal(auth.problem.offset, start);
        } finally {
          reader.close();
        }
        tried++;
      }
    }
    assert.ok(tried > 200);
  });

  function restoreOf(bytes: Buffer, args: string[] = ['--key-file', join(dir, 'k1')]): ReturnType<typeof cli> & { dest: string } {
    const d = mkdtempSync(join(dir, 'case-'));
    const p = join(d, 'b.bkp');
    writeFileSync(p, bytes);
    const dest = join(d, 'out');
    mkdirSync(dest);
    return { ...cli(['restore', ...args, `file://${p}`, dest], d), dest };
  }
  const at = (k: number): Buffer => good.subarray(recs[k]![0], recs[k]![1]);
  const head = good.subarray(0, 64);

  function refused(r: ReturnType<typeof restoreOf>, offset: number, lastVersion: number | null, re: RegExp): void {
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, new RegExp(`offset ${offset}\\b`));
    assert.match(r.stderr, lastVersion === null ? /no record before it authenticated/ : new RegExp(`last authenticated version ${lastVersion}, written at \\d{4}-`));
    assert.match(r.stderr, re);
    assert.deepEqual(readdirSync(r.dest), [], 'nothing left behind');
  }

  it('a dropped record in the middle', () => {
    const r = restoreOf(Buffer.concat([head, at(0), at(2), at(3)]));
    refused(r, recs[1]![0], 1, /breaks the chain/);
  });

  it('two records swapped', () => {
    const r = restoreOf(Buffer.concat([head, at(0), at(2), at(1), at(3)]));
    refused(r, recs[1]![0], 1, /breaks the chain/);
  });

  it('a record replayed (duplicated)', () => {
    const r = restoreOf(Buffer.concat([head, at(0), at(1), at(1), at(2), at(3)]));
    refused(r, recs[2]![0], 2, /breaks the chain/);
  });

  it('the first record dropped', () => {
    const r = restoreOf(Buffer.concat([head, at(1), at(2), at(3)]));
    refused(r, 64, null, /breaks the chain/);
  });

  it('a record from another backup with the same key, and one from a backup with another key', () => {
    const other = join(dir, 'other.bkp');
    const orecs = smallBackup(other, key, 4);
    const ob = readFileSync(other);
    const third = join(dir, 'third.bkp');
    const trecs = smallBackup(third, otherKey, 4);
    const tb = readFileSync(third);
    for (const [src, r] of [[ob, orecs[1]!], [tb, trecs[1]!]] as const) {
      const spliced = Buffer.concat([head, at(0), src.subarray(r[0], r[1]), at(2), at(3)]);
      // as copied, its header CRC is seeded with the other backup's ids (format 4): refused as damage already
      const asCopied = restoreOf(spliced);
      assert.equal(asCopied.code, 1, asCopied.stdout + asCopied.stderr);
      assert.match(asCopied.stderr, new RegExp(`offset ${recs[1]![0]}\\b`));
      assert.deepEqual(readdirSync(asCopied.dest), [], 'nothing left behind');
      // with its checksums made right for this backup (what a forger would do): authentication or the chain refuses it
      fixChecksums(spliced, recs[1]![0], recs[1]![0] + (r[1] - r[0]));
      refused(restoreOf(spliced), recs[1]![0], 1, /fails authentication|breaks the chain/);
    }
  });

  it('a forged record (checksums recomputed) is refused by restore with its offset and the last authenticated version', () => {
    const b = Buffer.from(good);
    const [start, end] = recs[2]!;
    b[start + 32 + 60] ^= 0x01;
    fixChecksums(b, start, end);
    refused(restoreOf(b), start, 2, /fails authentication/);
  });

  it('a record in clear (from a plaintext backup) spliced in is damage at its offset, not "a newer clnvault"', () => {
    const plainPath = join(dir, 'plain-src.bkp');
    createV2(plainPath);
    const pw = SegmentedWriter.open(plainPath);
    pw.appendChange(2, ["INSERT INTO vars VALUES ('forged', 2)", bump(2)]);
    pw.close();
    const pb = readFileSync(plainPath);
    const spliced = Buffer.concat([head, at(0), pb.subarray(64), at(2), at(3)]);
    // as copied, its header CRC is seeded with the other backup's ids (format 4): damage at its offset already
    const asCopied = restoreOf(spliced);
    assert.equal(asCopied.code, 1, asCopied.stderr);
    assert.match(asCopied.stderr, new RegExp(`offset ${recs[1]![0]}\\b`));
    assert.doesNotMatch(asCopied.stderr, /newer clnvault/);
    assert.deepEqual(readdirSync(asCopied.dest), []);
    // with its checksums made right for this backup, what remains wrong is that it is in clear
    fixChecksums(spliced, recs[1]![0], recs[1]![0] + pb.length - 64);
    const r = restoreOf(spliced);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`offset ${recs[1]![0]}\\b.*in clear in an encrypted backup`));
    assert.doesNotMatch(r.stderr, /newer clnvault/);
    assert.deepEqual(readdirSync(r.dest), []);
  });

  it('a dropped tail restores the authenticated prefix and says how new it is', () => {
    const r = restoreOf(Buffer.concat([head, at(0), at(1), at(2)]));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /at data_version 3/);
    assert.match(r.stdout, /newest authenticated version 3, written at \d{4}-\d\d-\d\dT[\d:.]+Z \(3 records authenticated\)/);
  });

  it('wrong or missing key: one clear line, exit 1, nothing left behind', () => {
    const none = restoreOf(good, []);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /no key given.*encrypted with a key-file key \(fingerprint [0-9a-f]{16}\).*--key-file PATH/);
    assert.equal(none.stderr.trim().split('\n').length, 1, none.stderr);
    assert.deepEqual(readdirSync(none.dest), []);
    const wrong = restoreOf(good, ['--key-file', join(dir, 'k2')]);
    assert.equal(wrong.code, 1);
    assert.match(wrong.stderr, new RegExp(`wrong key: the key given \\(key-file, fingerprint ${otherKey.fingerprint}\\) is not the backup's.*${key.fingerprint}`));
    assert.equal(wrong.stderr.trim().split('\n').length, 1, wrong.stderr);
    assert.deepEqual(readdirSync(wrong.dest), []);
  });

  it('inspect without the key: encrypted, key kind and fingerprint, sizes and versions; with it: authenticated', () => {
    const plain = cli(['inspect', '--json', `file://${path}`], dir);
    assert.equal(plain.code, 0, plain.stderr);
    const j = JSON.parse(plain.stdout);
    assert.equal(j.head, 4);
    assert.equal(j.entries, 4);
    assert.deepEqual(j.encryption, { keyKind: 'key-file', keyFingerprint: key.fingerprint, keyGiven: false, authenticated: null });
    const keyed = cli(['inspect', '--key-file', join(dir, 'k1'), `file://${path}`], dir);
    assert.equal(keyed.code, 0, keyed.stderr);
    assert.match(keyed.stdout, /encrypted {6}yes: key-file key, fingerprint [0-9a-f]{16}/);
    assert.match(keyed.stdout, /authenticated {2}4 records; newest authenticated version 4, written at/);
    const v = cli(['verify', `file://${path}`], dir);
    assert.equal(v.code, 1);
    assert.match(v.stdout, /FAIL: the backup cannot be read:.*no key given/);
    const vk = cli(['verify', '--key-file', join(dir, 'k1'), `file://${path}`], dir);
    assert.equal(vk.code, 0, vk.stdout + vk.stderr);
    assert.match(vk.stdout, /4 records authenticated; newest authenticated version 4/);
  });

  it('a rewind (the head dropped, the same version written again with other statements) and a new writer session keep the chain', () => {
    const p = join(dir, 'rewind.bkp');
    smallBackup(p, key, 3);
    let w = SegmentedWriter.open(p, { key });
    w.dropHead();
    w.appendChange(3, ["INSERT INTO vars VALUES ('other', 3)", bump(3)]);
    w.close();
    w = SegmentedWriter.open(p, { key });
    w.appendChange(4, ["INSERT INTO vars VALUES ('four', 4)", bump(4)]);
    w.close();
    assert.equal(detected(p, key), false);
    const reader = openReader(`file://${p}`, '/');
    try {
      const auth = unlockAndAuthenticate(reader, key)!;
      assert.equal(auth.records, 4);
      assert.equal(auth.newestVersion, 4);
      // three writer sessions, three salts: no (key, nonce) pair can repeat
      const salts = new Set(recordsOf(p).map(([s]) => readFileSync(p).subarray(s + 32, s + 48).toString('hex')));
      assert.equal(salts.size, 3);
    } finally {
      reader.close();
    }
  });
});

describe('encrypted: the cipher made ahead of the next record', () => {
  it('prepare() between appends (as the plugin calls it after each hook): every record authenticates, no (key, nonce) pair repeats', () => {
    const dir = tmp('clnvault-enc-ahead-');
    const key = writeKeyFile(join(dir, 'k'));
    const p = join(dir, 'ahead.bkp');
    createV2(p, encOf(key));
    let w = SegmentedWriter.open(p, { key });
    // twice before the first append: still one cipher ahead, used once
    w.prepare();
    w.prepare();
    w.appendChange(1, ['CREATE TABLE vars (name TEXT, intval INTEGER)', "INSERT INTO vars VALUES ('data_version', 1)"]);
    w.prepare();
    w.appendChange(2, ["INSERT INTO vars VALUES ('first two', 2)", bump(2)]);
    w.prepare();
    // a rewind between the cipher made ahead and its use
    w.dropHead();
    w.prepare();
    w.appendChange(2, ["INSERT INTO vars VALUES ('second two', 2)", bump(2)]);
    w.prepare();
    // closed with a cipher made ahead and never used
    w.close();
    w = SegmentedWriter.open(p, { key });
    w.prepare();
    w.appendChange(3, ["INSERT INTO vars VALUES ('three', 3)", bump(3)]);
    w.prepare();
    w.appendChange(4, ["INSERT INTO vars VALUES ('four', 4)", bump(4)]);
    w.close();
    const reader = openReader(`file://${p}`, '/');
    try {
      assert.deepEqual(reader.problems(), []);
      const auth = unlockAndAuthenticate(reader, key)!;
      assert.equal(auth.problem, null);
      assert.equal(auth.records, 4);
      assert.equal(auth.newestVersion, 4);
      reader.forEachHeader((h) => {
        assert.equal(reader.read(h).kind, 'change');
      });
      const bytes = readFileSync(p);
      const nonces: string[] = [];
      const counters = new Map<string, number[]>();
      assert.ok(isEncryptable(reader));
      reader.forEachRecord((_r, _rec, offset) => {
        const salt = bytes.subarray(offset + 32, offset + 48).toString('hex');
        const counter = Number(bytes.readBigUInt64BE(offset + 48));
        nonces.push(`${salt}/${counter}`);
        counters.set(salt, [...(counters.get(salt) ?? []), counter]);
      });
      assert.equal(nonces.length, 4);
      assert.equal(new Set(nonces).size, 4, `a nonce repeats: ${nonces.join(', ')}`);
      assert.equal(counters.size, 2, 'two writer sessions, two salts');
      for (const [salt, cs] of counters) {
        for (let i = 1; i < cs.length; i++) assert.ok(cs[i]! > cs[i - 1]!, `counters of session ${salt} do not grow: ${cs.join(', ')}`);
      }
    } finally {
      reader.close();
    }
  });
});

describe('encrypted: the plugin', () => {
  it('refuses to start writing without its key, or with a lock that does not say encrypt; writes nothing', async () => {
    const dir = tmp('clnvault-enc-plugin-');
    const key = writeKeyFile(join(dir, 'k'));
    const bkp = join(dir, 'b.bkp');
    createV2(bkp, encOf(key));
    const cases: Array<[unknown, RegExp]> = [
      [{ key_file: join(dir, 'missing.key') }, /missing\.key/],
      [undefined, /is an encrypted backup|no key given/],
      [{ key: 'hsm_secret' }, /hsm_secret/],
    ];
    for (const [enc, re] of cases) {
      writeFileSync(join(dir, 'backup.lock'), JSON.stringify({ backend_url: `file://${bkp}`, ...(enc ? { encrypt: enc } : {}) }));
      const p = new PluginProc(dir);
      assert.ok((await p.call('m', 'getmanifest', {})).result);
      const r = await p.call('w', 'db_write', { data_version: 1, writes: ['CREATE TABLE secret_table (x)'] });
      assert.ok(r.error, `refused: ${JSON.stringify(r)}`);
      assert.match(r.error!.message, re);
      await p.close();
      assert.equal(statSync(bkp).size, 64, 'nothing written');
    }
  });

  it('status says encrypted and the key fingerprint', async () => {
    const dir = tmp('clnvault-enc-plugin-');
    const key = writeKeyFile(join(dir, 'k'));
    const bkp = join(dir, 'b.bkp');
    createV2(bkp, encOf(key));
    writeFileSync(join(dir, 'backup.lock'), JSON.stringify({ backend_url: `file://${bkp}`, encrypt: { key_file: join(dir, 'k') } }));
    const p = new PluginProc(dir);
    assert.ok((await p.call('m', 'getmanifest', {})).result);
    const w = await p.call('w', 'db_write', { data_version: 1, writes: ['CREATE TABLE secret_table (x)'] });
    assert.deepEqual(w.result, { result: 'continue' });
    const s = (await p.call('s', 'clnvault-status', {})).result as Record<string, unknown>;
    assert.equal(s.encrypted, true);
    assert.equal(s.key_fingerprint, key.fingerprint);
    await p.close();
    assert.ok(!readFileSync(bkp).includes('secret_table'));
  });
});

describe('encrypted: compaction', () => {
  it('online (backup-compact while writes keep coming): restores to the node, chain intact, no plaintext in the backup, its history or debris', { timeout: 240_000 }, async () => {
    const n = initEncrypted();
    writeFileSync(join(n.netDir, 'backup.lock'), JSON.stringify({ ...JSON.parse(readFileSync(join(n.netDir, 'backup.lock'), 'utf8')), compaction: { auto: false, history: 1 } }));
    const node = new SimNode({ netDir: n.netDir, hookSafetyTimeoutMs: 60_000 });
    const r = await node.replay(join(CLN, 'session-basic/hooks.jsonl'));
    assert.equal(r.failure, undefined);
    const writer = startWriter(node, 7);
    await new Promise((res) => setTimeout(res, 200));
    const w0 = writer.transactions;
    const c = await rpc(node, 'backup-compact');
    const during = writer.transactions - w0;
    await new Promise((res) => setTimeout(res, 50));
    writer.stop();
    await writer.done;
    assert.equal(c.error, undefined, JSON.stringify(c.error));
    const stats = c.result as { before: { version_count: number }; after: { version_count: number } };
    // Compacted: one snapshot plus the writes that arrived while it ran, which can outnumber the entries it
    // replaced when hooks are fast (seen: 358 before, 381 after). Left in place, the old entries (the whole
    // replayed session) would be there besides those writes. +2: a write in flight at either end.
    assert.ok(stats.after.version_count <= during + 2, `${JSON.stringify(stats)}; ${during} writes during the compaction`);
    assert.equal(writer.failure, null);
    await node.stop();
    const expected = sqliteDump(node.dbPath);
    const restored = restoreDump(n);
    assert.equal(restored.dump.replace(/\r/g, ''), expected.replace(/\r/g, ''));
    assert.ok(readdirSync(n.bkDir).some((f) => f.includes('.hist-')), readdirSync(n.bkDir).join(', '));
    assertNoPlaintext(n.bkDir, sessionNeedles(['session-basic/hooks.jsonl']));
  });

  it('offline (clnvault compact): restores exactly, no plaintext; without the key it is refused', { timeout: 240_000 }, async () => {
    const n = initEncrypted();
    await replay(n, ['session-channels/hooks.jsonl']);
    const noKey = cli(['compact', n.url], n.dir);
    assert.equal(noKey.code, 1);
    assert.match(noKey.stderr, /no key given/);
    // segments: the encrypted snapshot is chunked into part records across files
    const c = cli(['compact', '--key-file', n.keyFile, '--segment-bytes', '65536', n.url], n.dir);
    assert.equal(c.code, 0, c.stderr + c.stdout);
    assert.match(c.stdout, /Compacted/);
    assert.ok(readdirSync(n.bkDir).filter((f) => f.includes('.seg-')).length >= 2, readdirSync(n.bkDir).join(', '));
    assert.equal(restoreDump(n).dump, readFileSync(join(CLN, 'session-channels/final.dump.sql'), 'utf8'));
    assertNoPlaintext(n.bkDir, sessionNeedles(['session-channels/hooks.jsonl']));
    // restore --lightning-dir takes the key backup.lock names
    const dest = join(n.dir, 'from-lock');
    mkdirSync(dest);
    const r = cli(['restore', '--lightning-dir', n.netDir, dest], n.dir);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.equal(dump(join(dest, 'lightningd.sqlite3')), readFileSync(join(CLN, 'session-channels/final.dump.sql'), 'utf8'));
  });

  it('key rotation (compact --new-key-file): restores exactly with the new key; the old key no longer opens it; the node goes on with the new one', { timeout: 240_000 }, async () => {
    const n = initEncrypted();
    await replay(n, ['session-basic/hooks.jsonl']);

    const newKey = join(n.dir, 'keys', 'rotated.key');
    const rot = cli(['compact', '--key-file', n.keyFile, '--new-key-file', newKey, n.url], n.dir);
    assert.equal(rot.code, 0, rot.stderr + rot.stdout);
    assert.match(rot.stdout, /now encrypted with the key in .*rotated\.key \(fingerprint [0-9a-f]{16}\)/);
    assert.equal(restoreDump(n, ['--key-file', newKey]).dump, readFileSync(join(CLN, 'session-basic/final.dump.sql'), 'utf8'));
    const old = cli(['restore', '--key-file', n.keyFile, n.url, join(n.dir, 'old-key.sqlite3')], n.dir);
    assert.equal(old.code, 1);
    assert.match(old.stderr, /wrong key/);
    // the node goes on with the new key once backup.lock names it; with the old one it refuses
    writeFileSync(join(n.netDir, 'backup.lock'), JSON.stringify({ backend_url: n.url, encrypt: { key_file: newKey } }));
    await replay(n, ['session-basic/hooks-restart.jsonl']);
    assert.equal(restoreDump(n, ['--key-file', newKey]).dump, readFileSync(join(CLN, 'session-basic/final-after-restart.dump.sql'), 'utf8'));
    assertNoPlaintext(n.bkDir, sessionNeedles(['session-basic/hooks.jsonl', 'session-basic/hooks-restart.jsonl']));
  });
});

describe('encrypted: what is refused', () => {
  it('--format v1 --encrypt and socket: (never: the reference protocol stores statements): refused before anything is made', () => {
    const dir = tmp('clnvault-enc-refuse-');
    const net = join(dir, 'net');
    mkdirSync(net);
    const v1 = cli(['init', '--encrypt', '--key-file', join(dir, 'k'), '--format', 'v1', `file://${join(dir, 'b.bkp')}`], dir);
    assert.equal(v1.code, 2);
    assert.match(v1.stderr, /--format v1 cannot be encrypted/);
    for (const [url, why] of [
      ['socket:127.0.0.1:9', /a socket: backup cannot be encrypted: the reference protocol sends the SQL statements themselves.*clnvault:\/\//],
    ] as const) {
      const r = cli(['init', '--encrypt', '--key-file', join(dir, 'k'), '--lightning-dir', net, url], dir);
      assert.equal(r.code, 2, `${url}: ${r.stderr}`);
      assert.match(r.stderr, why);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
    // postgresql: is encrypted (test/postgres-encryption.test.ts); a server that cannot be reached leaves no key file behind
    const pgr = cli(['init', '--encrypt', '--key-file', join(dir, 'k'), '--lightning-dir', net, 'postgresql://u@127.0.0.1:9/db?backup=n'], dir);
    assert.notEqual(pgr.code, 0, pgr.stderr);
    // clnvault:// is encrypted (test/remote-encryption.test.ts); without the node's server key nothing is made either
    const cv = cli(['init', '--encrypt', '--key-file', join(dir, 'k'), '--lightning-dir', net, 'clnvault://node@127.0.0.1:9'], dir);
    assert.notEqual(cv.code, 0, cv.stderr);
    assert.match(cv.stderr, /clnvault-remote\.key does not exist/);
    const noDir = cli(['init', '--encrypt', `file://${join(dir, 'c.bkp')}`], dir);
    assert.equal(noDir.code, 2);
    assert.match(noDir.stderr, /hsm_secret.*--lightning-dir/);
    // nothing was made: no backup, no key file, no backup.lock
    assert.deepEqual(readdirSync(dir).sort(), ['net']);
    assert.deepEqual(readdirSync(net), []);
  });
});
