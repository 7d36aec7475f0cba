/**
 * Several destinations: a remote destination replaced, while the plugin was stopped, by another backup
 * whose versions line up with the node's is found by its backup id, as a file destination is
 * (multi-identity.test.ts): a clnvault:// server's stored file (its v2 id, reported in METADATA when
 * asked) and a PostgreSQL backup dropped and re-initialised under the same name (the backups row's uid).
 * REPLACED, refused, never trusted; re-created empty, it is re-seeded and its new id recorded. The built
 * plugin under the lightningd simulator, a real `clnvault server --dir` over TLS on 127.0.0.1, a real
 * PostgreSQL server, real files.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { SimNode } from '../src/sim/lightningd.js';
import { runCli, scratchArea, show } from './helpers/cli.js';
import { killAllPlugins } from './helpers/plugin-proc.js';
import { PG_SKIP, PgServer } from './helpers/postgres.js';
import { killAllServers } from './helpers/socket-rig.js';
import { dump } from './helpers/sqlite.js';
import { firstWrite, initFile, nodesRig, restoreDump, startNode, until, writes } from './helpers/multi-rig.js';

const area = scratchArea('clnvault-multi-identity-remote-');
let pgServer: PgServer | null = null;
after(async () => {
  killAllPlugins();
  await killAllServers();
  await pgServer?.stop();
  area.cleanup();
});

/** The backup ids recorded in clnvault-destinations.json, by destination as shown (a password redacted). */
function ids(netDir: string): Record<string, string | undefined> {
  const s = JSON.parse(readFileSync(join(netDir, 'clnvault-destinations.json'), 'utf8')) as { destinations: Record<string, { id?: string }> };
  return Object.fromEntries(Object.entries(s.destinations).map(([k, v]) => [k, v.id]));
}

/** The id recorded for the one destination that is not `fileUrl`. */
function remoteId(netDir: string, fileUrl: string): string | undefined {
  const all = ids(netDir);
  const keys = Object.keys(all).filter((k) => k !== fileUrl);
  assert.equal(keys.length, 1, JSON.stringify(all));
  return all[keys[0]!];
}

function restoreIn(url: string, cwd: string): Promise<string> {
  return restoreDump(url, area.dir(), cwd);
}

/**
 * A backup made elsewhere from a copy of the node's database: its versions line up with the node's, its
 * id is its own. `url`: where (PostgreSQL); by default a v2 file, whose path is returned.
 */
async function alignedOther(node: SimNode, url?: string): Promise<string> {
  const other = area.dir();
  copyFileSync(node.dbPath, join(other, 'lightningd.sqlite3'));
  const fake = join(other, 'fake.bkp');
  const init = await runCli(['init', '--lightning-dir', other, url ?? `file://${fake}`]);
  assert.equal(init.code, 0, show(init));
  return fake;
}

/**
 * The common course: run, stop; replace the remote destination with an aligned other backup (`replace`);
 * start: REPLACED and refused, the file goes on (ack 1); stop; re-create it empty (`recreate`): re-seeded,
 * the new id recorded; both restore to the node's database.
 */
async function course(
  netDir: string,
  fileUrl: string,
  remoteUrl: string,
  shown: RegExp,
  replace: (node: SimNode) => Promise<void>,
  recreate: () => Promise<void>,
): Promise<void> {
  let node = await startNode(netDir);
  await firstWrite(node);
  await writes(node, 10, 'a');
  await until(node, 'both hold the writes', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'a2');
  await node.stop();
  const recorded = remoteId(netDir, fileUrl);
  assert.match(recorded ?? '', /^[0-9a-f]{32}$/, 'the remote destination\'s backup id is recorded');

  await replace(node);
  node = await startNode(netDir);
  try {
    const st = await until(node, 'the replaced destination refused', (x) => x[1]!.state === 'refused', 'b', 30_000);
    assert.equal(st[0]!.healthy, true);
    assert.ok(
      node.logs.some((l) => l.level === 'error' && shown.test(l.message) && /REPLACED: its backup id is [0-9a-f]{32}, but the one recorded/.test(l.message)),
      node.logs.map((l) => l.message).join('\n'),
    );
    await writes(node, 5, 'c');
    assert.equal((await until(node, 'the file holds the writes', (x) => x[0]!.acked_version === node.dataVersion(), 'd'))[1]!.state, 'refused');
  } finally {
    await node.stop();
  }
  assert.equal(remoteId(netDir, fileUrl), recorded, 'the replacement\'s id was not recorded');
  assert.equal(await restoreIn(fileUrl, netDir), dump(node.dbPath));

  await recreate();
  node = await startNode(netDir);
  try {
    await until(node, 're-seeded', (x) => x[1]!.healthy && x[1]!.acked_version === node.dataVersion(), 'e', 30_000);
    await writes(node, 3, 'f');
    await until(node, 'both hold the last write', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'g');
  } finally {
    await node.stop();
  }
  const now = remoteId(netDir, fileUrl);
  assert.match(now ?? '', /^[0-9a-f]{32}$/);
  assert.notEqual(now, recorded, 'the re-created backup\'s new id is recorded');
  const want = dump(node.dbPath);
  assert.equal(await restoreIn(fileUrl, netDir), want);
  assert.equal(await restoreIn(remoteUrl, netDir), want);
}

