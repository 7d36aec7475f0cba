/**
 * Several destinations: a destination that missed writes while the plugin was stopped (its file moved
 * away, its server down) is caught up from another destination's records when it is back, not re-seeded
 * with a snapshot of the database; the other destination's newest entries are what it gets. The built
 * plugin under the lightningd simulator, real files, a real `clnvault server --dir` over TLS on 127.0.0.1.
 */
import assert from 'node:assert/strict';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { SimNode } from '../src/sim/lightningd.js';
import { runCli, scratchArea, show } from './helpers/cli.js';
import { killAllPlugins } from './helpers/plugin-proc.js';
import { killAllServers } from './helpers/socket-rig.js';
import { dump } from './helpers/sqlite.js';
import { firstWrite, nodesRig, restoreDump, startNode, twoFiles, until, writes } from './helpers/multi-rig.js';

const area = scratchArea('clnvault-multi-catch-up-');
after(async () => {
  killAllPlugins();
  await killAllServers();
  area.cleanup();
});

/**
 * Three runs: both destinations take writes; the second (`away`, `back`) misses a run's writes; in the
 * third it is caught up from the first destination's records (the log says so, no snapshot is taken),
 * takes the writes after it, and both restore to the node's database.
 */
async function course(
  netDir: string,
  urls: string[],
  away: () => Promise<void>,
  back: () => Promise<void>,
  opts: { cwd?: string; initialised?: boolean; restore?: (url: string) => Promise<string> } = {},
): Promise<void> {
  let node: SimNode = await startNode(netDir);
  try {
    if (opts.initialised !== true) await firstWrite(node);
    await writes(node, 10, 'a');
    await until(node, 'both hold the writes', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'a2');
  } finally {
    await node.stop();
  }
  await away();
  node = await startNode(netDir);
  try {
    await writes(node, 30, 'b');
    await until(node, 'the first holds the writes', (x) => x[0]!.acked_version === node.dataVersion() && !x[1]!.healthy, 'b2');
  } finally {
    await node.stop();
  }
  const missed = node.dataVersion();
  await back();
  node = await startNode(netDir);
  try {
    await writes(node, 5, 'c');
    await until(node, 'both hold the last write', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'c2', 30_000);
    const text = node.logs.map((l) => l.message).join('\n');
    assert.match(text, new RegExp(`was behind at version \\d+: caught up to version ${missed} with \\d+ entries from ${urls[0]!.replace(/[.:/]/g, '\\$&')}`), text);
    assert.doesNotMatch(text, /re-seeding .* with a snapshot/, 'it was re-seeded instead');
  } finally {
    await node.stop();
  }
  const want = dump(node.dbPath);
  for (const url of urls) assert.equal(await (opts.restore ?? ((u) => restoreDump(u, area.dir(), opts.cwd)))(url), want, url);
}

describe('a destination that missed writes is caught up from another destination', () => {
  it('file + file, ack 1: the second file moved away for a run, then back: caught up from the first', { timeout: 150_000 }, async () => {
    const { netDir, a, b, bPath } = await twoFiles(() => area.dir(), { ack: 1, remote_timeout: 5 });
    await course(
      netDir,
      [a, b],
      async () => renameSync(bPath, `${bPath}.away`),
      async () => renameSync(`${bPath}.away`, bPath),
    );
  });

  it('encrypted file + file ("encrypt" with a key file): the records read with the key, sealed again for the lagging file; both restore with the key', { timeout: 150_000 }, async () => {
    const netDir = area.dir();
    const db = new Database(join(netDir, 'lightningd.sqlite3'));
    db.exec("CREATE TABLE vars (name TEXT PRIMARY KEY, val TEXT, intval INTEGER); INSERT INTO vars VALUES ('data_version', NULL, 1); CREATE TABLE t (v TEXT)");
    db.close();
    const d = area.dir();
    const keyFile = join(area.dir(), 'backup.key');
    const a = `file://${join(d, 'a.bkp')}`;
    const bPath = join(d, 'b.bkp');
    const b = `file://${bPath}`;
    const init = await runCli(['init', '--lightning-dir', netDir, '--ack', '1', '--encrypt', '--key-file', keyFile, a, b]);
    assert.equal(init.code, 0, show(init));
    const lock = JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ ...lock, remote_timeout: 5 }));
    await course(
      netDir,
      [a, b],
      async () => renameSync(bPath, `${bPath}.away`),
      async () => renameSync(`${bPath}.away`, bPath),
      {
        initialised: true,
        restore: async (url) => {
          const dest = join(area.dir(), 'restored.sqlite3');
          const r = await runCli(['restore', '--key-file', keyFile, url, dest]);
          assert.equal(r.code, 0, show(r));
          return dump(dest);
        },
      },
    );
  });

  it('file + clnvault://, ack 1: the server down for a run, then back: caught up from the file', { timeout: 150_000 }, async () => {
    const set = await nodesRig(() => area.dir(), { ack: 1, remote_timeout: 5 });
    await course(set.netDir, [set.fileUrl, set.remoteUrl], set.stop, set.start, { cwd: set.netDir });
  });
});
