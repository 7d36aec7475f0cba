import Database from './sqlite.js';
import { existsSync, rmSync } from 'node:fs';

/**
 * Access to lightningd's own database, only at moments when lightningd is not writing to it (before
 * the plugin answers getmanifest, or with the node stopped).
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
  const copy = new Database(destPath, { fileMustExist: true });
  try {
    // The copy inherits nothing but pages; make sure it is a plain rollback-journal file for restores.
    copy.pragma('journal_mode = DELETE');
    return dataVersionOf(copy);
  } finally {
    copy.close();
  }
}
