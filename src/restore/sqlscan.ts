/**
 * A tokenizer for one SQL statement string as SQLite's own (tokenize.c) splits it, just far enough to find
 * the literals a statement cache can lift into bound parameters. lightningd sends statements with every
 * value expanded inline (sqlite3_expanded_sql), so consecutive statements of the same kind differ only in
 * their literals, and compiling each one again is most of what a replay costs (see stmt-cache.ts).
 *
 * Anything this tokenizer does not fully understand makes the statement ineligible: it then runs exactly
 * as before, one `exec` of its text, and SQLite's own parser has the last word.
 */

/** Why a statement cannot be run through a cached template; `null` fields mean "it can". */
export interface StatementShape {
  /**
   * The first keyword, upper-cased (INSERT, UPDATE, PRAGMA, ...), or '' when the statement starts with
   * something else or holds no token at all.
   */
  verb: string;
  /**
   * The text between lifted literals: statement = segs[0] + lit1 + segs[1] + ... + litN + segs[N].
   * null when the statement is not eligible; then `why` says what stopped it.
   */
  segs: string[] | null;
  why: string | null;
}

/** The statements a template may stand for: plain data changes. */
const DML = new Set(['INSERT', 'UPDATE', 'DELETE', 'REPLACE']);

/**
 * Keywords near which a literal's value can change what a statement means, not only what it stores:
 * `ORDER BY 2` / `GROUP BY 2` name a column by position (a parameter there is a constant), a window frame
 * wants constants, an upsert's conflict target is matched against partial indexes by its literal text when
 * the statement is compiled, and RETURNING makes a statement produce rows. A statement naming any of them
 * (even as a column name) is left alone.
 */
const REFUSED = new Set(['ORDER', 'GROUP', 'OVER', 'WINDOW', 'RETURNING', 'CONFLICT']);

/** A template whose text (without its literals) is longer than this is not kept: such shapes do not repeat. */
export const MAX_TEMPLATE_SOURCE = 64 * 1024;

/** More literals than this and the statement runs as text (SQLite allows 32766 parameters; bulk rows do not repeat). */
export const MAX_LIFTED = 999;

/** The largest integer SQLite reads as an INTEGER literal; a bigger one is a REAL (and -2^63 a special case). */
export const INT64_MAX_DIGITS = '9223372036854775807';

/**
 * Whether the run of digits [a, b) of `s` is an INTEGER literal for SQLite, i.e. at most INT64_MAX: up to 18
 * digits always, 19 when not above it. (lightningd's random 64-bit ids are printed as signed 19-digit ones.)
 */
export function fitsInt64(s: string, a: number, b: number): boolean {
  const n = b - a;
  if (n < 19) return true;
  return n === 19 && s.slice(a, b) <= INT64_MAX_DIGITS;
}

const C_TAB = 9;
const C_LF = 10;
const C_FF = 12;
const C_CR = 13;
const C_SPACE = 32;
const C_QUOTE = 39; // '
const C_DQUOTE = 34; // "
const C_BACKTICK = 96;
const C_LBRACKET = 91;
const C_MINUS = 45;
const C_SLASH = 47;
const C_STAR = 42;
const C_DOT = 46;
const C_SEMI = 59;
const C_0 = 48;
const C_9 = 57;

function isDigit(c: number): boolean {
  return c >= C_0 && c <= C_9;
}

function isHexDigit(c: number): boolean {
  return (c >= C_0 && c <= C_9) || (c >= 65 && c <= 70) || (c >= 97 && c <= 102);
}

/** SQLite's IdChar(): letters, digits, `_`, `$` and every non-ASCII character. */
export function isIdChar(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= C_0 && c <= C_9) || c === 95 || c === 36 || c >= 0x80;
}

function isIdStart(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === 95 || c >= 0x80;
}

/** SQLite's whitespace class (\v is not in it: SQLite treats it as an illegal character). */
function isSpace(c: number): boolean {
  return c === C_SPACE || c === C_TAB || c === C_LF || c === C_FF || c === C_CR;
}

/**
 * Characters that end any token and cannot join a literal into a longer token: whitespace and operator
 * characters. Only a literal with one of these (or the start/end of the string) on both sides is lifted,
 * which is what lets a cached template be matched by plain text comparison (see stmt-cache.ts).
 * Not here: `.` (1.5, t.x), quotes, `[`, identifier characters, and the parameter sigils `?:@$#`.
 */
