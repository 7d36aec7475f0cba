import { spawnSync } from 'node:child_process';
import Database from 'better-sqlite3';

/** The CLI that produced every fixture's `.dump.sql` (3.40.1): only its output is byte-comparable. */
export const SQLITE3 = '/usr/bin/sqlite3';

/**
 * `sqlite3 <db> .dump`, exactly as the fixtures were made. `-init /dev/null` keeps a ~/.sqliterc from
 * changing the output; `-readonly` makes a missing file an error instead of a silently created empty DB.
 */
export function dump(dbPath: string): string {
  const r = spawnSync(SQLITE3, ['-init', '/dev/null', '-readonly', dbPath, '.dump'], {
    encoding: 'utf8',
    maxBuffer: 1024 * 1024 * 1024,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (r.error) throw new Error(`${SQLITE3} ${dbPath} .dump: ${r.error.message}`);
  if (r.status !== 0 || r.stderr !== '') {
    throw new Error(`${SQLITE3} ${dbPath} .dump exited ${r.status ?? r.signal}: ${r.stderr.trim()}`);
  }
  return r.stdout;
}

/** `SELECT intval FROM vars WHERE name='data_version'`; throws when the DB or the row is missing. */
export function dataVersion(dbPath: string): number {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare(`SELECT intval FROM vars WHERE name = 'data_version'`).get() as { intval: number } | undefined;
    if (row === undefined) throw new Error(`${dbPath}: vars has no data_version row`);
    return row.intval;
  } finally {
    db.close();
  }
}
