/**
 * backup-compact with several destinations: the built plugin under the lightningd simulator (real SQLite,
 * real pipes) writing to two local files, or to a local file and a real `clnvault server` over TCP.
 * Each destination is compacted in turn while writes flow (taken out of the acknowledgement count only
 * while the others make up "ack"), the answer and clnvault-status say per destination what was done,
 * and each destination then restores to the node's database.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { SimNode } from '../src/sim/lightningd.js';
import { runCli, scratchArea, show } from './helpers/cli.js';
import { killAllPlugins } from './helpers/plugin-proc.js';
import { killAllServers } from './helpers/socket-rig.js';
import { dump } from './helpers/sqlite.js';
import { churn, compactWhileWriting, firstWrite, initFile, restoreDump, rig, startNode, twoFiles, until } from './helpers/multi-rig.js';

const area = scratchArea('clnvault-multi-compact-');
after(async () => {
  killAllPlugins();
  await killAllServers();
  area.cleanup();
});

async function seed(node: SimNode): Promise<void> {
  await firstWrite(node);
  for (let i = 0; i < 10; i++) {
    const r = await node.transaction([`INSERT INTO t(v) VALUES ('row-${i}')`]);
    assert.equal(r.answered, 'continue', JSON.stringify(r));
  }
  await churn(node, 200, 'a');
}

interface Outcome {
  index: number;
  url: string;
  result: string;
  before?: { bytes: number; entries: number };
  after?: { bytes: number; entries: number };
  reason?: string;
}

type Answer = { result?: { destinations: Outcome[] }; error?: { message: string } };
const compactWhileChurning = (node: SimNode): Promise<{ answer: Answer; during: number }> => compactWhileWriting<Answer>(node, (n, tag) => churn(n, 1, tag));

/**
 * Two file destinations with `ack`: backup-compact while writes flow, both compacted (smaller), writes
 * went through meanwhile; `more` runs while the node is still up; both then restore to the node.
 */
async function twoFilesCompacted(ack: number | 'all', more: (node: SimNode, urls: string[]) => Promise<void>): Promise<void> {
  const { netDir, a, b } = await twoFiles(() => area.dir(), { ack, remote_timeout: 10 });
  const node = await startNode(netDir);
  try {
    await seed(node);
    // churn() asserts that every write was answered "continue": none refused during the compaction
    const { answer, during } = await compactWhileChurning(node);
    assert.equal(answer.error, undefined, JSON.stringify(answer));
    const out = answer.result!.destinations;
    assert.deepEqual(out.map((o) => [o.url, o.result]), [[a, 'compacted'], [b, 'compacted']], JSON.stringify(out));
    for (const o of out) assert.ok(o.after!.entries < o.before!.entries && o.after!.bytes < o.before!.bytes, JSON.stringify(o));
    assert.ok(during > 0, 'no write went through during the compaction');
    await more(node, [a, b]);
  } finally {
    await node.stop();
  }
  const want = dump(node.dbPath);
  assert.equal(await restoreDump(a, area.dir()), want);
  assert.equal(await restoreDump(b, area.dir()), want);
}

