import Database from 'better-sqlite3';
import { fitsInt64, isBoundary, statementShape } from './sqlscan.js';

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
 * - A lifted literal is an integer up to INT64_MAX (bound as an int64 BigInt, never a double), a
 *   string (bound as text, `''` undone) or a blob (bound as a Buffer). A literal and a parameter both have
 *   no affinity and no collation, so comparisons and stored values are the same. A statement with any other
 *   literal (a float, a hex integer, one beyond int64) runs as text.
 * - Where a template cannot stand for its statements (a string in a table-name position, say), compiling
 *   it fails, and that shape is remembered as "run as text".
 * - A later statement matches a template only if it is the template's text with a literal token in each
 *   `?` place: the text between literals is compared exactly and every lifted literal sat between boundary
 *   characters (whitespace or operator characters), so SQLite splits both into the same tokens.
 * Statements the tokenizer does not fully understand, or that fail to match, run as text exactly as
 * before. The cache is emptied after every statement that is not a data change (DDL, PRAGMA, ...).
 */

/**
 * Templates are bucketed by a hash of the text before the first quote or digit (at most KEY_MAX
 * characters). A statement a template matches has the template's text up to its first literal and a
 * literal there, which starts with a digit, a quote or `x'`: it hashes as the statement the template was
 * made from did. That text tells apart the shapes a fixed-length prefix did not (a node's many
 * `UPDATE channels SET ...` shapes shared the bucket of their first 16 characters, each matched in turn).
 * A bucket may still hold several templates (a common prefix, hash collisions): the match decides.
 */
const KEY_MAX = 48;

function keyOf(s: string): number {
  const n = s.length < KEY_MAX ? s.length : KEY_MAX;
  let h = 0;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 39 || (c >= 48 && c <= 57)) break;
    h = (Math.imul(h, 31) + c) | 0;
  }
  return h;
}

/** Past this many shapes the cache starts over; lightningd has a few hundred. */
const MAX_TEMPLATES = 1024;
/** Per bucket, most recently used first; the tail falls off. */
const MAX_BUCKET = 64;
/** Verbs after which cached statements stay valid (everything else may change the schema or settings). */
const KEEPS_CACHE = new Set(['INSERT', 'UPDATE', 'DELETE', 'REPLACE', 'WITH', 'SELECT', 'VALUES']);

interface Template {
  /** the text around the literals: a statement is segs[0] + literal + segs[1] + ... + literal + segs[n] */
  segs: string[];
  /** null: the shape runs as text (its template did not compile, or it returns rows) */
  stmt: Database.Statement | null;
  /**
   * The values of the last match, and per literal the buffer its last blob was decoded into (reused while
   * the length stays: hashes, keys). Reusing both is safe because run() binds with SQLITE_TRANSIENT: SQLite
   * has its own copy before the next statement overwrites them.
   */
  params: unknown[];
  blobs: (Buffer | undefined)[];
}

/** Blobs up to this size keep their buffer in the template; bigger ones get a fresh one each time. */
const MAX_KEPT_BLOB = 4096;

/** Hex digit values by character code, -1 for everything else. */
const HEX_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < 10; i++) HEX_VALUE[48 + i] = i;
for (let i = 0; i < 6; i++) {
  HEX_VALUE[65 + i] = 10 + i;
  HEX_VALUE[97 + i] = 10 + i;
}

/** Small integer literals (states, flags, counts) bind these instead of a new BigInt each (BigInts are immutable). */
const SMALL_BIGINTS: readonly bigint[] = Array.from({ length: 1024 }, (_, i) => BigInt(i));

