/**
 * Encryption on clnvault:// (clnvault's own server) over real TCP on 127.0.0.1: the node seals every record,
 * the server stores and serves them without the key. Recorded sessions through the plugin on both remote
 * paths (event loop, worker) restore exactly; nothing the server wrote holds any of their plaintext;
 * tampering with the server's file is caught at a restore through the server; a wrong key is refused in
 * one line with nothing left behind; the server SIGKILLed mid-write loses nothing acknowledged.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import { once } from 'node:events';
import { after, describe, it } from 'node:test';
import { metadataPacket, PKT } from '../src/backends/socket/protocol.js';
import { FILE_HEADER_LEN, RECORD_HEADER_LEN, RECORD_OVERHEAD, readU64 } from '../src/backends/file/v2.js';
import { fixChecksums } from './helpers/v2-bytes.js';
import { FIXTURES } from './helpers/fixtures.js';
import { runCli, scratchArea } from './helpers/cli.js';
import { findNeedles, sessionNeedles } from './helpers/needles.js';
import { killAllPlugins, PluginProc } from './helpers/plugin-proc.js';
import { killAllServers, ServerProc } from './helpers/socket-rig.js';
import { addNode, nodesServer, writeThroughServerKills } from './helpers/nodes-rig.js';
import { dump } from './helpers/sqlite.js';
import { replaySessions } from './helpers/sim-fixtures.js';
import { openConnection, PSK_TLS } from '../src/backends/socket/connect.js';
import { parseSocketUrl } from '../src/backends/socket/url.js';
import { askHello, parseServedHeader, sealedChangePacket, sendSealedSnapshot } from '../src/backends/socket/sealed.js';
import Database from '../src/engine/sqlite.js';
import { cryptFor } from '../src/crypto/backup-crypt.js';
import { keyFromKeyFile } from '../src/crypto/keys.js';
import { FLAG_ENCRYPTED } from '../src/backends/file/v2.js';
import { crc32 } from 'node:zlib';
import { randomBytes } from 'node:crypto';
import { churn, compactWhileWriting, startNode, until } from './helpers/multi-rig.js';
import { SimNode } from '../src/sim/lightningd.js';

const CLN = join(FIXTURES, 'cln-v26.06.6');
const REF = join(FIXTURES, 'reference-socket');
const area = scratchArea('clnvault-renc-');
const MARKER = 'PLAINTEXT-MARKER-5c1d';
after(async () => {
  killAllPlugins();
  await killAllServers();
  area.cleanup();
});

interface Node {
  dir: string;
  netDir: string;
  url: string;
  keyFile: string;
  file: string;
}

/** A node directory with the server key, `init --encrypt --key-file` through the server. */
async function initNode(dir: string, name: string, key: string, port: number, remoteTimeout = 5, db?: string): Promise<Node> {
  const netDir = area.dir();
  if (db !== undefined) copyFileSync(db, join(netDir, 'lightningd.sqlite3'));
  writeFileSync(join(netDir, 'clnvault-remote.key'), `${key}\n`, { mode: 0o600 });
  const url = `clnvault://${name}@127.0.0.1:${port}`;
  const keyFile = join(area.dir(), 'backup.key');
  const init = await runCli(['init', '--lightning-dir', netDir, '--encrypt', '--key-file', keyFile, url]);
  assert.equal(init.code, 0, init.stderr + init.stdout);
  assert.match(init.stdout, /key fingerprint [0-9a-f]{16}: the server stores only ciphertext/);
  const lock = JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8'));
  assert.deepEqual(lock.encrypt, { key_file: keyFile });
  writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ ...lock, remote_timeout: remoteTimeout }));
  return { dir, netDir, url, keyFile, file: join(dir, 'nodes', name, 'backup.bkp') };
}

async function restore(n: Node, keyArgs = ['--key-file', n.keyFile]): Promise<{ code: number | null; stdout: string; stderr: string; dest: string; tmp: string }> {
  const tmp = area.dir();
  const dest = join(area.dir(), 'restored.sqlite3');
  const r = await runCli(['restore', ...keyArgs, n.url, dest], { cwd: n.netDir, env: { ...process.env, TMPDIR: tmp } });
  return { ...r, dest, tmp };
}

/** Every file under `dir` (the server's whole directory: keys, backups, anything left over). */
function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...filesUnder(p));
    else out.push(p);
  }
  return out;
}

function assertNoPlaintext(dir: string, needles: Buffer[]): number {
  const files = filesUnder(dir);
  for (const p of files) assert.deepEqual(findNeedles(readFileSync(p), needles).slice(0, 5), [], `${p} holds plaintext of the recorded session`);
  return files.length;
}