describe('backup-compact with several destinations', () => {
  it('two files, k=1: each compacted in turn while writes flow; the answer and status say so; both restore to the node', { timeout: 150_000 }, async () => {
    await twoFilesCompacted(1, async (node) => {
      const st = await until(node, 'both hold the last write', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'c');
      assert.deepEqual(st.map((x) => (x as unknown as { compaction: Outcome | null }).compaction?.result), ['compacted', 'compacted']);
      await churn(node, 20, 'd');
      await until(node, 'both hold the last write', (x) => x.every((y) => y.acked_version === node.dataVersion()), 'e');
    });
  });

  it('a file and a clnvault server, k=1: the file is compacted online, the server compacts its own file on COMPACT; both restore', { timeout: 150_000 }, async () => {
    const r = await rig(() => area.dir(), { ack: 1, remote_timeout: 10 });
    const node = await startNode(r.netDir);
    try {
      await seed(node);
      await until(node, 'both live', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'a2');
      const { answer } = await compactWhileChurning(node);
      assert.equal(answer.error, undefined, JSON.stringify(answer));
      const out = answer.result!.destinations;
      assert.equal(out[0]!.result, 'compacted', JSON.stringify(out));
      assert.equal(out[1]!.result, 'compacted', JSON.stringify(out));
      assert.ok(out[1]!.after!.entries < out[1]!.before!.entries && out[1]!.after!.bytes < out[1]!.before!.bytes, JSON.stringify(out));
      await churn(node, 10, 'b');
      await until(node, 'both hold the last write', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'c');
    } finally {
      await node.stop();
    }
    const want = dump(node.dbPath);
    assert.equal(await restoreDump(r.fileUrl, area.dir()), want);
    assert.equal(await restoreDump(r.serverUrl, area.dir()), want);
  });

  it('the automatic trigger: a file destination past the threshold starts a compaction of the set by itself; both restore', { timeout: 150_000 }, async () => {
    const netDir = area.dir();
    const d = area.dir();
    const a = await initFile(join(d, 'a.bkp'));
    const b = await initFile(join(d, 'b.bkp'));
    writeFileSync(
      join(netDir, 'backup.lock'),
      JSON.stringify({ destinations: [a, b], ack: 1, remote_timeout: 10, compaction: { auto: true, min_bytes: 400_000, factor: 1 } }),
    );
    const node = await startNode(netDir);
    try {
      await seed(node);
      const done = (): string[] => node.logs.filter((l) => /compaction of destination .*: compacted/.test(l.message)).map((l) => l.message);
      const end = Date.now() + 60_000;
      for (let i = 0; done().length < 2; i++) {
        if (Date.now() > end) assert.fail(`no automatic compaction: ${node.logs.map((l) => l.message).join('\n')}`);
        await churn(node, 10, `auto${i}`);
      }
      assert.ok(node.logs.some((l) => /compacting the destinations in the background/.test(l.message)));
      await until(node, 'both hold the last write', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'c');
    } finally {
      await node.stop();
    }
    const want = dump(node.dbPath);
    assert.equal(await restoreDump(a, area.dir()), want);
    assert.equal(await restoreDump(b, area.dir()), want);
  });

  it('"ack": "all", two files: each compacted online while writes flow (none waits, none refused), its reserve topped up in its lane; both restore', { timeout: 150_000 }, async () => {
    await twoFilesCompacted('all', async (node, urls) => {
      assert.ok(!node.logs.some((l) => /not counted for acknowledgements/.test(l.message)), 'a file destination was taken out');
      await churn(node, 20, 'd');
      await until(node, 'both hold the last write', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'e');
      // written by their lanes since the hand-over: the reserve ahead of the writer is kept up as the lone writer keeps it
      for (const url of urls) {
        const r = await runCli(['inspect', '--json', url]);
        assert.equal(r.code, 0, show(r));
        const rep = JSON.parse(r.stdout) as { reservedBytes: number };
        assert.ok(rep.reservedBytes > 0, `${url}: no reserved space after the lane's writes: ${r.stdout}`);
      }
    });
  });

  it('"ack": "all", a file and a clnvault server: the file is compacted online; the server (taken out to compact) is not, as writes would wait', { timeout: 90_000 }, async () => {
    const r = await rig(() => area.dir(), { ack: 'all', remote_timeout: 10 });
    const node = await startNode(r.netDir);
    try {
      await seed(node);
      await until(node, 'both live', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'a2');
      const { answer } = await compactWhileChurning(node);
      const out = answer.result!.destinations;
      assert.deepEqual(out.map((o) => o.result), ['compacted', 'skipped'], JSON.stringify(out));
      assert.match(out[1]!.reason ?? '', /other destination\(s\) are live and "ack" is 2/);
      const w = await node.transaction(['CREATE TABLE u (x)']);
      assert.equal(w.answered, 'continue');
    } finally {
      await node.stop();
    }
    assert.equal(await restoreDump(r.fileUrl, area.dir()), dump(node.dbPath));
  });
});