/** Below this length a segment is compared char by char (a short substring is a copy); above, as a string. */
const SHORT_SEGMENT = 16;

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
  private readonly buckets = new Map<number, Template[]>();
  private templates = 0;
  readonly stats: StatementCacheStats = { hits: 0, text: 0, compiled: 0, internal: 0 };

  constructor(private readonly db: Database.Database) {}

  /**
   * Runs `sql` through a template and returns true, or returns false without running anything: the
   * caller then runs the text itself. A SQLite error from a templated run is thrown as it is.
   */
  run(sql: string): boolean {
    // SQLite's tokenizer stops at a NUL even inside a literal, where a bound value would carry it along:
    // such a statement runs as text (and fails as it always did). statementShape refuses them, so no
    // template holds a NUL, and match() refuses one in a string literal (the only other place it could be).
    const r = this.tryBucket(this.buckets.get(keyOf(sql)), sql);
    return r !== undefined ? r : this.miss(sql);
  }

  /** Forgets every template (and with them their compiled statements). */
  clear(): void {
    this.buckets.clear();
    this.templates = 0;
  }

  /** true/false as run(); undefined when no template in the bucket matches */
  private tryBucket(list: Template[] | undefined, sql: string): boolean | undefined {
    if (list === undefined) return undefined;
    for (let i = 0; i < list.length; i++) {
      const t = list[i]!;
      const params = this.match(sql, t);
      if (params === null) continue;
      if (i > 0) {
        list.splice(i, 1);
        list.unshift(t);
      }
      return this.runTemplate(t, params);
    }
    return undefined;
  }

  private runTemplate(t: Template, params: unknown[]): boolean {
    if (t.stmt === null) {
      this.stats.text++;
      return false;
    }
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

  /**
   * The literals of `sql` as values to bind (in t.params), if `sql` is the template's text with one literal
   * token in each gap; else null. A literal is what sqlscan.ts lifts: digits up to INT64_MAX, a string
   * (`''` inside, no NUL), or x'..' with hex digit pairs. The text after each is compared
   * exactly; it starts with a boundary character (or is the end), so a literal read here ends exactly where
   * SQLite's tokenizer would end it.
   */
  private match(sql: string, t: Template): unknown[] | null {
    const segs = t.segs;
    const n = sql.length;
    if (!segmentAt(sql, 0, segs[0]!)) return null;
    let pos = segs[0]!.length;
    const out = t.params;
    for (let k = 1; k < segs.length; k++) {
      const c = sql.charCodeAt(pos);
      let end: number;
      if (c === 39) {
        // a string: up to the first quote not doubled
        let esc = false;
        let j = pos + 1;
        for (;;) {
          const q = sql.indexOf("'", j);
          if (q < 0) return null;
          if (sql.charCodeAt(q + 1) === 39) {
            esc = true;
            j = q + 2;
            continue;
          }
          end = q + 1;
          break;
        }
        let body = sql.slice(pos + 1, end - 1);
        if (body.indexOf('\0') >= 0) return null;
        if (esc) body = body.replaceAll("''", "'");
        out[k - 1] = body;
      } else if (c >= 48 && c <= 57) {
        let j = pos;
        let x = 0;
        while (j < n) {
          const d = sql.charCodeAt(j);
          if (d < 48 || d > 57) break;
          x = x * 10 + (d - 48);
          j++;
        }
        // bound as an int64 BigInt (a number would bind as REAL); up to 15 digits are exact in a double
        if (j - pos <= 15) out[k - 1] = x < SMALL_BIGINTS.length ? SMALL_BIGINTS[x] : BigInt(x);
        else if (fitsInt64(sql, pos, j)) out[k - 1] = BigInt(sql.slice(pos, j));
        else return null;
        end = j;
      } else if ((c === 120 || c === 88) && sql.charCodeAt(pos + 1) === 39) {
        const q = sql.indexOf("'", pos + 2);
        if (q < 0) return null;
        const hexLen = q - pos - 2;
        if (hexLen % 2 !== 0) return null;
        const len = hexLen / 2;
        let blob = t.blobs[k];
        if (blob === undefined || blob.length !== len) {
          blob = Buffer.allocUnsafe(len);
          t.blobs[k] = len <= MAX_KEPT_BLOB ? blob : undefined;
        }
        for (let x = 0, p = pos + 2; x < len; x++, p += 2) {
          const hi = sql.charCodeAt(p);
          const lo = sql.charCodeAt(p + 1);
          const h = hi < 128 ? HEX_VALUE[hi]! : -1;
          const l = lo < 128 ? HEX_VALUE[lo]! : -1;
          if ((h | l) < 0) return null;
          blob[x] = (h << 4) | l;
        }
        out[k - 1] = blob;
        end = q + 1;
      } else {
        return null;
      }
      const seg = segs[k]!;
      if (!segmentAt(sql, end, seg)) return null;
      pos = end + seg.length;
    }
    return pos === n ? out : null;
  }

  private miss(sql: string): boolean {
    const shape = statementShape(sql);
    if (shape.segs === null) {
      if (!KEEPS_CACHE.has(shape.verb)) this.clear();
      this.stats.text++;
      return false;
    }
    const segs = shape.segs;
    const t: Template = {
      segs,
      stmt: null,
      params: new Array<unknown>(segs.length - 1).fill(undefined),
      blobs: new Array<Buffer | undefined>(segs.length).fill(undefined),
    };
    const params = boundedSlots(segs) ? this.match(sql, t) : null;
    if (params === null) {
      // cannot happen if sqlscan.ts and match() agree; if they ever do not, the text runs as it always did
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
    t.stmt = stmt;
    if (this.templates >= MAX_TEMPLATES) this.clear();
    const key = keyOf(sql);
    let list = this.buckets.get(key);
    if (list === undefined) this.buckets.set(key, (list = []));
    list.unshift(t);
    if (list.length > MAX_BUCKET) list.pop();
    else this.templates++;
    this.stats.compiled++;
    return this.runTemplate(t, params);
  }
}

/** Whether `sql` holds `seg` at `at`. */
function segmentAt(sql: string, at: number, seg: string): boolean {
  const len = seg.length;
  if (at + len > sql.length) return false;
  if (len < SHORT_SEGMENT) {
    for (let j = 0; j < len; j++) if (sql.charCodeAt(at + j) !== seg.charCodeAt(j)) return false;
    return true;
  }
  return sql.substring(at, at + len) === seg;
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
