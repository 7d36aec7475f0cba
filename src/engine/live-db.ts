import Database from './sqlite.js';
import { existsSync, rmSync } from 'node:fs';
import { serialDiff } from './versions.js';

/**
 * Access to lightningd's own database: reads and copies at moments when lightningd is not writing to it
 * (before the plugin answers getmanifest, or with the node stopped), and takeLiveSnapshot while it runs.
 */

export const DB_NAME = 'lightningd.sqlite3';

/** The committed data_version, or 0 for a database without a vars table yet. Opening read-write lets SQLite roll back a hot journal left by a crash, exactly as lightningd itself would. */
export function readDataVersion(dbPath: string): number {
  const db = new Database(dbPath, { fileMustExist: true, timeout: 5000 });
  try {
    return dataVersionOf(db);
  } finally {
    db.close();
  }
}

function dataVersionOf(db: Database.Database): number {
  const hasVars = db.prepare("SELECT 1 FROM sqlite_master WHERE type='table' AND name='vars'").get();
  if (!hasVars) return 0;
  const row = db.prepare("SELECT intval FROM vars WHERE name='data_version'").get() as { intval: number | bigint } | undefined;
  return row ? Number(row.intval) : 0;
}

/**
 * A consistent copy through SQLite's online backup API (never a raw file copy, which can catch a
 * half-written page). Returns the data_version read from the copy itself, so the two always agree.
 */
export async function snapshotDatabase(dbPath: string, destPath: string): Promise<number> {
  if (existsSync(destPath)) rmSync(destPath);
  const db = new Database(dbPath, { fileMustExist: true, timeout: 5000 });
  try {
    await db.backup(destPath);
  } catch (e) {
    rmSync(destPath, { force: true });
    throw e;
  } finally {
    db.close();
  }
  return finishCopy(destPath);
}

/**
 * A copy of the node's committed database, taken while lightningd may be running: inside a db_write hook
 * (to re-seed a destination) or while no hook is pending (an encrypted clnvault:// backup compacted by its
 * node: socket/async-writer.ts). lightningd waits in the hook with its transaction uncommitted: in
 * rollback-journal mode (its default) the database file holds the committed state and a reader may take a
 * SHARED lock, in WAL mode a reader sees the last commit. VACUUM INTO copies what one read transaction sees,
 * so the copy is consistent; its data_version is read from the copy itself. A transaction that spilled into
 * the file holds an EXCLUSIVE lock: the copy then fails (busy) and the caller tries again later.
 */
export function takeLiveSnapshot(dbPath: string, dest: string): number {
  rmSync(dest, { force: true });
  const db = new Database(dbPath, { readonly: true, fileMustExist: true, timeout: 1000 });
  try {
    db.prepare('VACUUM INTO ?').run(dest);
  } catch (e) {
    rmSync(dest, { force: true });
    throw e;
  } finally {
    db.close();
  }
  return finishCopy(dest);
}

/**
 * A destination's own writes up to `version` (a destination of a set, whose writes queue while it is compacted):
 * 'reached', 'waiting' (they have not all reached it yet), or 'failed'.
 */
export type CatchUp = (version: number) => 'reached' | 'waiting' | 'failed';

/**
 * A copy of the node's database (takeLiveSnapshot, into `dest`) at exactly a destination's head, for the
 * compaction of an encrypted backup whose server has no key. A copy behind the head (lightningd has not
 * committed the newest write yet), or one that failed (a transaction spilled into the file), is taken again;
 * one ahead of it, the destination is brought up to with `catchUp` (without one it is taken again too).
 * Gives up after `waitMs`: the version, or why there is none (`failed`: catching up failed).
 */
export async function copyAtHead(dbPath: string, dest: string, head: () => number, waitMs: number, catchUp?: CatchUp): Promise<{ version: number } | { why: string; failed: boolean }> {
  const deadline = Date.now() + waitMs;
  let why = 'no copy of the database';
  while (Date.now() < deadline) {
    let version: number;
    try {
      version = takeLiveSnapshot(dbPath, dest);
    } catch (e) {
      why = `cannot copy ${dbPath}: ${(e as Error).message}`;
      await sleep(100);
      continue;
    }
    while (catchUp !== undefined && serialDiff(version, head()) > 0 && Date.now() < deadline) {
      const c = catchUp(version);
      if (c === 'failed') return { why: `a queued write failed while it was brought up to version ${version}`, failed: true };
      if (c === 'waiting') await sleep(20);
    }
    if (head() === version) return { version };
    why = `the database ${dbPath} is at version ${version}, the destination at ${head()}`;
    await sleep(100);
  }
  return { why, failed: false };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The copy inherits nothing but pages: a plain rollback-journal file for restores; returns its data_version. */
function finishCopy(path: string): number {
  const copy = new Database(path, { fileMustExist: true });
  try {
    copy.pragma('journal_mode = DELETE');
    return dataVersionOf(copy);
  } finally {
    copy.close();
  }
}
