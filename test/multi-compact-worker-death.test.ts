/**
 * A file destination among several is compacted online in its own thread (compact/thread-gate.ts): a worker
 * builds the compacted file while the destination's thread goes on writing, and takes the write mutex for
 * the swap. Should that worker end while it holds the mutex (running out of heap ends a thread without an
 * exit handler), the destination's thread, blocked in the mutex, sees no event: it must find the worker's
 * OS thread gone (/proc/self/task) and go on. Here the worker is replaced, in a copy of the built plugin,
 * by one that takes the mutex, holds it while writes arrive, and ends its thread that way, before renaming
 * anything.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import type { SimNode } from '../src/sim/lightningd.js';
import { scratchArea } from './helpers/cli.js';
import { killAllPlugins } from './helpers/plugin-proc.js';
import { pluginCopy, type PluginCopy } from './helpers/plugin-copy.js';
import { dump } from './helpers/sqlite.js';
import { compactWhileWriting, firstWrite, restoreDump, startNode, twoFiles, until } from './helpers/multi-rig.js';

const area = scratchArea('clnvault-multi-compact-death-');
const copies: PluginCopy[] = [];
after(() => {
  killAllPlugins();
  for (const c of copies) c.cleanup();
  area.cleanup();
});

const DYING_WORKER = [
  "import { readlinkSync } from 'node:fs';",
  "import { workerData } from 'node:worker_threads';",
  "import { lock, views, WORKER_TID, WRITE_MUTEX } from './sync.js';",
  'const v = views(workerData.live);',
  "Atomics.store(v.i32, WORKER_TID, Number(readlinkSync('/proc/thread-self').split('/').pop()));",
  'lock(v.i32, WRITE_MUTEX);',
  // long enough for the destination's thread to block in the mutex on the next write: only the look into
  // /proc/self/task can free it then
  'Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500);',
  'process.reallyExit(9);',
  '',
].join('\n');

async function write(node: SimNode, n: number, tag: string): Promise<void> {
  for (let i = 0; i < n; i++) {
    const r = await node.transaction([`UPDATE t SET v = '${tag}-${i}-${'x'.repeat(800)}' WHERE rowid = ${(i % 5) + 1}`]);
    assert.equal(r.answered, 'continue', JSON.stringify(r));
  }
}

describe('several destinations: the compaction worker of a file destination dies holding the write mutex', () => {
  it('"ack": "all": every write goes on (none refused), the answer names the death, both destinations restore to the node', { timeout: 150_000 }, async () => {
    const copy = pluginCopy('compact/offline-worker.js', DYING_WORKER);
    copies.push(copy);
    const { netDir, a, b } = await twoFiles(() => area.dir(), { ack: 'all', remote_timeout: 10 });
    const node = await startNode(netDir, copy.plugin);
    try {
      await firstWrite(node);
      for (let i = 0; i < 5; i++) assert.equal((await node.transaction([`INSERT INTO t(v) VALUES ('row-${i}')`])).answered, 'continue');
      await write(node, 100, 'a');
      const { answer, during } = await compactWhileWriting<{ result?: { destinations: Array<{ url: string; result: string; reason?: string }> }; error?: { message: string } }>(
        node,
        (n, tag) => write(n, 1, tag),
      );
      assert.equal(answer.error, undefined, JSON.stringify(answer));
      const out = answer.result!.destinations;
      assert.equal(out.length, 2, JSON.stringify(out));
      for (const o of out) {
        assert.equal(o.result, 'failed', JSON.stringify(o));
        assert.match(o.reason ?? '', /exited \(code 9\) without a result/, JSON.stringify(o));
      }
      assert.ok(during > 0, 'no write went through while the compaction was asked for');
      const freed = node.logs.filter((l) => /compaction worker died while it held the backup's write lock; the backup was not replaced, writes go on/.test(l.message));
      assert.equal(freed.length, 2, node.logs.map((l) => l.message).join('\n'));
      await write(node, 20, 'after');
      await until(node, 'both hold the last write', (x) => x.every((y) => y.healthy && y.acked_version === node.dataVersion()), 'z');
    } finally {
      await node.stop();
    }
    const want = dump(node.dbPath);
    assert.equal(await restoreDump(a, area.dir()), want);
    assert.equal(await restoreDump(b, area.dir()), want);
  });
});