/** Table t with ten marked rows rewritten 300 times (3,000-character values), until both destinations hold it all. */
async function seedChurned(node: SimNode, tag: string): Promise<void> {
  assert.equal((await node.transaction(['CREATE TABLE t (v TEXT)'])).answered, 'continue');
  for (let i = 0; i < 10; i++) assert.equal((await node.transaction([`INSERT INTO t(v) VALUES ('${MARKER}-${i}')`])).answered, 'continue');
  await churn(node, 300, MARKER, 3000);
  await until(node, 'both hold the last write', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), tag);
}

/** Waits for the server to have printed a line matching `re` (its output is read on this test's event loop, in no set order with the node's answers). */
async function serverSaid(proc: ServerProc, re: RegExp, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!re.test(proc.out)) {
    assert.ok(Date.now() < end, `the server never printed ${re}: ${proc.out}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A set of two encrypted destinations made by `init --encrypt` with `ack`: a file (a.bkp) and alice's
 * clnvault:// backup on a `clnvault server --dir` (the session-basic database as the node's).
 */
async function encryptedSet(ack: string): Promise<{ dir: string; proc: ServerProc; port: number; netDir: string; keyFile: string; filePath: string; remote: string }> {
  const dir = area.dir();
  const key = await addNode(dir, 'alice');
  const { proc, port } = await nodesServer(dir);
  const netDir = area.dir();
  writeFileSync(join(netDir, 'clnvault-remote.key'), `${key}\n`, { mode: 0o600 });
  copyFileSync(join(CLN, 'session-basic/final.sqlite3'), join(netDir, 'lightningd.sqlite3'));
  const keyFile = join(area.dir(), 'backup.key');
  const filePath = join(area.dir(), 'a.bkp');
  const remote = `clnvault://alice@127.0.0.1:${port}`;
  const init = await runCli(['init', '--lightning-dir', netDir, '--ack', ack, '--encrypt', '--key-file', keyFile, `file://${filePath}`, remote]);
  assert.equal(init.code, 0, init.stderr + init.stdout);
  return { dir, proc, port, netDir, keyFile, filePath, remote };
}

/** Start offsets of the records of a v2 file, walking the headers' lengths. */
function recordStarts(file: string): number[] {
  const b = readFileSync(file);
  const starts: number[] = [];
  for (let at = FILE_HEADER_LEN; at + RECORD_OVERHEAD <= b.length; ) {
    if (b.readUInt32BE(at) === 0) break;
    starts.push(at);
    at += RECORD_OVERHEAD + readU64(b, at + 16);
  }
  return starts;
}

/**
 * An encrypted node's backup on a fresh server, and a connection to it that speaks the sealed records
 * itself (as the node's plugin would), for the tests of what the server accepts without the key.
 */
async function rawSealedConnection(): Promise<{ proc: ServerProc; n: Node; conn: Awaited<ReturnType<typeof openConnection>>; served: ReturnType<typeof parseServedHeader>; crypt: NonNullable<ReturnType<typeof cryptFor>> }> {
  const dir = area.dir();
  const key = await addNode(dir, 'alice');
  const { proc, port } = await nodesServer(dir);
  const n = await initNode(dir, 'alice', key, port);
  const conn = await openConnection(parseSocketUrl(n.url, n.netDir), 5000);
  const hello = await askHello(conn, 5000);
  const served = parseServedHeader(hello.header!);
  const crypt = cryptFor(n.url, served.encryption, served.backupId, keyFromKeyFile(n.keyFile), true)!;
  return { proc, n, conn, served, crypt };
}

const sessions: Array<[string, string[], string, NodeJS.ProcessEnv]> = [
  ['session-basic + restart, event-loop path', ['session-basic/hooks.jsonl', 'session-basic/hooks-restart.jsonl'], 'session-basic/final-after-restart.dump.sql', {}],
  ['session-abort (re-sent data_version: a rewind on the server), worker path', ['session-abort/hooks.jsonl'], 'session-abort/final.dump.sql', { CLNVAULT_REMOTE_WORKER: '1' }],
  ['session-channels, worker path', ['session-channels/hooks.jsonl'], 'session-channels/final.dump.sql', { CLNVAULT_REMOTE_WORKER: '1' }],
];

describe('encrypted clnvault:// backups: the server stores and serves ciphertext only', () => {
  for (const [name, transcripts, expected, env] of sessions) {
    it(name, { timeout: 240_000 }, async () => {
      const dir = area.dir();
      const key = await addNode(dir, 'alice');
      const { proc, port } = await nodesServer(dir);
      const n = await initNode(dir, 'alice', key, port);
      await replaySessions(n.netDir, transcripts, env);
      const out = await restore(n);
      assert.equal(out.code, 0, out.stderr + out.stdout);
      assert.match(out.stdout, /newest authenticated version \d+, written at \d{4}-\d\d-\d\dT/);
      assert.equal(dump(out.dest), readFileSync(join(CLN, expected), 'utf8'));
      assert.deepEqual(readdirSync(out.tmp), [], 'the scratch copy of the backup is removed');
      assert.ok(assertNoPlaintext(dir, sessionNeedles(CLN, transcripts)) >= 2);

      // inspect without a key, through the server: encrypted, the key's kind and fingerprint
      const ins = await runCli(['inspect', '--json', n.url], { cwd: n.netDir });
      assert.equal(ins.code, 0, ins.stderr);
      const j = JSON.parse(ins.stdout);
      assert.equal(j.encryption.keyKind, 'key-file', ins.stdout);
      assert.match(j.encryption.keyFingerprint, /^[0-9a-f]{16}$/);
      // clnvault status through the server: encrypted, and backup.lock's key is the backup's
      const st = await runCli(['status', '--json', '--lightning-dir', n.netDir]);
      const sj = JSON.parse(st.stdout);
      assert.equal(sj.backup.encryption.keyKind, 'key-file', st.stdout);
      assert.notEqual(sj.state, 'wrong-key', st.stdout);
      // the server's file copied off it is an ordinary encrypted v2 backup
      const v = await runCli(['verify', '--key-file', n.keyFile, `file://${n.file}`]);
      assert.equal(v.code, 0, v.stderr + v.stdout);
      await proc.kill();
    });
  }

  for (const by of ['init (worker path)', 'the plugin re-baselining at start-up (event-loop path)'] as const) {
    it(`an existing database: ${by} sends it as one encrypted snapshot record, streamed; the restart session goes on from it`, { timeout: 240_000 }, async () => {
      const dir = area.dir();
      const key = await addNode(dir, 'alice');
      const { proc, port } = await nodesServer(dir);
      const db = join(CLN, 'session-basic/final.sqlite3');
      const atInit = by.startsWith('init');
      const n = await initNode(dir, 'alice', key, port, 5, atInit ? db : undefined);
      // the node ahead of its (empty) backup: the plugin sends a snapshot before it answers getmanifest
      if (!atInit) copyFileSync(db, join(n.netDir, 'lightningd.sqlite3'));
      await replaySessions(n.netDir, ['session-basic/hooks-restart.jsonl']);
      assert.ok(statSync(n.file).size > statSync(db).size, 'the snapshot is on the server');
      const out = await restore(n);
      assert.equal(out.code, 0, out.stderr + out.stdout);
      assert.equal(dump(out.dest), readFileSync(join(CLN, 'session-basic/final-after-restart.dump.sql'), 'utf8'));
      // the snapshot is the node's database: its schema text and every blob of the first session are in it
      const needles = sessionNeedles(CLN, ['session-basic/hooks.jsonl', 'session-basic/hooks-restart.jsonl']);
      assertNoPlaintext(dir, needles);
      assert.ok(findNeedles(readFileSync(db), needles).length > 100, 'the needles do find plaintext where it is');
      await proc.kill();
    });
  }

  it('tampering with the server\'s file is caught at a restore through the server; a wrong key is refused in one line, nothing left', { timeout: 240_000 }, async () => {
    const dir = area.dir();
    const key = await addNode(dir, 'alice');
    const { proc, port } = await nodesServer(dir);
    const n = await initNode(dir, 'alice', key, port);
    const node = await replaySessions(n.netDir, ['session-basic/hooks.jsonl']);
    await proc.kill();
    const good = readFileSync(n.file);
    const starts = recordStarts(n.file);
    assert.ok(starts.length > 10, `${starts.length} records`);
    // the operator swaps the file while the server is down (a running server holds it open and knows its end)
    let server: ServerProc | null = null;
    const serve = async (bytes: Buffer): Promise<void> => {
      await server?.kill();
      writeFileSync(n.file, bytes);
      server = (await nodesServer(dir, port)).proc;
    };
    const refusedWith = async (bytes: Buffer, re: RegExp): Promise<void> => {
      await serve(bytes);
      const out = await restore(n);
      assert.notEqual(out.code, 0, out.stdout);
      assert.match(out.stderr, re);
      assert.ok(!existsSync(out.dest), 'nothing written on a refused restore');
      assert.deepEqual(readdirSync(out.tmp), []);
    };
    // one byte of a record's ciphertext flipped: the server's own checks see the damage
    const flipped = Buffer.from(good);
    const mid = starts[Math.floor(starts.length / 2)]!;
    flipped[mid + RECORD_HEADER_LEN + 60] ^= 0x01;
    await refusedWith(flipped, /damaged/);
    // a hostile server flips it and recomputes every CRC: only the node's key can tell
    fixChecksums(flipped, mid, mid + RECORD_OVERHEAD + readU64(flipped, mid + 16));
    await refusedWith(flipped, /authenticat.*last authenticated version \d+/);
    // a record dropped from the middle: the chain names a record that is not there
    const k = starts[Math.floor(starts.length / 3)]!;
    const dropped = Buffer.concat([good.subarray(0, k), good.subarray(starts[starts.indexOf(k) + 1]!)]);
    await refusedWith(dropped, /last authenticated version \d+/);
    // cut at a record boundary: authentic up to where it stops, and says how new that is
    await serve(good.subarray(0, starts[starts.length - 5]!));
    const cut = await restore(n);
    assert.equal(cut.code, 0, cut.stderr);
    const newest = Number(/newest authenticated version (\d+)/.exec(cut.stdout)![1]);
    assert.ok(newest < node.dataVersion(), `${newest} < ${node.dataVersion()}`);

    await serve(good);
    const wrongKey = join(area.dir(), 'wrong.key');
    assert.equal((await runCli(['keygen', wrongKey])).code, 0);
    const wrong = await restore(n, ['--key-file', wrongKey]);
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stderr, /wrong key/);
    assert.equal(wrong.stderr.trim().split('\n').length, 1, wrong.stderr);
    assert.ok(!existsSync(wrong.dest));
    assert.deepEqual(readdirSync(wrong.tmp), []);
    await server!.kill();
  });

  it('the server SIGKILLed mid-write and restarted: the plugin reconnects, nothing acknowledged is lost or doubled', { timeout: 120_000 }, async () => {
    const dir = area.dir();
    const key = await addNode(dir, 'alice');
    let { proc, port } = await nodesServer(dir);
    const n = await initNode(dir, 'alice', key, port, 30);
    const plugin = new PluginProc(n.netDir);
    await plugin.call('m', 'getmanifest', {});
    proc = await writeThroughServerKills(plugin, dir, port, proc);
    await plugin.close();
    const out = await restore(n);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(dump(out.dest), readFileSync(join(REF, 'expected.dump.sql'), 'utf8'));
    await proc.kill();
  });

  it('backup-compact of an encrypted backup: the node sends a chain-start snapshot of its database that the server, without the key, makes the whole backup; writes and a rewind go on; it restores exactly; no plaintext on the server', { timeout: 150_000 }, async () => {
    const dir = area.dir();
    const key = await addNode(dir, 'alice');
    const { proc, port } = await nodesServer(dir);
    const n = await initNode(dir, 'alice', key, port, 20);
    // what the server's file holds, as inspect reads it without the key (reserved space not counted)
    const held = async (): Promise<{ bytes: number; entries: number; snapshots: number }> => {
      const i = await runCli(['inspect', '--json', `file://${n.file}`]);
      assert.equal(i.code, 0, i.stderr);
      const j = JSON.parse(i.stdout) as { bytes: number; entries: number; snapshots: unknown[] };
      return { bytes: j.bytes, entries: j.entries, snapshots: j.snapshots.length };
    };
    const node = new SimNode({ netDir: n.netDir, hookSafetyTimeoutMs: 60_000 });
    try {
      await node.boot();
      assert.equal((await node.transaction(['CREATE TABLE t (v TEXT)'])).answered, 'continue');
      for (let i = 0; i < 10; i++) assert.equal((await node.transaction([`INSERT INTO t(v) VALUES ('${MARKER}-${i}')`])).answered, 'continue');
      await churn(node, 300, MARKER, 6000);
      const before = await held();
      const answer = (await node.rpc('backup-compact', {}, 120_000)) as {
        result?: { before: { backupsize: number; version_count: number }; after: { backupsize: number; version_count: number } };
        error?: { message: string };
      };
      assert.equal(answer.error, undefined, JSON.stringify(answer));
      const s = answer.result!;
      assert.ok(s.before.version_count > 300 && s.after.version_count === 1 && s.after.backupsize < s.before.backupsize / 3, JSON.stringify(s));
      const after = await held();
      assert.ok(after.entries === 1 && after.snapshots === 1 && after.bytes < before.bytes / 3, `${JSON.stringify(after)} (before: ${JSON.stringify(before)})`);
      await serverSaid(proc, /compacted the encrypted backup with its node's snapshot/);
      await churn(node, 10, 'b', 6000);
      // a crash before lightningd commits: at the restart the version is sent again, and the server rewinds it
      assert.equal((await node.crashBeforeCommit([`UPDATE t SET v = 'never-committed' WHERE rowid = 1`])).answered, 'continue');
      await node.boot();
      await churn(node, 5, 'c', 6000);
      // and once more, with the head now a change after the compaction's snapshot
      assert.equal(((await node.rpc('backup-compact', {}, 120_000)) as { error?: unknown }).error, undefined);
      await churn(node, 3, 'd', 6000);
    } finally {
      await node.stop();
    }
    const want = dump(node.dbPath);
    assert.ok(!want.includes('never-committed'));
    const out = await restore(n);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(dump(out.dest), want);
    // the server's own file (and its history copy), read with the key where it is
    const dest = join(area.dir(), 'direct.sqlite3');
    const direct = await runCli(['restore', '--key-file', n.keyFile, `file://${n.file}`, dest]);
    assert.equal(direct.code, 0, direct.stderr);
    assert.equal(dump(dest), want);
    assertNoPlaintext(dir, [Buffer.from(MARKER)]);
    await proc.kill();
  });

  it('the server checks a compaction snapshot without the key: one not of the head version, or not naming the newest record\'s link, is refused and changes nothing; a good one becomes the backup and the chain goes on', { timeout: 60_000 }, async () => {
    const { proc, n, conn, served, crypt } = await rawSealedConnection();
    const answerOf = async (): Promise<{ type: number; text: string }> => {
      const r = (await conn.readPacket(5000, 5000, 1 << 16))!;
      return { type: r.type, text: r.payload.toString('utf8') };
    };
    for (const v of [1, 2]) {
      await conn.write(sealedChangePacket(crypt, served.seed, v, [`CREATE TABLE t${v} (x INTEGER)`]), 5000);
      assert.equal((await answerOf()).type, PKT.ACK);
      crypt.committed();
    }
    // the database the node would send: t1 and t2, at version 2
    const db = join(area.dir(), 'snap.sqlite3');
    const sq = new Database(db);
    sq.exec('CREATE TABLE t1 (x INTEGER); CREATE TABLE t2 (x INTEGER)');
    sq.close();
    const bytes = (): Buffer => readFileSync(n.file).subarray(0, 4096);
    const before = bytes();

    await sendSealedSnapshot(conn, crypt, served.seed, 1, db, 5000, true);
    assert.match((await answerOf()).text, /the snapshot is of version 1, the backup is at 2: it must cover the backup's newest version exactly/);
    const link = Buffer.from(crypt.link);
    crypt.link = randomBytes(16);
    await sendSealedSnapshot(conn, crypt, served.seed, 2, db, 5000, true);
    assert.match((await answerOf()).text, /the snapshot's link is not the link of the backup's newest record/);
    crypt.link = link;
    assert.ok(bytes().equals(before), 'a refused compaction changed the backup');

    await sendSealedSnapshot(conn, crypt, served.seed, 2, db, 5000, true);
    const ok = await answerOf();
    assert.equal(ok.type, PKT.COMPACT_RES, ok.text);
    assert.deepEqual((JSON.parse(ok.text) as { after: { version_count: number } }).after.version_count, 1);
    crypt.committed();
    await conn.write(sealedChangePacket(crypt, served.seed, 3, ['CREATE TABLE t3 (x INTEGER)']), 5000);
    assert.equal((await answerOf()).type, PKT.ACK);
    crypt.committed();
    conn.close();
    const out = await restore(n);
    assert.equal(out.code, 0, out.stderr);
    assert.match(dump(out.dest), /CREATE TABLE t1 [\s\S]*CREATE TABLE t2 [\s\S]*CREATE TABLE t3 /);
    await proc.kill();
  });

  it('several destinations: an encrypted file and an encrypted clnvault:// server, both written by the plugin, both restore; no plaintext on either', { timeout: 150_000 }, async () => {
    const { dir, proc, netDir, keyFile, filePath, remote } = await encryptedSet('all');
    const node = await startNode(netDir);
    try {
      for (let i = 0; i < 20; i++) {
        const r = await node.transaction([`INSERT INTO vars (name, val) VALUES ('${MARKER}-${i}', '${MARKER}')`]);
        assert.equal(r.answered, 'continue', JSON.stringify(r));
      }
      await until(node, 'both hold the last write', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'm');
    } finally {
      await node.stop();
    }
    const want = dump(node.dbPath);
    assert.match(want, new RegExp(MARKER));
    for (const url of [`file://${filePath}`, remote]) {
      const dest = join(area.dir(), 'restored.sqlite3');
      const r = await runCli(['restore', '--key-file', keyFile, url, dest], { cwd: netDir });
      assert.equal(r.code, 0, r.stderr + r.stdout);
      assert.equal(dump(dest), want, url);
    }
    assert.equal(readFileSync(filePath).indexOf(MARKER), -1);
    for (const f of filesUnder(dir)) assert.equal(readFileSync(f).indexOf(MARKER), -1, `${f} holds plaintext`);
    await proc.kill();
  });

  it('several destinations, ack 1: backup-compact while writes flow compacts the encrypted file online and the encrypted clnvault:// server with the node\'s snapshot, brought to its queued head; both restore; no plaintext', { timeout: 180_000 }, async () => {
    const { dir, proc, netDir, keyFile, filePath, remote } = await encryptedSet('1');
    const fileUrl = `file://${filePath}`;
    const serverFile = join(dir, 'nodes', 'alice', 'backup.bkp');
    const lock = JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8'));
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ ...lock, remote_timeout: 20 }));
    const entries = async (): Promise<number> => {
      const i = await runCli(['inspect', '--json', `file://${serverFile}`]);
      assert.equal(i.code, 0, i.stderr);
      return (JSON.parse(i.stdout) as { entries: number }).entries;
    };
    const node = await startNode(netDir);
    try {
      await seedChurned(node, 'e1');
      const before = await entries();
      assert.ok(before > 300, `the server holds ${before} entries`);
      // churn() asserts every write was answered "continue": the remote's writes queue while it is compacted
      const { answer, during } = await compactWhileWriting<{ result?: { destinations: Array<{ url: string; result: string; before?: { entries: number }; after?: { entries: number }; reason?: string }> }; error?: unknown }>(
        node,
        (n, tag) => churn(n, 1, tag, 3000),
      );
      assert.equal(answer.error, undefined, JSON.stringify(answer));
      const out = answer.result!.destinations;
      assert.deepEqual(out.map((o) => o.result), ['compacted', 'compacted'], JSON.stringify(out));
      const r = out[1]!;
      assert.ok(r.before!.entries > 300 && r.after!.entries === 1, JSON.stringify(r));
      assert.ok(during > 0, 'no write went through during the compaction');
      await serverSaid(proc, /compacted the encrypted backup with its node's snapshot/);
      await churn(node, 10, 'after', 3000);
      await until(node, 'both hold the last write again', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'e2');
      const now = await entries();
      assert.ok(now < before / 5, `the server holds ${now} entries after the compaction (${before} before)`);
    } finally {
      await node.stop();
    }
    const want = dump(node.dbPath);
    for (const url of [fileUrl, remote, `file://${serverFile}`]) {
      const dest = join(area.dir(), 'restored.sqlite3');
      const res = await runCli(['restore', '--key-file', keyFile, url, dest], { cwd: netDir });
      assert.equal(res.code, 0, res.stderr + res.stdout);
      assert.equal(dump(dest), want, url);
    }
    assertNoPlaintext(dir, [Buffer.from(MARKER)]);
    await proc.kill();
  });

  for (const afterMs of [0, 15]) {
    it(`several destinations, ack 1: the server SIGKILLed ${afterMs} ms after the node starts sending its compaction snapshot and restarted: every write answered, the destination catches up, all restore exactly`, { timeout: 180_000 }, async () => {
      const set = await encryptedSet('1');
      const { dir, port, netDir, keyFile, filePath, remote } = set;
      let proc = set.proc;
      const lock = JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8'));
      writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ ...lock, remote_timeout: 20 }));
      const node = await startNode(netDir);
      try {
        await seedChurned(node, 'k1');
        // churn() asserts that every write, before, during and after the kill, is answered "continue"
        const compaction = compactWhileWriting<{ result?: { destinations: Array<{ result: string; reason?: string }> }; error?: unknown }>(node, (n, tag) => churn(n, 1, tag, 3000));
        const t0 = Date.now();
        while (!node.logs.some((l) => /sending a snapshot of version/.test(l.message))) {
          assert.ok(Date.now() - t0 < 60_000, 'the compaction of the encrypted server never started');
          await new Promise((r) => setTimeout(r, 2));
        }
        await new Promise((r) => setTimeout(r, afterMs));
        await proc.kill('SIGKILL');
        await new Promise((r) => setTimeout(r, 300));
        proc = (await nodesServer(dir, port)).proc;
        const { answer } = await compaction;
        assert.equal(answer.error, undefined, JSON.stringify(answer));
        // compacted; or compacted before the kill, its answer lost, and the snapshot resent after the reconnect
        // accepted again (same head, same link) with nothing left to gain; or the turn failed
        assert.ok(['compacted', 'nothing-to-gain', 'failed'].includes(answer.result!.destinations[1]!.result), JSON.stringify(answer.result));
        await churn(node, 10, 'after', 3000);
        await until(node, 'both hold the last write again', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'k2', 60_000);
      } finally {
        await node.stop();
      }
      const want = dump(node.dbPath);
      for (const url of [`file://${filePath}`, remote, `file://${join(dir, 'nodes', 'alice', 'backup.bkp')}`]) {
        const dest = join(area.dir(), 'restored.sqlite3');
        const res = await runCli(['restore', '--key-file', keyFile, url, dest], { cwd: netDir });
        assert.equal(res.code, 0, res.stderr + res.stdout);
        assert.equal(dump(dest), want, url);
      }
      await proc.kill();
    });
  }

  it('the server checks sealed records without the key: a bad CRC, another file\'s seed, a plaintext flag, a gap are refused and change nothing; an oversized frame drops that connection only', { timeout: 60_000 }, async () => {
    const { proc, n, conn, served, crypt } = await rawSealedConnection();
    const send = async (pkt: Buffer): Promise<{ type: number; text: string }> => {
      await conn.write(pkt, 5000);
      const r = (await conn.readPacket(5000, 5000, 1 << 16))!;
      return { type: r.type, text: r.payload.toString('utf8') };
    };
    const size = (): number => statSync(n.file).size;
    const before = size();
    const good = (v: number): Buffer => sealedChangePacket(crypt, served.seed, v, [`CREATE TABLE t${v} (x INTEGER)`]);

    const badCrc = good(1);
    badCrc[badCrc.length - 20] ^= 1;
    assert.match((await send(badCrc)).text, /does not match its checksum/);
    assert.match((await send(sealedChangePacket(crypt, 0x1234, 1, ['UPDATE vars SET intval=1']))).text, /checksum mismatch.*another backup/);
    const plainFlag = good(1);
    // the flag is in the header: only the header CRC changes, re-sealed for the served file as a forger would
    plainFlag[5 + 5] &= ~FLAG_ENCRYPTED;
    plainFlag.writeUInt32BE(crc32(plainFlag.subarray(5, 5 + 28), served.seed), 5 + 28);
    assert.match((await send(plainFlag)).text, /plaintext record in an encrypted backup/);
    assert.equal(size(), before, 'nothing refused was kept');

    assert.equal((await send(good(1))).type, PKT.ACK);
    crypt.committed();
    const gap = await send(good(3));
    assert.equal(gap.type, PKT.NACK);
    // an oversized frame: that connection is dropped, the server and the backup go on
    const big = Buffer.alloc(5);
    big[0] = 0x23;
    big.writeUInt32BE(0xffff_fff0, 1);
    await conn.write(big, 5000);
    assert.equal(await conn.readPacket(5000, 5000, 64).catch(() => null), null);
    conn.close();
    const again = await openConnection(parseSocketUrl(n.url, n.netDir), 5000);
    const h2 = await askHello(again, 5000);
    assert.ok(h2.tailLink.equals(crypt.link), 'the tail link is the acknowledged record\'s');
    again.close();
    // through the server, with the key: the one acknowledged record, authenticated
    const v = await runCli(['verify', '--key-file', n.keyFile, n.url], { cwd: n.netDir });
    assert.equal(v.code, 0, v.stderr + v.stdout);
    assert.match(v.stdout, /newest authenticated version 1,/);
    await proc.kill();
  });

  it('the key from the node seed (hsm_secret, the default): init, the plugin, and a restore with --hsm-secret on another machine', { timeout: 60_000 }, async () => {
    const dir = area.dir();
    const key = await addNode(dir, 'alice');
    const { proc, port } = await nodesServer(dir);
    const netDir = area.dir();
    writeFileSync(join(netDir, 'clnvault-remote.key'), `${key}\n`, { mode: 0o600 });
    // the older layout lightningd still reads: 32 raw bytes
    writeFileSync(join(netDir, 'hsm_secret'), randomBytes(32), { mode: 0o400 });
    const url = `clnvault://alice@127.0.0.1:${port}`;
    const init = await runCli(['init', '--lightning-dir', netDir, '--encrypt', url]);
    assert.equal(init.code, 0, init.stderr + init.stdout);
    assert.match(init.stdout, /the node's seed \(hsm_secret\), key fingerprint [0-9a-f]{16}/);
    assert.deepEqual(JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8')).encrypt, { key: 'hsm_secret' });
    await replaySessions(netDir, ['session-basic/hooks.jsonl']);
    const dest = join(area.dir(), 'restored.sqlite3');
    const r = await runCli(['restore', '--hsm-secret', join(netDir, 'hsm_secret'), `${url}?keyfile=${join(netDir, 'clnvault-remote.key')}`, dest]);
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.equal(dump(dest), readFileSync(join(CLN, 'session-basic/final.dump.sql'), 'utf8'));
    await proc.kill();
  });

  it('refusals: plaintext into an encrypted backup, a key for a plain one, socket: with a key, a server too old for it', { timeout: 60_000 }, async () => {
    const dir = area.dir();
    const aliceKey = await addNode(dir, 'alice');
    const { proc, port } = await nodesServer(dir);
    const n = await initNode(dir, 'alice', aliceKey, port);
    const calls = [{ data_version: 1, writes: ["INSERT INTO vars (name, val) VALUES ('clnvault-test', 'x')"] }];
    // a node whose backup.lock lost "encrypt": the server refuses its statements in clear
    const lock = JSON.parse(readFileSync(join(n.netDir, 'backup.lock'), 'utf8'));
    writeFileSync(join(n.netDir, 'backup.lock'), JSON.stringify({ backend_url: lock.backend_url, remote_timeout: 3 }));
    const plain = new PluginProc(n.netDir);
    const r = await plain.call('w0', 'db_write', calls[0]);
    await plain.close();
    assert.match(JSON.stringify(r.error), /encrypted/);
    assert.equal(recordStarts(n.file).length, 0, 'nothing was stored');
    // backup.lock naming another key: refused before anything is sealed, naming both fingerprints
    const otherKey = join(area.dir(), 'other.key');
    assert.equal((await runCli(['keygen', otherKey])).code, 0);
    writeFileSync(join(n.netDir, 'backup.lock'), JSON.stringify({ backend_url: lock.backend_url, remote_timeout: 3, encrypt: { key_file: otherKey } }));
    const wrong = new PluginProc(n.netDir);
    const rw = await wrong.call('w0', 'db_write', calls[0]);
    await wrong.close();
    assert.match(JSON.stringify(rw.error), /wrong key: the key given \(key-file, fingerprint [0-9a-f]{16}\) is not the backup's/);
    assert.equal(recordStarts(n.file).length, 0, 'nothing was stored');

    // a key for a plain backup on the server
    const key = await addNode(dir, 'bob');
    const bobDir = area.dir();
    writeFileSync(join(bobDir, 'clnvault-remote.key'), `${key}\n`, { mode: 0o600 });
    writeFileSync(join(bobDir, 'backup.lock'), JSON.stringify({ backend_url: `clnvault://bob@127.0.0.1:${port}`, remote_timeout: 3, encrypt: { key_file: n.keyFile } }));
    const keyed = new PluginProc(bobDir);
    const rk = await keyed.call('w0', 'db_write', calls[0]);
    await keyed.close();
    assert.match(JSON.stringify(rk.error), /not an encrypted backup/);

    const sock = await runCli(['init', '--lightning-dir', area.dir(), '--encrypt', '--key-file', n.keyFile, `socket:127.0.0.1:${port}`]);
    assert.notEqual(sock.code, 0);
    assert.match(sock.stderr, /socket: backup cannot be encrypted/);
    await proc.kill();

    // a clnvault server from before the extension: TLS with the node's key, then it drops the connection
    // at the unknown HELLO (as the old code did): a clear refusal, at once, not a hang
    const old = createTlsServer({ ...PSK_TLS, pskCallback: () => Buffer.from(key, 'hex') }, (s) => {
      s.once('data', (d: Buffer) => {
        if (d[0] === PKT.REQ_METADATA) s.write(metadataPacket({ protocol: 1, version: 0, prevVersion: 0, versionCount: 0 }));
        else s.destroy();
      });
    });
    old.listen(0, '127.0.0.1');
    await once(old, 'listening');
    const oldPort = (old.address() as { port: number }).port;
    const t0 = Date.now();
    const init = await runCli(['init', '--lightning-dir', area.dir(), '--encrypt', '--key-file', n.keyFile, `clnvault://bob@127.0.0.1:${oldPort}?keyfile=${join(bobDir, 'clnvault-remote.key')}`]);
    old.close();
    assert.notEqual(init.code, 0);
    assert.match(init.stderr, /too old for encrypted backups/);
    assert.ok(Date.now() - t0 < 20_000, 'refused without waiting out remote_timeout');
  });
});
