import Database from '../../engine/sqlite.js';
import { BackupError } from '../../engine/entries.js';

/**
 * Only one process may write to a backup. Node has no flock(), so this borrows SQLite's own
 * fcntl() locking: a tiny side file `<backup>.writer` held in an EXCLUSIVE transaction for the life of
 * the writer. The kernel releases it when the process dies (SIGKILL included), so a crash never leaves
 * a stale lock behind, and it works on NFS mounts that support POSIX locks.
 */
export class WriterLock {
  private db: Database.Database | null;

  private constructor(
    db: Database.Database,
    readonly lockPath: string,
  ) {
    this.db = db;
  }

  static acquire(backupPath: string): WriterLock {
    const lockPath = `${backupPath}.writer`;
    let db: Database.Database;
    try {
      db = new Database(lockPath, { timeout: 0 });
    } catch (e) {
      throw new BackupError(`cannot create the writer lock ${lockPath}: ${(e as Error).message}`, backupPath);
    }
    try {
      db.pragma('journal_mode = DELETE');
      db.pragma('locking_mode = EXCLUSIVE');
      db.exec('BEGIN EXCLUSIVE');
      db.exec('CREATE TABLE IF NOT EXISTS holder (pid INTEGER)');
    } catch (e) {
      db.close();
      const code = (e as { code?: string }).code ?? '';
      if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
        throw new BackupError(
          `${backupPath} is already open for writing by another clnvault process (the plugin of a running ` +
            `lightningd, or 'clnvault init/compact'). Only one writer is allowed; stop the other one first.`,
          backupPath,
        );
      }
      throw new BackupError(`cannot take the writer lock ${lockPath}: ${(e as Error).message}`, backupPath);
    }
    return new WriterLock(db, lockPath);
  }

  release(): void {
    if (!this.db) return;
    try {
      this.db.exec('ROLLBACK');
    } catch {
      // the lock goes away with the connection anyway
    }
    this.db.close();
    this.db = null;
  }
}
