import { closeSync, openSync, readSync } from 'node:fs';
import type { AsyncBackupWriter, BackupWriter } from '../backends/backend.js';
import Database from '../engine/sqlite.js';

/**
 * The re-baseline taken inside the first db_write hook instead of before the getmanifest answer.
 *
 * Why: lightningd gives a plugin 120 s to answer getmanifest and init (PLUGIN_STARTUP_TIMEOUT) and kills
 * it, and exits, when it does not; a snapshot of a multi-GB database to a slow disk takes longer
 * (bench/README.md, "Start-up re-baseline"). A hook call has no timer: lightningd waits for the answer.
 *
 * Why it is safe: lightningd calls the hook inside its write transaction, before COMMIT. In rollback-
 * journal mode (lightningd's default) its connection then holds a RESERVED lock and keeps its changes in
 * its page cache and journal; the database file itself still holds exactly the committed state, and
 * another connection may take a SHARED lock and read it. While that SHARED lock is held no connection can
 * write the file (writing needs EXCLUSIVE), so the file's bytes are a consistent copy of the committed
 * database for as long as the copy takes; lightningd, blocked in the hook, cannot even try to commit. If
 * lightningd's transaction outgrew its page cache, it spilled pages into the file under an EXCLUSIVE lock:
 * then the SHARED lock cannot be had, the re-baseline fails and the write is refused, so lightningd stops
 * without committing (the next start tries again). WAL databases are not handled here (the file alone is
 * not the database): the start-up path snapshots those before getmanifest, as before.
 */

export interface DeferredRebaseline {
  dbPath: string;
  /** the backup's head and the node's data_version as seen at start-up */
  from: number;
  node: number;
}

/** True when the SQLite file at `path` is in WAL mode (file header bytes 18 and 19 are both 2). */
export function isWalDatabase(path: string): boolean {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(2);
    return readSync(fd, b, 0, 2, 18) === 2 && b[0] === 2 && b[1] === 2;
  } finally {
    closeSync(fd);
  }
}

/**
 * Stores the committed state of `r.dbPath` in the backup as a snapshot, holding a SHARED lock for the
 * whole copy; returns its data_version. Throws (and stores nothing) when the lock cannot be had.
 */
export function rebaselineInHook(writer: BackupWriter, r: DeferredRebaseline): number {
  const { db, version } = lockCommitted(r);
  try {
    writer.appendSnapshotFile(version, r.dbPath);
    db.exec('COMMIT');
    return version;
  } finally {
    db.close();
  }
}

/**
 * rebaselineInHook for a writer driven from the event loop: the SHARED lock is held across the await just
 * the same (nothing else in the plugin touches this connection, and lightningd waits in the hook).
 */
export async function rebaselineInHookAsync(writer: BackupWriter | AsyncBackupWriter, r: DeferredRebaseline): Promise<number> {
  const { db, version } = lockCommitted(r);
  try {
    await writer.appendSnapshotFile(version, r.dbPath);
    db.exec('COMMIT');
    return version;
  } finally {
    db.close();
  }
}

/** Opens the node's database and takes the SHARED lock (held until COMMIT); its committed data_version. */
function lockCommitted(r: DeferredRebaseline): { db: InstanceType<typeof Database>; version: number } {
  // short busy timeout: a lock held by lightningd's spilled transaction is not released while it waits for us
  const db = new Database(r.dbPath, { readonly: true, fileMustExist: true, timeout: 2000 });
  try {
    const mode = String(db.pragma('journal_mode', { simple: true }));
    if (mode.toLowerCase() === 'wal') throw new Error(`${r.dbPath} is in WAL mode: the file alone is not the database`);
    db.exec('BEGIN');
    // the first read takes the SHARED lock, held until COMMIT
    const hasVars = db.prepare("SELECT 1 FROM sqlite_master WHERE type='table' AND name='vars'").get();
    const row = hasVars ? (db.prepare("SELECT intval FROM vars WHERE name='data_version'").get() as { intval: number | bigint } | undefined) : undefined;
    return { db, version: row ? Number(row.intval) : 0 };
  } catch (e) {
    db.close();
    throw e;
  }
}