describe('a remote destination replaced by another backup aligned with the node', () => {
  it('clnvault://: the server\'s stored file swapped for a copy of another backup: REPLACED, refused; re-created empty: re-seeded', { timeout: 180_000 }, async () => {
    const set = await nodesRig(() => area.dir(), { ack: 1, remote_timeout: 5 });
    await course(
      set.netDir,
      set.fileUrl,
      set.remoteUrl,
      new RegExp(`destination ${set.remoteUrl.replace(/\./g, '\\.')}: `),
      async (node) => {
        // another backup of the same database (same versions), put where the server keeps alice's
        const fake = await alignedOther(node);
        await set.restart(async () => {
          rmSync(set.stored);
          copyFileSync(fake, set.stored);
        });
      },
      () =>
        set.restart(async () => {
          rmSync(set.stored);
          await initFile(set.stored);
        }),
    );
  });

  it('clnvault://: the server restarted with another backup while the plugin runs: the reconnection finds another id and is refused', { timeout: 120_000 }, async () => {
    const set = await nodesRig(() => area.dir(), { ack: 1, remote_timeout: 20 });
    const node = await startNode(set.netDir);
    try {
      await firstWrite(node);
      await writes(node, 5, 'a');
      await until(node, 'both hold the writes', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'a2');
      // made first, so that the server is back well within remote_timeout: the lane's session reconnects by itself
      const fake = await alignedOther(node);
      await set.restart(async () => {
        rmSync(set.stored);
        copyFileSync(fake, set.stored);
      });
      await until(node, 'the replaced server refused', (x) => x[1]!.state === 'refused', 'b', 60_000);
      const text = node.logs.map((l) => l.message).join('\n');
      assert.match(text, /after reconnecting, the server's backup id is [0-9a-f]{32}, but it was [0-9a-f]{32}: the backup was replaced/);
      assert.match(text, /REPLACED: its backup id is/);
    } finally {
      await node.stop();
    }
    assert.equal(await restoreIn(set.fileUrl, set.netDir), dump(node.dbPath));
  });

  it('postgresql://: the backup dropped and re-initialised under the same name from a copy of the node: REPLACED, refused; re-created empty: re-seeded', { skip: PG_SKIP, timeout: 180_000 }, async () => {
    pgServer = await PgServer.startWithSchema();
    const pgs = pgServer;
    await pgs.createNodeRole('node_ident', 'pw-node_ident');
    const pgUrl = pgs.url('node_ident', 'pw-node_ident', 'ident');
    const made = await runCli(['init', pgUrl]);
    assert.equal(made.code, 0, show(made));
    const drop = async (): Promise<void> => {
      const c = await pgs.superClient();
      try {
        await c.query("DELETE FROM clnvault.entries WHERE backup_id IN (SELECT id FROM clnvault.backups WHERE name = 'ident')");
        await c.query("DELETE FROM clnvault.backups WHERE name = 'ident'");
      } finally {
        await c.end();
      }
    };
    const netDir = area.dir();
    const fileUrl = await initFile(join(area.dir(), 'local.bkp'));
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ destinations: [fileUrl, pgUrl], ack: 1, remote_timeout: 5 }));

    await course(
      netDir,
      fileUrl,
      pgUrl,
      /destination postgresql:\/\/node_ident:[^@]*@127\.0\.0\.1/,
      async (node) => {
        await drop();
        await alignedOther(node, pgUrl);
      },
      async () => {
        await drop();
        const r = await runCli(['init', pgUrl]);
        assert.equal(r.code, 0, show(r));
      },
    );
    assert.doesNotMatch(readFileSync(join(netDir, 'clnvault-destinations.json'), 'utf8'), /pw-node_ident/, 'no password in the progress file');
  });
});
