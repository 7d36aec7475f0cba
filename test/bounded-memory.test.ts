import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { closeSync, openSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { createV2, encodeChangeRecord } from '../src/backends/file/v2.js';
import { V1_ENTRY_HEADER_SIZE, V1_HEADER_SIZE, writeV1Header } from '../src/backends/file/v1.js';
import { writeFully } from '../src/backends/file/fsutil.js';
import { CLI, scratchArea } from './helpers/cli.js';
import { seedOf } from './helpers/v2-bytes.js';

/**
 * Restore, inspect and a point-in-time restore of a backup with far more entries than a small Node heap
 * can hold an object for, in a child process whose V8 heap is capped (--max-old-space-size). Holding
 * one header object per entry (as restore did before it planned from a streaming walk) needs ~200 bytes
 * of heap per entry: ~80 MiB here, against a 24 MiB cap.
 */
const ENTRIES = 400_000;
const HEAP_MIB = 24;

const area = scratchArea('clnvault-bounded-');
after(() => area.cleanup());

function statementsOf(i: number): string[] {
  return i === 0 ? ['CREATE TABLE t (x INTEGER)'] : [`INSERT INTO t VALUES (${i})`];
}

/** Written in large sequential writes (no per-entry fsync: that tests nothing here). */
function writeEntries(path: string, startAt: number, encode: (i: number) => Buffer): void {
  const fd = openSync(path, 'r+');
  try {
    let at = startAt;
    let chunk: Buffer[] = [];
    let bytes = 0;
    const flush = (): void => {
      const b = Buffer.concat(chunk, bytes);
      writeFully(fd, b, at);
      at += b.length;
      chunk = [];
      bytes = 0;
    };
    for (let i = 0; i < ENTRIES; i++) {
      const rec = encode(i);
      chunk.push(rec);
      bytes += rec.length;
      if (bytes >= 4 << 20) flush();
    }
    flush();
  } finally {
    closeSync(fd);
  }
}

function makeV2(dir: string): string {
  const path = join(dir, 'big.v2');
  createV2(path);
  const seed = seedOf(path);
  writeEntries(path, statSync(path).size, (i) => encodeChangeRecord(i + 1, statementsOf(i), undefined, seed));
  return path;
}

function makeV1(dir: string): string {
  const path = join(dir, 'big.dbak');
  closeSync(openSync(path, 'w'));
  writeEntries(path, V1_HEADER_SIZE, (i) => {
    const payload = Buffer.from(statementsOf(i).join('\0'), 'utf8');
    const b = Buffer.allocUnsafe(V1_ENTRY_HEADER_SIZE + payload.length);
    b.writeUInt32BE(payload.length, 0);
    b.writeUInt32BE(i + 1, 4);
    b.writeUInt8(1, 8);
    payload.copy(b, V1_ENTRY_HEADER_SIZE);
    return b;
  });
  const fd = openSync(path, 'r+');
  writeFully(fd, writeV1Header({ version: ENTRIES, offsets0: statSync(path).size, prevVersion: ENTRIES - 1, offsets1: 0, versionCount: ENTRIES }), 0);
  closeSync(fd);
  return path;
}

function runCapped(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [`--max-old-space-size=${HEAP_MIB}`, CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr: stderr.slice(-2000) }));
  });
}

function count(db: string): number {
  const d = new Database(db, { readonly: true });
  try {
    return (d.prepare('SELECT count(*) AS n FROM t').get() as { n: number }).n;
  } finally {
    d.close();
  }
}

for (const format of ['v2', 'v1'] as const) {
  test(`${format}: restore, inspect and --to-version of ${ENTRIES.toLocaleString('en-US')} entries under a ${HEAP_MIB} MiB heap`, async () => {
    const dir = area.dir();
    const backup = format === 'v2' ? makeV2(dir) : makeV1(dir);
    const url = `file://${backup}`;

    const r = await runCapped(['restore', '--json', url, join(dir, 'full.sqlite3')]);
    assert.equal(r.code, 0, `restore under a ${HEAP_MIB} MiB heap: exit ${r.code}\n${r.stderr}`);
    const res = JSON.parse(r.stdout) as { head: number; applied: number; statements: number };
    assert.equal(res.head, ENTRIES);
    assert.equal(res.applied, ENTRIES);
    assert.equal(count(join(dir, 'full.sqlite3')), ENTRIES - 1);

    const at = ENTRIES - 1000;
    const p = await runCapped(['restore', '--json', '--to-version', String(at), url, join(dir, 'at.sqlite3')]);
    assert.equal(p.code, 0, `--to-version under a ${HEAP_MIB} MiB heap: exit ${p.code}\n${p.stderr}`);
    assert.equal((JSON.parse(p.stdout) as { head: number }).head, at);
    assert.equal(count(join(dir, 'at.sqlite3')), at - 1);

    const i = await runCapped(['inspect', '--json', url]);
    assert.equal(i.code, 0, `inspect under a ${HEAP_MIB} MiB heap: exit ${i.code}\n${i.stderr}`);
    const rep = JSON.parse(i.stdout) as { entries: number; entriesChecked: number; head: number; versionRange: { from: number; to: number } };
    assert.equal(rep.entries, ENTRIES);
    assert.equal(rep.entriesChecked, ENTRIES);
    assert.deepEqual(rep.versionRange, { from: 1, to: ENTRIES });
  });
}

/**
 * Compaction reads the backup as a stream too: `clnvault compact` of the same backups under the same heap
 * cap (which also caps its worker thread: --max-old-space-size overrides resourceLimits). Then the
 * compacted backup must restore to the same database.
 */
for (const format of ['v2', 'v1'] as const) {
  test(`${format}: clnvault compact of ${ENTRIES.toLocaleString('en-US')} entries under a ${HEAP_MIB} MiB heap`, async () => {
    const dir = area.dir();
    const backup = format === 'v2' ? makeV2(dir) : makeV1(dir);
    const url = `file://${backup}`;
    const c = await runCapped(['compact', '--json', '--history', '0', url]);
    assert.equal(c.code, 0, `compact under a ${HEAP_MIB} MiB heap: exit ${c.code}\n${c.stderr}`);
    const res = JSON.parse(c.stdout) as { result: string; before: { version_count: number }; after: { version_count: number } };
    assert.equal(res.result, 'compacted');
    assert.equal(res.before.version_count, ENTRIES);
    assert.ok(res.after.version_count < 10, `compacted to ${res.after.version_count} entries`);
    const r = await runCapped(['restore', '--json', url, join(dir, 'compacted.sqlite3')]);
    assert.equal(r.code, 0, `restore of the compacted backup: exit ${r.code}\n${r.stderr}`);
    assert.equal((JSON.parse(r.stdout) as { head: number }).head, ENTRIES);
    assert.equal(count(join(dir, 'compacted.sqlite3')), ENTRIES - 1);
  });
}
