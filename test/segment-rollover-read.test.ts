/**
 * A reader of a live segmented backup (compaction's SegmentedSource, `sealOf` for status and open) and
 * the writer rolling over at the same moment. A roll-over cuts the full segment's reserve and then writes
 * its seal, so the segment shrinks between a reader's stat and its read of the last bytes. That read
 * came up short and the compaction failed with "unexpected end of file" (seen once in compact-safety).
 *
 * The first two tests force the interleaving: fstatSync is wrapped from outside the product (as
 * helpers/fault-preload.ts does) so that the real writer rolls over right after the reader's stat of the
 * segment it is filling. The last one runs the real writer in a thread of its own while backups are read,
 * as `clnvault status` reads a live node's: before the fix, 4 in 10 such reads reported a segment missing.
 */
import assert from 'node:assert/strict';
import fs, { mkdtempSync, rmSync, statSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import { createBackup, openReader } from '../src/backends/open.js';
import { listSegmentFiles, SegmentedWriter } from '../src/backends/file/segments.js';
import { SegmentedSource } from '../src/backends/file/segments/source.js';
import { sealOf } from '../src/backends/file/segments/layout.js';

const SEG = 64 * 1024;
const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const realFstat = fs.fstatSync;
/** Runs `f` with fstatSync wrapped: the first stat of the file with inode `ino` runs `then` right after it. */
function afterStatOf<T>(ino: number, then: () => void, f: () => T): { result: T; fired: boolean } {
  let fired = false;
  (fs as { fstatSync: unknown }).fstatSync = (...args: Parameters<typeof fs.fstatSync>) => {
    const st = realFstat(...args);
    if (!fired && st !== undefined && Number(st.ino) === ino) {
      fired = true;
      then();
    }
    return st;
  };
  syncBuiltinESMExports();
  try {
    return { result: f(), fired };
  } finally {
    (fs as { fstatSync: unknown }).fstatSync = realFstat;
    syncBuiltinESMExports();
  }
}

/**
 * A writer just into its second segment file, whose reserve reaches the segment's limit; `rollOver`
 * appends records until one does not fit, so the writer cuts that reserve well below the stat's size.
 */
function fillingSegment(): { path: string; w: SegmentedWriter; filling: string; rollOver: () => void } {
  const d = mkdtempSync(join(tmpdir(), 'clnvault-rollread-'));
  dirs.push(d);
  const path = createBackup(pathToFileURL(join(d, 'b.clnvault')).href, d, 'v2');
  const w = SegmentedWriter.open(path, { segmentBytes: SEG });
  let v = 0;
  const append = (bytes: number): void => {
    w.appendChange(++v, [`INSERT INTO t VALUES (${v}, '${'x'.repeat(bytes)}')`]);
    w.prepare();
  };
  while (listSegmentFiles(path).length < 1) append(1500);
  const filling = listSegmentFiles(path).at(-1)!.path;
  assert.equal(statSync(filling).size, SEG - 64, 'the segment is reserved up to its limit (less its seal)');
  return {
    path,
    w,
    filling,
    rollOver: () => {
      // at most two: the second cannot fit beside the first
      while (listSegmentFiles(path).length === 1) append(40_000);
    },
  };
}

test('compaction reading a segmented backup while the writer cuts the reserve and seals: the read waits for the seal, no "unexpected end of file"', () => {
  const s = fillingSegment();
  try {
    const seg = s.filling;
    const before = statSync(seg).size;
    const { result: src, fired } = afterStatOf(statSync(seg).ino, s.rollOver, () => new SegmentedSource(s.path));
    assert.ok(fired, 'the roll-over must have run between the stat and the read');
    try {
      const after = statSync(seg).size;
      assert.ok(after < before, `the roll-over cut the reserve (${before} -> ${after} bytes)`);
      assert.notEqual(sealOf(seg), null, 'the segment is sealed now');
      // every byte up to the writer's end reads, across the sealed segment into the new one
      const all = Buffer.alloc(s.w.endOffset());
      src.readAt(all, all.length, 0);
      assert.ok(all.includes(Buffer.from('x'.repeat(40_000))), 'the record in the new segment is read');
    } finally {
      src.close();
    }
  } finally {
    s.w.close();
  }
});

test('sealOf a segment in its roll-over: the seal that the writer has just written, read whole', () => {
  const s = fillingSegment();
  try {
    const seg = s.filling;
    const { result: seal, fired } = afterStatOf(statSync(seg).ino, s.rollOver, () => sealOf(seg));
    assert.ok(fired);
    assert.ok(seal !== null, 'the seal written during the read is found');
    assert.equal(seal.next, listSegmentFiles(s.path).at(-1)!.index);
  } finally {
    s.w.close();
  }
});

test('a backup read while the writer rolls its segments over (clnvault status on a live node): never damage, never a failed read', { timeout: 60_000 }, async () => {
  const d = mkdtempSync(join(tmpdir(), 'clnvault-rollread-'));
  dirs.push(d);
  const url = pathToFileURL(join(d, 'b.clnvault')).href;
  const path = createBackup(url, d, 'v2');
  const stop = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(new URL('./helpers/segment-writer-worker.js', import.meta.url), { workerData: { path, segmentBytes: SEG, everyMs: 2, stop } });
  const done = new Promise<{ rolled: number; versions: number }>((res, rej) => {
    worker.once('message', res);
    worker.once('error', rej);
  });
  const bad: string[] = [];
  /** what a live backup may show and a crash leaves too, reported as such, not as damage (docs/format-v2.md) */
  const benign = new Map<string, number>();
  let reads = 0;
  let lastHead = 0;
  try {
    const until = Date.now() + 4000;
    while (Date.now() < until) {
      try {
        const r = openReader(url, d);
        try {
          const st = r.stats();
          for (const p of r.problems()) {
            // a torn tail: the record being appended, or the newest segment's header not written yet (its
            // file is created first): unacknowledged, never damage, and verify passes with it
            if (p.kind === 'torn-tail' && p.suspect !== true) {
              const k = p.message.replace(/\/[^ :]*/g, 'PATH').replace(/\d+/g, 'N');
              benign.set(k, (benign.get(k) ?? 0) + 1);
            }
            else bad.push(`${p.kind}: ${p.message}`);
          }
          assert.ok(st.head >= lastHead, `the head went back from ${lastHead} to ${st.head}`);
          lastHead = st.head;
        } finally {
          r.close();
        }
      } catch (e) {
        bad.push(`failed: ${(e as Error).message}`);
      }
      reads++;
      await new Promise((res) => setImmediate(res));
    }
  } finally {
    Atomics.store(stop, 0, 1);
    Atomics.notify(stop, 0);
  }
  const { rolled, versions } = await done;
  console.log(`# ${reads} reads while the writer appended ${versions} changes and started ${rolled} segments; torn tails seen: ${[...benign.keys()].join(' | ') || 'none'}`);
  assert.ok(rolled >= 20 && reads >= 20, `the race was exercised: ${rolled} roll-overs, ${reads} reads`);
  assert.deepEqual(bad.slice(0, 3), [], `${bad.length} of ${reads} reads went wrong`);
  // and once the writer has stopped, the whole backup reads clean
  const r = openReader(url, d);
  try {
    assert.equal(r.stats().head, versions);
    assert.deepEqual(r.problems(), []);
  } finally {
    r.close();
  }
});
