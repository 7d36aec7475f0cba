/**
 * Several destinations: a destination replaced by *another* backup whose versions line up with the
 * node's (made from a copy of the node's database, so nothing in its versions gives it away) is found
 * by its backup id, recorded in clnvault-destinations.json when first seen: REPLACED, never trusted.
 * One re-created empty (clnvault init) is re-seeded and its new id recorded. The built plugin under the
 * lightningd simulator, real files, real CLI.
 */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { runCli, scratchArea } from './helpers/cli.js';
import { killAllPlugins } from './helpers/plugin-proc.js';
import { dump } from './helpers/sqlite.js';
import { firstWrite, initFile, restoreDump, startNode, twoFiles, until, writes } from './helpers/multi-rig.js';

const area = scratchArea('clnvault-multi-identity-');
after(() => {
  killAllPlugins();
  area.cleanup();
});

function ids(netDir: string): Record<string, string | undefined> {
  const s = JSON.parse(readFileSync(join(netDir, 'clnvault-destinations.json'), 'utf8')) as { destinations: Record<string, { id?: string }> };
  return Object.fromEntries(Object.entries(s.destinations).map(([k, v]) => [k, v.id]));
}

describe('a destination replaced by another backup that is aligned with the node', () => {
  it('is REPLACED (backup id), refused, not trusted; k=1 goes on; re-created empty it is re-seeded; both restore', { timeout: 150_000 }, async () => {
    const { netDir, a, b, bPath } = await twoFiles(() => area.dir(), { ack: 1, remote_timeout: 5 });
    let node = await startNode(netDir);
    await firstWrite(node);
    await writes(node, 10, 'a');
    await node.stop();
    const recorded = ids(netDir);
    assert.match(recorded[a] ?? '', /^[0-9a-f]{32}$/);
    assert.match(recorded[b] ?? '', /^[0-9a-f]{32}$/);
    assert.notEqual(recorded[a], recorded[b]);

    // another backup of the same database: same versions, another backup id
    const other = area.dir();
    copyFileSync(node.dbPath, join(other, 'lightningd.sqlite3'));
    const fake = join(other, 'fake.bkp');
    const init = await runCli(['init', '--lightning-dir', other, `file://${fake}`]);
    assert.equal(init.code, 0, init.stderr + init.stdout);
    rmSync(bPath);
    copyFileSync(fake, bPath);

    node = await startNode(netDir);
    try {
      const st = await until(node, 'b refused', (x) => x[1]!.state === 'refused', 'b', 15_000);
      assert.equal(st[0]!.healthy, true);
      assert.ok(
        node.logs.some((l) => l.level === 'error' && new RegExp(`destination file://${bPath}: REPLACED: its backup id is [0-9a-f]{32}, but the one recorded`).test(l.message)),
        node.logs.map((l) => l.message).join('\n'),
      );
      await writes(node, 5, 'c');
      assert.equal((await until(node, 'a holds the writes', (x) => x[0]!.acked_version === node.dataVersion(), 'd'))[1]!.state, 'refused');
    } finally {
      await node.stop();
    }
    assert.equal(ids(netDir)[b], recorded[b], 'the replacement\'s id was recorded');
    assert.equal(await restoreDump(a, area.dir()), dump(node.dbPath));

    // moved aside and re-created empty: re-seeded, its new id recorded
    rmSync(bPath);
    await initFile(bPath);
    node = await startNode(netDir);
    try {
      await until(node, 'b re-seeded', (x) => x[1]!.healthy && x[1]!.acked_version === node.dataVersion(), 'e', 30_000);
      await writes(node, 3, 'f');
      await until(node, 'both hold the last write', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'g');
    } finally {
      await node.stop();
    }
    const now = ids(netDir);
    assert.notEqual(now[b], recorded[b]);
    const want = dump(node.dbPath);
    assert.equal(await restoreDump(a, area.dir()), want);
    assert.equal(await restoreDump(b, area.dir()), want);
  });
});