export function isBoundary(c: number): boolean {
  if (isSpace(c)) return true;
  switch (c) {
    case 40: // (
    case 41: // )
    case 44: // ,
    case C_SEMI:
    case 61: // =
    case 60: // <
    case 62: // >
    case 33: // !
    case 43: // +
    case C_MINUS:
    case C_STAR:
    case C_SLASH:
    case 37: // %
    case 124: // |
    case 38: // &
    case 126: // ~
      return true;
    default:
      return false;
  }
}

/** End (exclusive) of the quoted token opening at `i` with `q` (doubled `q` is an escape), or -1. */
function quotedEnd(s: string, i: number, q: string): number {
  let j = i + 1;
  for (;;) {
    const k = s.indexOf(q, j);
    if (k < 0) return -1;
    if (s.charCodeAt(k + 1) === q.charCodeAt(0)) {
      j = k + 2;
      continue;
    }
    return k + 1;
  }
}

function ineligible(verb: string, why: string): StatementShape {
  return { verb, segs: null, why };
}

/**
 * Splits `sql` around its literals: integer literals up to INT64_MAX, string literals and blob literals,
 * each with boundary characters on both sides. A statement with any other literal (a float, a hex integer,
 * a longer integer, one glued to a neighbouring token) is not eligible: it runs as text.
 */
