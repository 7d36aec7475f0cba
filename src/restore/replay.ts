import type Database from 'better-sqlite3';
import type { ChangeEntry } from '../engine/entries.js';
import { rewriteStatement } from './rewrite.js';
import { StatementCache, type StatementCacheStats } from './stmt-cache.js';

const PRAGMA_RE = /^\s*PRAGMA\b/i;

/** Most statements start with a keyword letter, so the regex only runs for `P`/`p` or leading whitespace. */
export function isPragmaStatement(s: string): boolean {
  const c = s.charCodeAt(0);
  if (c === 80 || c === 112 || c <= 32) return PRAGMA_RE.test(s);
  return false;
}

/** A statement that SQLite rejected, with enough context to find it in the backup. */
export class ReplayError extends Error {
  constructor(
    message: string,
    readonly version: number,
    readonly offset: number,
    readonly statementIndex: number,
    readonly statement: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ReplayError';
  }
}

/**
 * Bounds one SQLite transaction. Committing rarely is what makes replay fast (the reference went from
 * ~10 to >1000 entries/s with a single commit, PR #286); committing at all keeps the journal and the
 * dirty page cache from growing with the backup.
 */
const COMMIT_EVERY_CHARS = 32 * 1024 * 1024;
const COMMIT_EVERY_ENTRIES = 100_000;

export interface ReplayerOptions {
  /**
   * Run data changes through cached prepared statements (stmt-cache.ts). Default true; false runs every
   * statement as text, one exec each (what the cache is tested against).
   */
  statementCache?: boolean;
}

/**
 * Applies change entries to an open database, many entries per transaction, except that every PRAGMA runs
 * outside a transaction: lightningd runs `PRAGMA foreign_keys = OFF` before a table rebuild outside its
 * transaction, and inside one SQLite ignores it, so the rebuild's DROP TABLE would cascade-delete rows the
 * node kept (reference defect D11).
 */
export class Replayer {
  private inTx = false;
  private charsInTx = 0;
  private entriesInTx = 0;
  private readonly cache: StatementCache | null;
  statements = 0;
  chars = 0;

  constructor(
    private readonly db: Database.Database,
    opts: ReplayerOptions = {},
  ) {
    this.cache = opts.statementCache === false ? null : new StatementCache(db);
  }

  /** How the statements ran (null without the cache). */
  get cacheStats(): StatementCacheStats | null {
    return this.cache?.stats ?? null;
  }

  apply(entry: ChangeEntry): void {
    const stmts = entry.statements;
    let hasPragma = false;
    for (let k = 0; k < stmts.length; k++) {
      if (isPragmaStatement(stmts[k]!)) {
        hasPragma = true;
        break;
      }
    }
    // One statement at a time rather than one exec of the joined batch: joining measured no faster (first
    // ~55-65k invoice-shaped entries/s both ways; later -1.6% instructions with 16 statements per exec,
    // while compiling them stayed ~35% of the CPU, which the statement cache removes), and per statement a
    // failure names its statement, and a stray unterminated `/*` cannot swallow the statements after it.
    if (!hasPragma && !this.inTx) this.begin();
    for (let k = 0; k < stmts.length; k++) {
      const s = stmts[k]!;
      if (hasPragma && isPragmaStatement(s)) {
        if (this.inTx) this.commit();
        this.run(entry, k, s);
        continue;
      }
      if (!this.inTx) this.begin();
      this.run(entry, k, rewriteStatement(s));
      this.chars += s.length;
      this.charsInTx += s.length;
    }
    this.statements += stmts.length;
    this.entriesInTx++;
    if (this.inTx && (this.charsInTx >= COMMIT_EVERY_CHARS || this.entriesInTx >= COMMIT_EVERY_ENTRIES)) this.commit();
  }

  /** Commits whatever is pending. */
  finish(): void {
    if (this.inTx) this.commit();
  }

  /** Leaves the connection without an open transaction after a failure (the file is discarded anyway). */
  abandon(): void {
    if (this.inTx && this.db.inTransaction) {
      try {
        this.db.exec('ROLLBACK');
      } catch {
        // the caller deletes the file; a failed rollback changes nothing
      }
    }
    this.inTx = false;
  }

  private run(entry: ChangeEntry, index: number, sql: string): void {
    try {
      if (this.cache === null || !this.cache.run(sql)) this.db.exec(sql);
    } catch (e) {
      const excerpt = sql.length > 200 ? `${sql.slice(0, 200)}…` : sql;
      throw new ReplayError(
        `version ${entry.version} at offset ${entry.offset}, statement ${index + 1} of ${entry.statements.length}: ` +
          `${(e as Error).message}; the statement: ${excerpt}`,
        entry.version,
        entry.offset,
        index,
        sql,
        { cause: e },
      );
    }
  }

  private begin(): void {
    this.db.exec('BEGIN');
    this.inTx = true;
    this.charsInTx = 0;
    this.entriesInTx = 0;
  }

  private commit(): void {
    this.db.exec('COMMIT');
    this.inTx = false;
    this.charsInTx = 0;
    this.entriesInTx = 0;
  }
}
