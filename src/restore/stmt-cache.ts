import Database from 'better-sqlite3';
import { isBoundary, statementShape } from './sqlscan.js';

/**
 * Runs replayed data changes through cached prepared statements instead of compiling every one.
 *
 * lightningd's statements reach the backup with their values expanded inline (sqlite3_expanded_sql), so a
 * node's history is a few hundred statement shapes repeated with different literals, and compiling each
 * statement again was ~35% of a restore's CPU. Here a statement's literals are lifted out (sqlscan.ts), the
 * rest becomes a template compiled once with `?` in their places, and later statements of the same shape
 * bind their literals to it: lightningd's own statements were compiled with parameters in the first place.
 *
 * Why a template gives the same result as the statement's text:
 * - Only INSERT/UPDATE/DELETE/REPLACE are templated, and none naming ORDER, GROUP, OVER, WINDOW, CONFLICT or
 *   RETURNING, the places where a literal is more than a value (sqlscan.ts). No DDL, no PRAGMA.
 * - A lifted literal is an integer of at most 18 digits (bound as an int64 BigInt, never a double), a
 *   string (bound as text, `''` undone) or a blob (bound as a Buffer). A literal and a parameter both have
 *   no affinity and no collation, so comparisons and stored values are the same. Floats, hex integers and
 *   longer integers stay in the template's text.
 * - Where a template cannot stand for its statements (a string in a table-name position, say), compiling
 *   it fails, and that shape is remembered as "run as text".
 * - A later statement matches a template only if it is the template's text with a literal token in each
 *   `?` place: the text between literals is compared exactly and every lifted literal sat between boundary
 *   characters (whitespace or operator characters), so SQLite splits both into the same tokens.
 * Statements the tokenizer does not fully understand, or that fail to match, run as text exactly as
 * before. The cache is emptied after every statement that is not a data change (DDL, PRAGMA, ...).
 */

/**
 * One lifted literal: up to 18 digits, a string (no NUL inside: SQLite's tokenizer stops at one where a bound
 * value would carry it), or a blob of hex digit pairs.
 */
const SLOT = "(\\d{1,18}|'[^'\\0]*(?:''[^'\\0]*)*'|[xX]'(?:[0-9a-fA-F]{2})*')";

/**
 * Templates are bucketed by a hash of their first LONG_KEY characters when the text before their first
 * literal is that long, else of their first SHORT_KEY (every template starts with its verb, 6+ letters).
 * A bucket may hold templates of other prefixes (hash collisions): the match decides.
 */
const LONG_KEY = 16;
const SHORT_KEY = 6;

function prefixHash(s: string, n: number): number {
  let h = n;
  for (let i = 0; i < n; i++) h = (Math.imul(h, 31) + s.charCodeAt(i)) | 0;
  return h;
}

/** Past this many shapes the cache starts over; lightningd has a few hundred. */
const MAX_TEMPLATES = 1024;
/** Per bucket, most recently used first; the tail falls off. */
const MAX_BUCKET = 64;
/** Verbs after which cached statements stay valid (everything else may change the schema or settings). */
const KEEPS_CACHE = new Set(['INSERT', 'UPDATE', 'DELETE', 'REPLACE', 'WITH', 'SELECT', 'VALUES']);

interface Template {
  re: RegExp;
  /** null: the shape runs as text (its template did not compile, or it returns rows) */
  stmt: Database.Statement | null;
}

function escapeRegExp(s: string): string {
  return s.replace(/[\\^$.*+?()[\]{}|/]/g, '\\$&');
}

export interface StatementCacheStats {
  /** statements run through a cached template */
  hits: number;
  /** statements run as text */
  text: number;
  /** templates compiled (again after the cache was emptied) */
  compiled: number;
  /** templates refused because the tokenizer and the matcher disagreed (a bug; each such shape runs as text) */
  internal: number;
}

export class StatementCache {
  private readonly longBuckets = new Map<number, Template[]>();
  private readonly shortBuckets = new Map<number, Template[]>();
  private templates = 0;
  /** blob literals are decoded into this and bound as views; SQLite copies bound values */
  private readonly pool = Buffer.allocUnsafe(64 * 1024);
  private poolAt = 0;
  readonly stats: StatementCacheStats = { hits: 0, text: 0, compiled: 0, internal: 0 };

  constructor(private readonly db: Database.Database) {}

