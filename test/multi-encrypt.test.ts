/**
 * "encrypt" with several destinations: `clnvault init --encrypt` with several URLs, the built plugin
 * under the lightningd simulator writing two encrypted file destinations (real files, real SQLite, real
 * pipes), one of them rolled back while the node was stopped and re-seeded with an (encrypted) snapshot;
 * both restore with the key, and no byte of either holds the plaintext. A destination that cannot be
 * encrypted is refused with one line naming it, by init and by the plugin.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { runCli, scratchArea } from './helpers/cli.js';
import { killAllPlugins } from './helpers/plugin-proc.js';
import { dump } from './helpers/sqlite.js';
import { startNode, until } from './helpers/multi-rig.js';
import type { SimNode } from '../src/sim/lightningd.js';

const area = scratchArea('clnvault-multi-encrypt-');
after(() => {
  killAllPlugins();
  area.cleanup();
});

const MARKER = 'PLAINTEXT-MARKER-7f3a';

async function marked(node: SimNode, n: number, tag: string): Promise<void> {
  for (let i = 0; i < n; i++) {
    const r = await node.transaction([`INSERT INTO t(v) VALUES ('${MARKER}-${tag}-${i}')`]);
    assert.equal(r.answered, 'continue', JSON.stringify(r));
  }
}

/** Every byte of a file backup: the file and its segment files. */
function allBytes(path: string): Buffer {
  const parts = [readFileSync(path)];
  for (const n of readdirSync(dirname(path))) if (n.startsWith(`${basename(path)}.seg-`)) parts.push(readFileSync(join(dirname(path), n)));
  return Buffer.concat(parts);
}

async function restoreWithKey(url: string, keyFile: string): Promise<string> {
  const dest = join(area.dir(), 'restored.sqlite3');
  const r = await runCli(['restore', '--key-file', keyFile, url, dest]);
  assert.equal(r.code, 0, r.stderr + r.stdout);
  return dump(dest);
}

function nodeDb(netDir: string): void {
  const db = new Database(join(netDir, 'lightningd.sqlite3'));
  db.exec("CREATE TABLE vars (name TEXT PRIMARY KEY, val TEXT, intval INTEGER); INSERT INTO vars VALUES ('data_version', NULL, 1); CREATE TABLE t (v TEXT)");
  db.close();
}

describe('"encrypt" with several destinations', () => {
  it('init --encrypt makes both encrypted; the plugin writes both; one rolled back is re-seeded encrypted; both compacted online; both restore with the key; no plaintext', { timeout: 150_000 }, async () => {
    const netDir = area.dir();
    nodeDb(netDir);
    const d = area.dir();
    const keyFile = join(area.dir(), 'backup.key');
    const aPath = join(d, 'a.bkp');
    const bPath = join(d, 'b.bkp');
    const a = `file://${aPath}`;
    const b = `file://${bPath}`;
    const init = await runCli(['init', '--lightning-dir', netDir, '--ack', '1', '--encrypt', '--key-file', keyFile, a, b]);
    assert.equal(init.code, 0, init.stderr + init.stdout);
    const lock = JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8')) as Record<string, unknown>;
    assert.deepEqual(lock, { backend_url: a, destinations: [a, b], ack: 1, encrypt: { key_file: keyFile } });

    let node = await startNode(netDir);
    await marked(node, 10, 'a');
    const st = (await node.rpc('clnvault-status')).result as { encrypted: boolean };
    assert.equal(st.encrypted, true);
    await node.stop();
    copyFileSync(bPath, `${bPath}.old`);
    node = await startNode(netDir);
    await marked(node, 10, 'b');
    await node.stop();
    // b goes back to its older copy while the node is stopped: detected, re-seeded with an encrypted snapshot
    copyFileSync(`${bPath}.old`, bPath);
    node = await startNode(netDir);
    try {
      await until(node, 'b re-seeded', (x) => x[1]!.healthy && x[1]!.acked_version === node.dataVersion(), 'c', 30_000);
      assert.ok(node.logs.some((l) => /ROLLED BACK OR REPLACED BY AN OLDER COPY/.test(l.message)), node.logs.map((l) => l.message).join('\n'));
      await marked(node, 5, 'd');
      await until(node, 'both hold the last write', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'e');
      // one row rewritten many times: online compaction of both, which stay encrypted
      for (let i = 0; i < 120; i++) {
        const r = await node.transaction([`UPDATE t SET v = '${MARKER}-u${i}-${'y'.repeat(1000)}' WHERE rowid = 1`]);
        assert.equal(r.answered, 'continue', JSON.stringify(r));
      }
      const c = (await node.rpc('backup-compact', {}, 120_000)) as { result?: { destinations: Array<{ result: string }> } };
      assert.deepEqual(c.result?.destinations.map((x) => x.result), ['compacted', 'compacted'], JSON.stringify(c));
      await marked(node, 3, 'f');
      await until(node, 'both hold the last write', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'g');
    } finally {
      await node.stop();
    }
    const want = dump(node.dbPath);
    assert.match(want, new RegExp(MARKER));
    assert.equal(await restoreWithKey(a, keyFile), want);
    assert.equal(await restoreWithKey(b, keyFile), want);
    for (const p of [aPath, bPath]) assert.equal(allBytes(p).indexOf(MARKER), -1, `${p} holds plaintext`);
    // without the key, no restore
    const nokey = await runCli(['restore', b, join(area.dir(), 'x.sqlite3')]);
    assert.notEqual(nokey.code, 0);
  });

  it('a destination that cannot be encrypted is refused with one line naming it: by init, and by the plugin at start-up', { timeout: 90_000 }, async () => {
    const netDir = area.dir();
    nodeDb(netDir);
    const d = area.dir();
    const keyFile = join(area.dir(), 'backup.key');
    const a = `file://${join(d, 'a.bkp')}`;
    const sock = 'socket:127.0.0.1:9';
    const init = await runCli(['init', '--lightning-dir', netDir, '--ack', '1', '--encrypt', '--key-file', keyFile, a, sock]);
    assert.equal(init.code, 2, init.stderr + init.stdout);
    assert.match(init.stderr, /socket:127\.0\.0\.1:9: a socket: backup cannot be encrypted/);
    assert.deepEqual(readdirSync(d), [], 'init left something behind');

    // by hand: backup.lock naming an encrypted file and a socket: server
    const i1 = await runCli(['init', '--encrypt', '--key-file', keyFile, a]);
    assert.equal(i1.code, 0, i1.stderr);
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ destinations: [a, sock], ack: 1, encrypt: { key_file: keyFile } }));
    const node = await startNode(netDir);
    try {
      const r = await node.transaction(["INSERT INTO t(v) VALUES ('x')"]);
      assert.equal(r.answered, 'error');
      assert.ok(
        node.logs.some((l) => /"encrypt" is set, but destination socket:127\.0\.0\.1:9 cannot be written encrypted \(socket:127\.0\.0\.1:9: a socket: backup cannot be encrypted/.test(l.message)),
        node.logs.map((l) => l.message).join('\n'),
      );
    } finally {
      if (node.state === 'running') await node.stop();
    }
  });
});
