/**
 * How long the plugin's start-up re-baseline takes for a big database: the snapshot through SQLite's
 * backup API into a temp file beside the backup, then the copy of that file into the backup as a
 * snapshot record (fdatasync), i.e. exactly what src/plugin/startup.ts does before it answers
 * getmanifest. lightningd gives a plugin 120 s for getmanifest and init together
 * (PLUGIN_STARTUP_TIMEOUT, lightningd/plugin.c), so this is the figure to hold against that limit.
 *
 *   node dist/bench/rebaseline.js [--gib 1,4] [--dir DIR] [--keep]
 *
 * --dir: where the database, the temp file and the backup go (benchmark the disk the backup lives on).
 * A floor is measured in the same run: a plain sequential write + fdatasync of the same number of bytes,
 * so the figures can be scaled to a slower disk (an SD card at 10-20 MB/s writes: the re-baseline writes
 * the database twice on the backup disk, the temp copy and the snapshot record).
 */
import Database from 'better-sqlite3';
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, statSync, writeSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createV2 } from '../src/backends/file/v2.js';
import { SegmentedWriter } from '../src/backends/file/segments.js';
import { snapshotDatabase } from '../src/engine/live-db.js';

const { values } = parseArgs({ options: { gib: { type: 'string', default: '1,4' }, dir: { type: 'string' }, keep: { type: 'boolean', default: false } } });
const sizes = values.gib!.split(',').map(Number);
const dir = mkdtempSync(join(values.dir ?? tmpdir(), 'clnvault-bench-rebaseline-'));

/** A rollback-journal database of about `bytes`, made of 64 KiB blobs (lightningd's tables are many small rows; the copy cost is per page either way). */
function makeDb(path: string, bytes: number): void {
  const db = new Database(path);
  db.pragma('journal_mode = DELETE');
  db.pragma('synchronous = OFF');
  db.exec('CREATE TABLE vars (name TEXT PRIMARY KEY, val TEXT, intval INTEGER); INSERT INTO vars VALUES (\'data_version\', NULL, 7);');
  db.exec('CREATE TABLE blobs (id INTEGER PRIMARY KEY, b BLOB)');
  const ins = db.prepare('INSERT INTO blobs (b) VALUES (randomblob(65536))');
  const rows = Math.ceil(bytes / 65536);
  const batch = db.transaction((n: number) => {
    for (let i = 0; i < n; i++) ins.run();
  });
  for (let done = 0; done < rows; done += 1024) batch(Math.min(1024, rows - done));
  db.close();
}

function floorMs(path: string, bytes: number): number {
  const buf = Buffer.alloc(1 << 20, 0xa5);
  const t0 = performance.now();
  const fd = openSync(path, 'w');
  for (let done = 0; done < bytes; done += buf.length) writeSync(fd, buf, 0, Math.min(buf.length, bytes - done));
  fdatasyncSync(fd);
  closeSync(fd);
  const ms = performance.now() - t0;
  rmSync(path);
  return ms;
}

try {
  for (const gib of sizes) {
    const dbPath = join(dir, `db-${gib}.sqlite3`);
    const t0 = performance.now();
    makeDb(dbPath, gib * 2 ** 30);
    const size = statSync(dbPath).size;
    console.log(`${gib} GiB: database generated (${size} bytes) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const floor = floorMs(join(dir, 'floor.bin'), size);
    const backup = join(dir, `backup-${gib}.cv2`);
    createV2(backup);
    const w = SegmentedWriter.open(backup);
    const tmp = join(dir, `.rebaseline-${gib}.sqlite3`);
    const load = loadavg()[0]!.toFixed(1);
    const t1 = performance.now();
    const version = await snapshotDatabase(dbPath, tmp);
    const t2 = performance.now();
    w.appendSnapshotFile(version, tmp);
    const t3 = performance.now();
    w.close();
    rmSync(tmp, { force: true });
    const mbps = (ms: number): string => ((size / 2 ** 20) / (ms / 1000)).toFixed(0);
    console.log(
      `${gib} GiB: re-baseline ${((t3 - t1) / 1000).toFixed(1)} s (SQLite backup API ${((t2 - t1) / 1000).toFixed(1)} s, ` +
        `snapshot record ${((t3 - t2) / 1000).toFixed(1)} s); floor (write + fdatasync of ${size} bytes) ${(floor / 1000).toFixed(1)} s = ${mbps(floor)} MiB/s; load ${load}`,
    );
    // the re-baseline writes the database twice on the backup disk (temp copy + record), reads it twice
    for (const sd of [10, 20]) {
      const est = (2 * size) / (sd * 1e6);
      console.log(`${gib} GiB: estimate for a backup disk writing ${sd} MB/s: >= ${est.toFixed(0)} s (two full writes)`);
    }
    rmSync(backup, { force: true });
    rmSync(dbPath, { force: true });
  }
} finally {
  if (!values.keep) rmSync(dir, { recursive: true, force: true });
  else console.log(`kept ${dir}`);
}