  /**
   * Runs `sql` through a template and returns true, or returns false without running anything: the
   * caller then runs the text itself. A SQLite error from a templated run is thrown as it is.
   */
  run(sql: string): boolean {
    const n = sql.length;
    if (n >= LONG_KEY) {
      const r = this.tryBucket(this.longBuckets.get(prefixHash(sql, LONG_KEY)), sql);
      if (r !== undefined) return r;
    }
    if (n >= SHORT_KEY && this.shortBuckets.size > 0) {
      const r = this.tryBucket(this.shortBuckets.get(prefixHash(sql, SHORT_KEY)), sql);
      if (r !== undefined) return r;
    }
    return this.miss(sql);
  }

  /** Forgets every template (and with them their compiled statements). */
  clear(): void {
    this.longBuckets.clear();
    this.shortBuckets.clear();
    this.templates = 0;
  }

  /** true/false as run(); undefined when no template in the bucket matches */
  private tryBucket(list: Template[] | undefined, sql: string): boolean | undefined {
    if (list === undefined) return undefined;
    for (let i = 0; i < list.length; i++) {
      const t = list[i]!;
      const m = t.re.exec(sql);
      if (m === null) continue;
      if (i > 0) {
        list.splice(i, 1);
        list.unshift(t);
      }
      return this.runTemplate(t, m);
    }
    return undefined;
  }

  private runTemplate(t: Template, m: RegExpExecArray): boolean {
    if (t.stmt === null) {
      this.stats.text++;
      return false;
    }
    const params = this.bindValues(m);
    try {
      t.stmt.run(...params);
    } catch (e) {
      // binding problems (RangeError/TypeError) happen before anything ran: let the text run instead
      if (e instanceof Database.SqliteError) throw e;
      this.stats.text++;
      return false;
    }
    this.stats.hits++;
    return true;
  }

  private bindValues(m: RegExpExecArray): unknown[] {
    const out: unknown[] = new Array(m.length - 1);
    this.poolAt = 0;
    for (let k = 1; k < m.length; k++) {
      const v = m[k]!;
      const c = v.charCodeAt(0);
      if (c === 39) {
        const body = v.slice(1, -1);
        out[k - 1] = body.includes("''") ? body.replaceAll("''", "'") : body;
      } else if (c <= 57) {
        // up to 15 digits are exact in a double; BigInt binds as int64 (a number would bind as REAL)
        out[k - 1] = v.length <= 15 ? BigInt(Number(v)) : BigInt(v);
      } else {
        const hex = v.slice(2, -1);
        const len = hex.length >> 1;
        if (this.poolAt + len <= this.pool.length) {
          this.pool.write(hex, this.poolAt, 'hex');
          out[k - 1] = this.pool.subarray(this.poolAt, this.poolAt + len);
          this.poolAt += len;
        } else {
          out[k - 1] = Buffer.from(hex, 'hex');
        }
      }
    }
    return out;
  }

  private miss(sql: string): boolean {
    const shape = statementShape(sql);
    if (shape.segs === null) {
      if (!KEEPS_CACHE.has(shape.verb)) this.clear();
      this.stats.text++;
      return false;
    }
    const segs = shape.segs;
    const re = new RegExp(`^${segs.map(escapeRegExp).join(SLOT)}$`);
    const m = re.exec(sql);
    if (m === null || m.length !== segs.length || !boundedSlots(segs)) {
      // cannot happen if sqlscan.ts and SLOT agree; if they ever do not, the text runs as it always did
      this.stats.internal++;
      this.stats.text++;
      return false;
    }
    let stmt: Database.Statement | null;
    try {
      stmt = this.db.prepare(segs.join('?'));
      if (stmt.reader) stmt = null;
    } catch {
      stmt = null;
    }
    const t: Template = { re, stmt };
    if (this.templates >= MAX_TEMPLATES) this.clear();
    const long = segs[0]!.length >= LONG_KEY;
    const buckets = long ? this.longBuckets : this.shortBuckets;
    const key = prefixHash(sql, long ? LONG_KEY : SHORT_KEY);
    let list = buckets.get(key);
    if (list === undefined) buckets.set(key, (list = []));
    list.unshift(t);
    if (list.length > MAX_BUCKET) list.pop();
    else this.templates++;
    this.stats.compiled++;
    return this.runTemplate(t, m);
  }
}

/** Every lifted literal sits between boundary characters (the last segment may be empty: the string's end). */
function boundedSlots(segs: readonly string[]): boolean {
  for (let k = 1; k < segs.length; k++) {
    const before = segs[k - 1]!;
    const after = segs[k]!;
    if (before.length === 0 || !isBoundary(before.charCodeAt(before.length - 1))) return false;
    if (after.length === 0 ? k !== segs.length - 1 : !isBoundary(after.charCodeAt(0))) return false;
  }
  return true;
}
