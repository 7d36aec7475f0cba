/**
 * The simulated node's own wallet database, applied the way lightningd applies it: foreign keys on at open,
 * rollback journal, each transactional batch in BEGIN … COMMIT, PRAGMA-only batches outside any transaction
 * (inside one, `PRAGMA foreign_keys` is silently a no-op, and the cascade it was meant to prevent happens).
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import Database from '../engine/sqlite.js';
import { isPragmaOnly } from '../engine/versions.js';

export const DATA_VERSION_SQL = "SELECT intval FROM vars WHERE name='data_version'";

/** The statement lightningd appends to every transactional batch (`db_data_version_incr`). */
export function dataVersionBump(previous: number): string {
  return `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${previous}`;
}

export class SimDb {
  private db: Database.Database | undefined;

  constructor(readonly path: string) {}

  get isOpen(): boolean {
    return this.db !== undefined;
  }

  open(): void {
    if (this.db) return;
    const db = new Database(this.path);
    db.pragma('foreign_keys = ON');
    this.db = db;
  }

  close(): void {
    if (!this.db) return;
    // Closing with a transaction open rolls it back, as the hot journal of a crashed lightningd would be.
    this.db.close();
    this.db = undefined;
  }

  /** 0 for a DB whose schema does not exist yet (a fresh node before its first batch). */
  dataVersion(): number {
    if (this.db) return readDataVersion(this.db);
    if (!existsSync(this.path)) return 0;
    const db = new Database(this.path, { readonly: true, fileMustExist: true });
    try {
      return readDataVersion(db);
    } finally {
      db.close();
    }
  }

  /**
   * Applies one db_write batch. Throws on an SQL error after rolling back (lightningd would fatal() on it).
   */
  apply(writes: readonly string[]): void {
    const db = this.handle();
    if (isPragmaOnly(writes)) {
      for (const s of writes) db.exec(s);
      return;
    }
    db.exec('BEGIN');
    try {
      for (const s of writes) db.exec(s);
      db.exec('COMMIT');
    } catch (e) {
      if (db.inTransaction) db.exec('ROLLBACK');
      throw e;
    }
  }

  handle(): Database.Database {
    if (!this.db) throw new Error(`sim DB ${this.path} is not open (lightningd is not running)`);
    return this.db;
  }
}

function readDataVersion(db: Database.Database): number {
  const hasVars = db.prepare("SELECT 1 FROM sqlite_master WHERE type='table' AND name='vars'").get();
  if (!hasVars) return 0;
  const row = db.prepare(DATA_VERSION_SQL).get() as { intval: number | bigint | null } | undefined;
  if (!row || row.intval === null) return 0;
  return Number(row.intval);
}

/** `sqlite3 <db> .dump` with the system CLI, the tool the fixtures' dumps were made with. */
export function sqliteDump(dbPath: string, sqlite3 = '/usr/bin/sqlite3'): string {
  return execFileSync(sqlite3, [dbPath, '.dump'], { encoding: 'utf8', maxBuffer: 1 << 30 });
}

export function integrityCheck(dbPath: string): string {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const rows = db.pragma('integrity_check') as Array<{ integrity_check: string }>;
    return rows.map((r) => r.integrity_check).join('\n');
  } finally {
    db.close();
  }
}

export function foreignKeyViolations(dbPath: string): number {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return (db.pragma('foreign_key_check') as unknown[]).length;
  } finally {
    db.close();
  }
}