export function statementShape(sql: string): StatementShape {
  const n = sql.length;
  let verb: string | null = null;
  const segs: string[] = [];
  let segStart = 0;
  let ended = false; // a `;` ended the first statement: only whitespace, comments and `;` may follow
  let unlifted: string | null = null; // why a literal could not be lifted
  let i = 0;
  const v = (): string => verb ?? '';
  // SQLite's tokenizer stops at a NUL even inside a literal, where a bound value would carry it along
  if (sql.indexOf('\0') >= 0) return ineligible(leadingVerb(sql), 'a NUL character');

  while (i < n) {
    const c = sql.charCodeAt(i);
    if (isSpace(c)) {
      i++;
      continue;
    }
    if (c === C_MINUS && sql.charCodeAt(i + 1) === C_MINUS) {
      const k = sql.indexOf('\n', i + 2);
      i = k < 0 ? n : k + 1;
      continue;
    }
    if (c === C_SLASH && sql.charCodeAt(i + 1) === C_STAR) {
      // SQLite accepts a comment left open at the very end; a template gains nothing from one
      const k = sql.indexOf('*/', i + 2);
      if (k < 0) return ineligible(v(), 'unterminated /* comment');
      i = k + 2;
      continue;
    }
    if (c === C_SEMI) {
      ended = true;
      i++;
      continue;
    }
    // the verb of the first statement says nothing about the next: report none, so the cache is emptied
    if (ended) return ineligible('', 'more than one statement');

    const first = verb === null;
    if (first) verb = '';

    if (isIdStart(c)) {
      if ((c === 120 || c === 88) && sql.charCodeAt(i + 1) === C_QUOTE) {
        // blob literal x'..': an even number of hex digits, or SQLite rejects the statement
        const k = sql.indexOf("'", i + 2);
        if (k < 0) return ineligible(v(), 'unterminated blob literal');
        if ((k - i - 2) % 2 !== 0) return ineligible(v(), 'odd-length blob literal');
        for (let j = i + 2; j < k; j++) if (!isHexDigit(sql.charCodeAt(j))) return ineligible(v(), 'non-hex blob literal');
        if (first) return ineligible('', 'starts with a literal');
        if (lift(sql, i, k + 1)) {
          segs.push(sql.slice(segStart, i));
          segStart = k + 1;
        } else {
          unlifted ??= 'a blob literal glued to another token';
        }
        i = k + 1;
        continue;
      }
      let j = i + 1;
      while (j < n && isIdChar(sql.charCodeAt(j))) j++;
      const word = sql.slice(i, j).toUpperCase();
      if (first) {
        verb = word;
        // the verb decides; a statement that is not a data change needs no further look
        if (!DML.has(word)) return ineligible(word, `a ${word} statement`);
      }
      if (REFUSED.has(word)) return ineligible(v(), `the keyword ${word}`);
      i = j;
      continue;
    }
    if (c === C_QUOTE) {
      const end = quotedEnd(sql, i, "'");
      if (end < 0) return ineligible(v(), 'unterminated string literal');
      if (first) return ineligible('', 'starts with a literal');
      if (lift(sql, i, end)) {
        segs.push(sql.slice(segStart, i));
        segStart = end;
      } else {
        unlifted ??= 'a string literal glued to another token';
      }
      i = end;
      continue;
    }
    if (c === C_DQUOTE || c === C_BACKTICK) {
      const end = quotedEnd(sql, i, c === C_DQUOTE ? '"' : '`');
      if (end < 0) return ineligible(v(), 'unterminated quoted identifier');
      i = end;
      continue;
    }
    if (c === C_LBRACKET) {
      const k = sql.indexOf(']', i + 1);
      if (k < 0) return ineligible(v(), 'unterminated [identifier]');
      i = k + 1;
      continue;
    }
    if (isDigit(c) || (c === C_DOT && isDigit(sql.charCodeAt(i + 1)))) {
      // SQLite: digits, an optional fraction, an optional exponent, then any identifier characters glued on
      // (which make the token illegal). Only a plain run of digits is an integer literal we lift.
      let j = i;
      let plain = c !== C_DOT;
      if (c === C_0 && (sql.charCodeAt(i + 1) === 120 || sql.charCodeAt(i + 1) === 88)) plain = false;
      while (j < n && isDigit(sql.charCodeAt(j))) j++;
      if (sql.charCodeAt(j) === C_DOT) {
        plain = false;
        j++;
        while (j < n && isDigit(sql.charCodeAt(j))) j++;
      }
      const e = sql.charCodeAt(j);
      if (e === 101 || e === 69) {
        const s1 = sql.charCodeAt(j + 1);
        if (isDigit(s1) || ((s1 === 43 || s1 === C_MINUS) && isDigit(sql.charCodeAt(j + 2)))) {
          plain = false;
          j += 2;
          while (j < n && isDigit(sql.charCodeAt(j))) j++;
        }
      }
      while (j < n && isIdChar(sql.charCodeAt(j))) {
        plain = false;
        j++;
      }
      if (first) return ineligible('', 'starts with a literal');
      if (plain && fitsInt64(sql, i, j) && lift(sql, i, j)) {
        segs.push(sql.slice(segStart, i));
        segStart = j;
      } else {
        unlifted ??= plain && !fitsInt64(sql, i, j) ? 'an integer literal beyond int64' : `the number ${sql.slice(i, j)}`;
      }
      i = j;
      continue;
    }
    switch (c) {
      case 63: // ?
      case 58: // :
      case 64: // @
      case 36: // $
      case 35: // #
        return ineligible(v(), 'a bound-parameter placeholder');
      default:
        if (!isBoundary(c) && c !== C_DOT) return ineligible(v(), `the character ${JSON.stringify(sql[i])}`);
        i++;
    }
  }
  if (verb === null || verb === '') return ineligible('', 'no leading keyword');
  // a template holding a value would only ever match statements with that value: one per statement, each
  // crowding the bucket its prefix shares with the useful ones
  if (unlifted !== null) return ineligible(verb, unlifted);
  segs.push(sql.slice(segStart));
  if (segs.length - 1 > MAX_LIFTED) return ineligible(verb, 'too many literals');
  let textLength = 0;
  for (const seg of segs) textLength += seg.length;
  if (textLength > MAX_TEMPLATE_SOURCE) return ineligible(verb, 'too long');
  return { verb, segs, why: null };
}

/** A literal at [a, b) is lifted only with boundary characters (or the end of the string) on both sides. */
function lift(sql: string, a: number, b: number): boolean {
  if (a === 0 || !isBoundary(sql.charCodeAt(a - 1))) return false;
  return b === sql.length || isBoundary(sql.charCodeAt(b));
}

const LEADING_WORD = /^(?:\s|--[^\n]*(?:\n|$)|\/\*[\s\S]*?\*\/)*([A-Za-z_]+)/;

/** The first keyword of `sql` upper-cased, or '' (for statements the tokenizer does not walk through). */
export function leadingVerb(sql: string): string {
  const m = LEADING_WORD.exec(sql);
  return m ? m[1]!.toUpperCase() : '';
}
