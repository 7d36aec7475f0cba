import { rmSync } from 'node:fs';
import Database from './sqlite.js';

/**
 * A copy of the node's committed database, taken inside a db_write hook (to re-seed a destination) or
 * while no hook is pending (an encrypted clnvault:// backup compacted by its node: socket/async-writer.ts).
 * lightningd waits in the hook with its transaction uncommitted: in rollback-journal mode (its default)
 * the database file holds the committed state and a reader may take a SHARED lock, in WAL mode a reader
 * sees the last commit. VACUUM INTO copies what one read transaction sees, so the copy is consistent;
 * its data_version is read from the copy itself. A transaction that spilled into the file holds an
 * EXCLUSIVE lock: the copy then fails (busy) and is tried again at the next write.
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
  const copy = new Database(dest, { fileMustExist: true });
  try {
    copy.pragma('journal_mode = DELETE');
    const hasVars = copy.prepare("SELECT 1 FROM sqlite_master WHERE type='table' AND name='vars'").get();
    const row = hasVars ? (copy.prepare("SELECT intval FROM vars WHERE name='data_version'").get() as { intval: number | bigint } | undefined) : undefined;
    return row ? Number(row.intval) : 0;
  } finally {
    copy.close();
  }
}
