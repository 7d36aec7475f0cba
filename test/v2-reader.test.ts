/**
 * V2Reader.read goes through a read-ahead window (1 MiB, records up to 256 KiB) and reads bigger records
 * on their own. These tests pin down that the window never changes what a read returns, whatever the
 * order of reads, and that damage or truncation after the scan is still reported.
 */
import { listHeaders } from '../src/backends/backend.js';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readSync, rmSync, truncateSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BackupError, type ChangeEntry, type EntryHeader } from '../src/engine/entries.js';
import { RECORD_OVERHEAD, V2Reader, createV2, encodeChangeRecord, recordSeedOf } from '../src/backends/file/v2.js';

const work = mkdtempSync(join(tmpdir(), 'clnvault-v2-reader-'));
test.after(() => rmSync(work, { recursive: true, force: true }));
let seq = 0;

/** Deterministic PRNG, so a failure replays the same order. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Statement payload sizes chosen around the reader's limits: tiny, ~1 KB, just under and over the
 * 256 KiB read-ahead limit, and enough small records in between that the 1 MiB window refills often
 * and records straddle its edges.
 */
function batches(): string[][] {
  const sizes: number[] = [];
  const r = rng(7);
  for (let i = 0; i < 3000; i++) sizes.push(Math.floor(r() * 2000) + 1);
  sizes.splice(10, 0, 256 * 1024 - RECORD_OVERHEAD - 100, 256 * 1024 + 1000, 700 * 1024);
  sizes.splice(1500, 0, 1024 * 1024 - 200, 2 * 1024 * 1024 + 17);
  sizes.splice(2999, 0, 300 * 1024);
  return sizes.map((n, i) => [`INSERT INTO t VALUES (${i}, '${'é'.repeat(Math.floor(n / 4))}${'x'.repeat(n % 4)}')`, `-- ${i} ✓`]);
}

function writeBackup(all: string[][]): string {
  const path = join(work, `b${++seq}.v2`);
  createV2(path);
  const fd = openSync(path, 'r+');
  let at = 64;
  const header = Buffer.alloc(64);
  readSync(fd, header, 0, 64, 0);
  const seed = recordSeedOf(header);
  try {
    all.forEach((stmts, i) => {
      const rec = encodeChangeRecord(i + 1, stmts, undefined, seed);
      writeSync(fd, rec, 0, rec.length, at);
      at += rec.length;
    });
  } finally {
    closeSync(fd);
  }
  return path;
}

function readAll(reader: V2Reader, hs: EntryHeader[], order: number[]): Map<number, string[]> {
  const got = new Map<number, string[]>();
  for (const i of order) {
    const e = reader.read(hs[i]!) as ChangeEntry;
    assert.equal(e.kind, 'change');
    assert.equal(e.version, i + 1);
    assert.equal(e.offset, hs[i]!.offset);
    got.set(i, e.statements);
  }
  return got;
}

test('reads return the written statements in file order, reverse order, random order and with re-reads', () => {
  const all = batches();
  const reader = V2Reader.open(writeBackup(all));
  try {
    const hs = listHeaders(reader);
    assert.equal(hs.length, all.length);
    const forward = hs.map((_, i) => i);
    const r = rng(42);
    const shuffled = forward.slice();
    for (let i = shuffled.length - 1; i > 0; i--) {
      const j = Math.floor(r() * (i + 1));
      [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
    }
    // forward with a step back every few records: the window must serve a record behind its start too
    const jittered: number[] = [];
    for (let i = 0; i < hs.length; i++) {
      jittered.push(i);
      if (i % 7 === 6) jittered.push(i - 5);
    }
    for (const order of [forward, forward.slice().reverse(), shuffled, jittered]) {
      const got = readAll(reader, hs, order);
      for (const i of order) assert.deepEqual(got.get(i), all[i], `entry ${i}`);
    }
  } finally {
    reader.close();
  }
});

test('a record damaged after the scan is reported by read, small or large', () => {
  const all = batches();
  const path = writeBackup(all);
  for (const which of [5, 12, 1501]) {
    const reader = V2Reader.open(path);
    try {
      const hs = listHeaders(reader);
      const h = hs[which]!;
      // flip one payload byte of that record only now, after the scan vouched for it
      const fd = openSync(path, 'r+');
      const b = Buffer.alloc(1);
      const at = h.offset + 32 + 10;
      readSync(fd, b, 0, 1, at);
      b[0] = b[0]! ^ 0x20;
      writeSync(fd, b, 0, 1, at);
      try {
        assert.throws(
          () => reader.read(h),
          (e: unknown) => e instanceof BackupError && /changed or was damaged since it was scanned/.test(e.message) && e.offset === h.offset,
        );
      } finally {
        b[0] = b[0]! ^ 0x20;
        writeSync(fd, b, 0, 1, at);
        closeSync(fd);
      }
      // the records around it still read correctly
      assert.deepEqual((reader.read(hs[which - 1]!) as ChangeEntry).statements, all[which - 1]);
      assert.deepEqual((reader.read(hs[which + 1]!) as ChangeEntry).statements, all[which + 1]);
    } finally {
      reader.close();
    }
  }
});

test('a file cut short after the scan: records before the cut read in order, the cut one fails', () => {
  const all = batches();
  const path = writeBackup(all);
  const reader = V2Reader.open(path);
  try {
    const hs = listHeaders(reader);
    const cutIn = 2000;
    truncateSync(path, hs[cutIn]!.offset + 40);
    for (let i = 0; i < cutIn; i++) assert.deepEqual((reader.read(hs[i]!) as ChangeEntry).statements, all[i], `entry ${i}`);
    assert.throws(() => reader.read(hs[cutIn]!), /unexpected end of file/);
  } finally {
    reader.close();
  }
});

test('read after close and read of an offset that holds no record are refused', () => {
  const all = batches().slice(0, 50);
  const reader = V2Reader.open(writeBackup(all));
  const hs = listHeaders(reader);
  assert.throws(
    () => reader.read({ ...hs[3]!, offset: hs[3]!.offset + 1 }),
    (e: unknown) => e instanceof BackupError && /no change record with version 4 at offset/.test(e.message),
  );
  assert.throws(
    () => reader.read({ ...hs[3]!, version: 99 }),
    (e: unknown) => e instanceof BackupError && /no change record with version 99 at offset/.test(e.message),
  );
  assert.deepEqual((reader.read(hs[3]!) as ChangeEntry).statements, all[3]);
  reader.close();
  assert.throws(() => reader.read(hs[4]!), /the reader is closed/);
});
