import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { createV2, encodeChangeRecord, recordSeedOf, V2Reader } from '../src/backends/file/v2.js';
import { writeFully } from '../src/backends/file/fsutil.js';
import { restoreBackup } from '../src/restore/restore.js';
import { Writeback, WRITEBACK_EVERY_CHARS } from '../src/restore/writeback.js';
import { invoiceBatch, SCHEMA } from '../bench/restore.js';

const work = mkdtempSync(join(tmpdir(), 'clnvault-writeback-'));
after(() => rmSync(work, { recursive: true, force: true }));

/** Descriptors of this process open on files under `dir`. */
function fdsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (target.startsWith(dir)) out.push(target);
    } catch {
      // closed between the listing and the readlink
    }
  }
  return out;
}

/** Lets the thread pool's fdatasyncs finish and their callbacks (which close the descriptor) run. */
async function settle(dir: string): Promise<void> {
  for (let i = 0; i < 200 && fdsUnder(dir).length > 0; i++) await new Promise((r) => setTimeout(r, 10));
}

test('Writeback: background writebacks while the file is written, then fsync; no descriptor outlives them', async () => {
  const dir = mkdtempSync(join(work, 'unit-'));
  const path = join(dir, 'f');
  writeFileSync(path, '');
  const wb = new Writeback(path, 1000);
  const before = Writeback.started;
  const fd = openSync(path, 'r+');
  for (let i = 0; i < 20; i++) {
    writeFully(fd, Buffer.alloc(4096, i), i * 4096);
    wb.replayed(600);
  }
  closeSync(fd);
  // the count starts over at each writeback: 600, 1200 (start), 600, 1200 (start), ...
  assert.equal(Writeback.started - before, 10);
  assert.equal(fdsUnder(dir).length, 2, 'the fsync descriptor and the background one are open meanwhile');
  wb.syncAndClose();
  wb.start(); // after the final fsync: nothing more starts
  assert.equal(Writeback.started - before, 10);
  await settle(dir);
  assert.deepEqual(fdsUnder(dir), []);
});

test('Writeback: abandon (a failed restore) closes both descriptors, also with writebacks in flight', async () => {
  const dir = mkdtempSync(join(work, 'abandon-'));
  const path = join(dir, 'f');
  writeFileSync(path, Buffer.alloc(1 << 20, 1));
  const wb = new Writeback(path, 1);
  wb.replayed(1);
  wb.replayed(1);
  wb.abandon();
  rmSync(path);
  await settle(dir);
  assert.deepEqual(fdsUnder(dir), []);
});

test('a restore of more than WRITEBACK_EVERY_CHARS of statements writes back during the replay and restores the same rows', async () => {
  const dir = mkdtempSync(join(work, 'restore-'));
  const backup = join(dir, 'b.v2');
  createV2(backup);
  const seed = recordSeedOf(readFileSync(backup));
  const fd = openSync(backup, 'r+');
  let at = readFileSync(backup).length;
  const add = (version: number, stmts: string[]): void => {
    const rec = encodeChangeRecord(version, stmts, undefined, seed);
    writeFully(fd, rec, at);
    at += rec.length;
  };
  add(1, SCHEMA);
  let chars = 0;
  let n = 0;
  while (chars < 2.5 * WRITEBACK_EVERY_CHARS) {
    n++;
    const b = invoiceBatch(n);
    chars += b.reduce((s, x) => s + x.length, 0);
    add(n + 1, b);
  }
  closeSync(fd);
  const before = Writeback.started;
  const reader = V2Reader.open(backup);
  const dest = join(dir, 'lightningd.sqlite3');
  let r;
  try {
    r = restoreBackup(reader, dest);
  } finally {
    reader.close();
  }
  assert.equal(r.head, n + 1);
  // two during the replay (2.5 x the interval), one after the last commit
  assert.equal(Writeback.started - before, 3);
  const db = new Database(dest, { readonly: true });
  try {
    assert.deepEqual(db.prepare('SELECT count(*) AS c, max(id) AS m, sum(updated_index) AS s FROM invoices').get(), { c: n, m: n, s: (n * (n + 1)) / 2 });
    assert.deepEqual(db.prepare(`SELECT intval FROM vars WHERE name = 'data_version'`).get(), { intval: n + 1 });
  } finally {
    db.close();
  }
  await settle(dir);
  assert.deepEqual(fdsUnder(dir), [], 'no descriptor of the restored file (or its scratch name) stays open');
});
