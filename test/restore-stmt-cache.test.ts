import { listHeaders } from '../src/backends/backend.js';
import { test, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import fc from 'fast-check';
import { createV2, V2Reader, V2Writer } from '../src/backends/file/v2.js';
import { Replayer, ReplayError } from '../src/restore/replay.js';
import { RestoreError, restoreBackup } from '../src/restore/restore.js';
import { statementShape } from '../src/restore/sqlscan.js';
import type { StatementCacheStats } from '../src/restore/stmt-cache.js';
import { dump } from './helpers/sqlite.js';

const FC = { seed: Number(process.env.CLNVAULT_FC_SEED ?? 20261126), numRuns: Number(process.env.CLNVAULT_FC_RUNS ?? 150) };

const work = mkdtempSync(join(tmpdir(), 'clnvault-stmt-cache-'));
after(() => rmSync(work, { recursive: true, force: true }));
let seq = 0;
const freshPath = (name: string): string => join(work, `${++seq}-${name}`);

/** The template a statement becomes, `?` for every lifted literal; null when it runs as text. */
function template(sql: string): string | null {
  const s = statementShape(sql);
  return s.segs === null ? null : s.segs.join('?');
}

// ---------------------------------------------------------------------------------------------------
// 1. The tokenizer: which literals are lifted, and what stays text

describe('statementShape', () => {
  test('an invoice batch statement: every value lifted, the text between kept byte for byte', () => {
    assert.equal(
      template(
        `INSERT INTO invoices (id, state, payment_hash, label, description, features) VALUES ` +
          `(7, 0, x'00ff', 'bench-7', 'it''s; -- not a comment', x'02000000024100');`,
      ),
      'INSERT INTO invoices (id, state, payment_hash, label, description, features) VALUES (?, ?, ?, ?, ?, ?);',
    );
    assert.equal(
      template(`UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 41`),
      'UPDATE vars SET intval = intval + ? WHERE name = ? AND intval = ?',
    );
  });

  test('semicolons, quotes and comment markers inside literals, comments and quoted names are not code', () => {
    assert.equal(template(`INSERT INTO t VALUES ('a;b', 'c''d', '/* x', '--y')`), 'INSERT INTO t VALUES (?, ?, ?, ?)');
    assert.equal(
      template(`UPDATE t SET a = 1 /* it's 5; 'x */ WHERE b = 'q' -- don't 7\n`),
      `UPDATE t SET a = ? /* it's 5; 'x */ WHERE b = ? -- don't 7\n`,
    );
    assert.equal(
      template('INSERT INTO "we""ird;" ([a\'b], `c\'``;`) VALUES (1, 2)'),
      'INSERT INTO "we""ird;" ([a\'b], `c\'``;`) VALUES (?, ?)',
    );
    // a comment that ends the string without a newline, and trailing semicolons
    assert.equal(template(`DELETE FROM t WHERE id = 3; -- 'done`), 'DELETE FROM t WHERE id = ?; -- \'done');
    assert.equal(template(`DELETE FROM t WHERE id = 3;;`), 'DELETE FROM t WHERE id = ?;;');
  });

  test('integers up to int64, strings and blobs between boundary characters are lifted; any other literal keeps the statement as text', () => {
    assert.equal(
      template('UPDATE t SET f = 123456789012345678, g = t1.x, h = 007, i = -9223372036854775807, j = 0123456789012345678'),
      'UPDATE t SET f = ?, g = t1.x, h = ?, i = -?, j = ?',
    );
    assert.equal(template(`UPDATE t SET a=-5,b=x'AbCd',c='s'||'t' WHERE d IN(1,2)`), 'UPDATE t SET a=-?,b=?,c=?||? WHERE d IN(?,?)');
    assert.equal(template('DELETE FROM t'), 'DELETE FROM t');
    // a template holding a value would match only statements with that value
    const why = (sql: string): string | null => statementShape(sql).why;
    assert.equal(why('UPDATE t SET a = 1.5'), 'the number 1.5');
    assert.equal(why('UPDATE t SET a = .5'), 'the number .5');
    assert.equal(why('UPDATE t SET a = 1e3'), 'the number 1e3');
    assert.equal(why('UPDATE t SET a = 0x1F'), 'the number 0x1F');
    // a REAL for SQLite (and -9223372036854775808 an INTEGER only by a special case of its parser)
    assert.equal(why('UPDATE t SET a = 9223372036854775808'), 'an integer literal beyond int64');
    assert.equal(why('UPDATE t SET a = -9223372036854775808'), 'an integer literal beyond int64');
    assert.equal(why('UPDATE t SET a = 00000000000000000001'), 'an integer literal beyond int64');
    // glued to an identifier or another literal: SQLite would not read them as one literal token each
    assert.equal(why('UPDATE t SET a = 5a'), 'the number 5a');
    assert.equal(why('UPDATE t SET b = 1_000'), 'the number 1_000');
    assert.equal(why(`UPDATE t SET c = 'x'y`), 'a string literal glued to another token');
    assert.equal(why(`UPDATE t SET c = b'x'`), 'a string literal glued to another token');
    assert.equal(why(`UPDATE t SET c = -x'00'y`), 'a blob literal glued to another token');
  });

  test('statements the tokenizer does not fully understand, or where a literal is more than a value, run as text', () => {
    const why = (sql: string): string | null => statementShape(sql).why;
    assert.equal(why(`INSERT INTO t VALUES ('abc`), 'unterminated string literal');
    assert.equal(why(`INSERT INTO t VALUES (1) /* open`), 'unterminated /* comment');
    assert.equal(why(`INSERT INTO "t VALUES (1)`), 'unterminated quoted identifier');
    assert.equal(why(`INSERT INTO [t VALUES (1)`), 'unterminated [identifier]');
    assert.equal(why(`INSERT INTO t VALUES (x'abc')`), 'odd-length blob literal');
    assert.equal(why(`INSERT INTO t VALUES (x'zz')`), 'non-hex blob literal');
    assert.equal(why(`INSERT INTO t VALUES ('a\u0000b')`), 'a NUL character');
    for (const p of ['?', '?1', ':v', '@v', '$v']) assert.equal(why(`INSERT INTO t VALUES (${p})`), 'a bound-parameter placeholder');
    assert.equal(why('INSERT INTO t SELECT a FROM u ORDER BY 1'), 'the keyword ORDER');
    assert.equal(why('INSERT INTO t SELECT a FROM u GROUP BY 1'), 'the keyword GROUP');
    assert.equal(why(`INSERT INTO t VALUES (1) RETURNING id`), 'the keyword RETURNING');
    assert.equal(why(`INSERT INTO t VALUES (1) ON CONFLICT (a) WHERE a > 5 DO NOTHING`), 'the keyword CONFLICT');
    assert.equal(why(`INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)`), 'more than one statement');
    assert.equal(statementShape(`INSERT INTO t VALUES (1); DROP TABLE t`).verb, ''); // not "INSERT": empties the cache
    assert.equal(why(`INSERT INTO t VALUES (1 ^ 2)`), 'the character "^"');
    assert.equal(why(`PRAGMA foreign_keys = OFF`), 'a PRAGMA statement');
    assert.equal(why(`CREATE TABLE t (a DEFAULT 5)`), 'a CREATE statement');
    assert.equal(why(`  /* c */ create table t (a)`), 'a CREATE statement');
    assert.equal(statementShape(`  /* c */ create table t (a)`).verb, 'CREATE');
  });
});

// ---------------------------------------------------------------------------------------------------
// 2. The cache against plain exec, on real SQLite files

interface Outcome {
  /** the error message of the first failing statement, or null */
  error: string | null;
  rows: unknown[][];
  stats: StatementCacheStats | null;
}

const SCHEMA = [
  'CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, s TEXT, b BLOB, n, r REAL, num NUMERIC)',
  'CREATE TABLE log (x)',
  'CREATE TRIGGER t_log AFTER UPDATE ON t BEGIN INSERT INTO log VALUES (NEW.n); END',
];

/** Replays `batches` (after SCHEMA) into a fresh file, with or without the cache; every row and type of t and log. */
function replay(batches: string[][], statementCache: boolean): Outcome {
  const path = freshPath(statementCache ? 'cached.sqlite3' : 'plain.sqlite3');
  const db = new Database(path);
  db.pragma('foreign_keys = ON');
  const r = new Replayer(db, { statementCache });
  let error: string | null = null;
  try {
    [SCHEMA, ...batches].forEach((b, i) => r.apply({ kind: 'change', version: i + 1, offset: i * 100, statements: b }));
    r.finish();
  } catch (e) {
    assert.ok(e instanceof ReplayError, String(e));
    error = e.message;
    r.abandon();
  }
  // a failure rolls back the open transaction, which may hold the schema too
  const hasT = db.prepare(`SELECT 1 FROM sqlite_master WHERE name = 't'`).get() !== undefined;
  const q = (sql: string): unknown[][] => (hasT ? (db.prepare(sql).safeIntegers(true).raw(true).all() as unknown[][]) : []);
  const rows = [
    ...q('SELECT id, typeof(i), i, typeof(s), s, typeof(b), b, typeof(n), n, typeof(r), r, typeof(num), num FROM t ORDER BY id'),
    ...q('SELECT rowid, typeof(x), x FROM log ORDER BY rowid'),
  ];
  db.close();
  rmSync(path);
  return { error, rows, stats: r.cacheStats };
}

function assertSameAsExec(batches: string[][]): Outcome & { stats: StatementCacheStats } {
  const cached = replay(batches, true);
  const plain = replay(batches, false);
  assert.equal(cached.error, plain.error);
  assert.deepStrictEqual(cached.rows, plain.rows);
  assert.equal(cached.stats!.internal, 0);
  return { ...cached, stats: cached.stats! };
}

test('values through the cache are stored with the same types and bytes as through exec', () => {
  const batches: string[][] = [];
  const values = [
    `5, '5', x'05', 5, 5, 5`,
    `'5', 5, '5', '5', '5', '5'`,
    `123456789012345678, '', x'', '', 0, '007'`,
    `-9, 'it''s', X'DEADbeef', x'00', -0, ' 12 '`,
    `9223372036854775807, 'é😀\n;--/*', x'ff', 'x', 1, '1e3'`,
    `-9223372036854775807, '', x'', -9223372036854775808, 9223372036854775808, -9223372036854775808`,
    `1000000000000000000, '', x'', 9223372036854775806, -1, 1`,
    `1.5, '1.5', NULL, 1.5, 7, 1.0`,
    `12345678901234567890, 'z', x'00', 12345678901234567890, -1, 0x10`,
    // two blobs of one length in one statement: each literal decodes into its own buffer
    `3, 'two blobs', x'0102', x'0304', 3, 3`,
    // two 40 KiB blobs: bigger than the buffers a template keeps for its blob literals
    `1, 'big', x'${'a5'.repeat(40_000)}', x'${'5a'.repeat(40_000)}', 1, 1`,
  ];
  for (const v of values) batches.push([`INSERT INTO t (i, s, b, n, r, num) VALUES (${v})`]);
  // the same shapes again, so the second round goes through the cached templates
  for (const v of values) batches.push([`INSERT INTO t (i, s, b, n, r, num) VALUES (${v})`]);
  const { stats, error } = assertSameAsExec(batches);
  assert.equal(error, null);
  assert.ok(stats.hits >= 10, `only ${stats.hits} cached runs`);
});

test('expressions, comparisons and affinity give the same results through the cache', () => {
  const batches: string[][] = [
    [`INSERT INTO t (id, i, s, n) VALUES (1, 1, '1', 1), (2, 2, '2', '2'), (3, 3, 'x', x'33')`],
    [`UPDATE t SET n = n + 1 WHERE s = 1`, `UPDATE t SET n = n + 1 WHERE s = 2`], // TEXT column against an integer literal
    [`UPDATE t SET n = n || 'a' WHERE i = '3'`, `UPDATE t SET n = n || 'b' WHERE i = '2'`], // INTEGER column against a string
    [`UPDATE t SET r = 5 WHERE n = '3'`, `UPDATE t SET r = 6 WHERE n = 3`], // untyped column: no conversion either way
    [`UPDATE t SET num = CASE WHEN 1 = '1' THEN 'eq' ELSE 'ne' END WHERE id = 1`, `UPDATE t SET num = CASE WHEN 2 = '2' THEN 'eq' ELSE 'ne' END WHERE id = 2`],
    [`UPDATE t SET s = CAST(7 AS TEXT) || x'41' WHERE id = 1`, `UPDATE t SET s = CAST(8 AS TEXT) || x'42' WHERE id = 2`],
    [`UPDATE t SET s = 'L' WHERE s LIKE 'x' ESCAPE '\\'`, `UPDATE t SET s = 'M' WHERE s LIKE '8%' ESCAPE '\\'`],
    [`UPDATE t SET i = -5 WHERE id IN (SELECT id FROM t WHERE i > 1 LIMIT 1)`, `UPDATE t SET i = -6 WHERE id IN (SELECT id FROM t WHERE i > 2 LIMIT 1)`],
    [`UPDATE t SET b = json_object('k', 5, 'v', 'w') WHERE id = 3`, `UPDATE t SET b = json_object('k', 6, 'v', 'x') WHERE id = 1`],
    // a statement that is a cached template plus more text is not that template
    [`UPDATE t SET s = 'q' WHERE id = 1`, `UPDATE t SET s = 'q' WHERE id = 2 OR id = 3`, `UPDATE t SET s = 'r' WHERE id = 1 -- 2`],
    [`DELETE FROM t WHERE id = 99`, `DELETE FROM t WHERE i = -5 LIMIT 1`, `DELETE FROM t WHERE i = -6 LIMIT 1`],
    [`INSERT OR IGNORE INTO t (id, s) VALUES (1, 'dup')`, `INSERT OR REPLACE INTO t (id, s) VALUES (3, 'rep')`, `REPLACE INTO t (id, s) VALUES (4, 'new')`],
    // a string where SQLite wants a name: its template does not compile, so the text runs (twice: remembered)
    [`INSERT INTO 't' (id, s) VALUES (10, 'named')`, `INSERT INTO 't' (id, s) VALUES (11, 'named')`],
  ];
  const { stats, error } = assertSameAsExec(batches);
  assert.equal(error, null);
  assert.ok(stats.hits >= 8, `only ${stats.hits} cached runs`);
});

test('a statement that fails through the cache fails with the same message as through exec', () => {
  for (const [bad, message] of [
    [[`INSERT INTO t (id, s) VALUES (1, 'a')`, `INSERT INTO t (id, s) VALUES (1, 'b')`], /UNIQUE constraint failed: t\.id/],
    [[`INSERT INTO t (id, s) VALUES (1, 'a')`, `INSERT INTO t (id, s) VALUES ('x', 'b')`], /datatype mismatch/],
    [[`INSERT INTO t (id, s) VALUES (1, 'a')`, `INSERT INTO t (id, s) VALUES (2, 'a\u0000b')`], /unrecognized token/], // SQLite stops at a NUL
    [[`INSERT INTO t (id, s) VALUES (1, 'a')`, `INSERT INTO t (id, s) VALUES (2, 'a'`], /incomplete input/],
    [[`INSERT INTO t (id, b) VALUES (1, x'00')`, `INSERT INTO t (id, b) VALUES (2, x'0g')`], /unrecognized token/],
    [[`INSERT INTO t (id, b) VALUES (1, x'00')`, `INSERT INTO t (id, b) VALUES (2, x'000')`], /unrecognized token/],
    [[`INSERT INTO t (id, q) VALUES (1, 'a')`], /no column named q/],
  ] as const) {
    const out = assertSameAsExec([[...bad]]);
    assert.match(out.error ?? 'no error', message);
  }
  const cached = replay([[`INSERT INTO t (id, s) VALUES (1, 'a')`], [`UPDATE t SET n = 1 WHERE id = 1`, `INSERT INTO t (id, s) VALUES (1, 'b')`]], true);
  assert.match(cached.error!, /^version 3 at offset 200, statement 2 of 2: UNIQUE constraint failed: t\.id; the statement: INSERT INTO t \(id, s\) VALUES \(1, 'b'\)$/);
  assert.equal(cached.stats!.hits, 2);
});

test('random values and layouts: the cache stores exactly what exec stores, or fails the same way', () => {
  // between words (sep) and around operators and literals (ws, which may be nothing)
  const sep = fc.constantFrom(' ', '  ', '\n', '\t', ' /* c;\'x */ ', ' -- c\'\n');
  const ws = fc.oneof(fc.constant(''), sep);
  const str = fc.oneof(
    fc.string({ maxLength: 12 }),
    fc.string({ unit: fc.constantFrom("'", ';', '-', '/', '*', '\n', 'a', 'é', '😀', ' ', '?', '"'), maxLength: 12 }),
  );
  // floats and integers beyond int64 keep their statement as text, and a NUL fails it both ways
  // (SQLite's tokenizer stops at one), so those come less often
  const literal = fc.oneof(
    { arbitrary: fc.integer({ min: 0, max: 1000 }).map(String), weight: 15 },
    { arbitrary: fc.bigInt({ min: 0n, max: 10n ** 18n - 1n }).map(String), weight: 10 },
    { arbitrary: fc.bigInt({ min: 10n ** 18n, max: 10n ** 20n }).map(String), weight: 5 },
    { arbitrary: str.map((s) => `'${s.replaceAll("'", "''")}'`), weight: 20 },
    { arbitrary: fc.uint8Array({ maxLength: 8 }).chain((b) => fc.constantFrom('x', 'X').map((x) => `${x}'${Buffer.from(b).toString('hex')}'`)), weight: 10 },
    { arbitrary: fc.double({ noNaN: true, noDefaultInfinity: true, min: 0 }).map((d) => String(d)), weight: 5 },
    { arbitrary: fc.constantFrom('NULL', "''", "x''", '0', '00', '9223372036854775807', '9223372036854775808'), weight: 5 },
    { arbitrary: fc.constantFrom("'a\u0000b'", "'\u0000'"), weight: 1 },
  );
  const sign = fc.constantFrom('', '-', '- ');
  const value = fc.tuple(sign, literal).map(([s, l]) => s + l);
  const stmt = fc.oneof(
    fc.tuple(fc.array(value, { minLength: 6, maxLength: 6 }), ws).map(
      ([v, w]) => `INSERT INTO t (i, s, b, n, r, num)${w}VALUES${w}(${v.join(`,${w}`)})`,
    ),
    fc.tuple(value, value, value, ws).map(([a, b, c, w]) => `UPDATE t SET n${w}=${w}${a}, s = ${b} WHERE i = ${c} OR s=${b}`),
    fc.tuple(value, value, ws).map(([a, b, w]) => `UPDATE t SET n = n || ${a}${w}WHERE ${b} = n`),
    fc.tuple(value, sep).map(([a, w]) => `DELETE FROM t WHERE${w}n = ${a}`),
    fc.tuple(value, value, value).map(([a, b, c]) => `INSERT INTO t (n, s) SELECT ${a}, typeof(${a}) WHERE ${b} < ${c}`),
    fc.tuple(value, value, value, ws).map(([a, b, c, w]) => `update t set s = case when n in${w}(${a},${b}) then ${c} else s || ${a} end`),
    fc.tuple(value, value).map(([a, b]) => `INSERT INTO "t" ([n], \`s\`) VALUES (${a} || ${b}, (${a})+${b})`),
  );
  let hits = 0;
  let clean = 0;
  fc.assert(
    fc.property(fc.array(fc.array(stmt, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 8 }), (batches) => {
      const out = assertSameAsExec(batches);
      hits += out.stats.hits;
      if (out.error === null) clean++;
    }),
    FC,
  );
  // the comparison means something only if most cases write rows through cached templates
  assert.ok(hits > 3 * FC.numRuns, `only ${hits} cached runs in ${FC.numRuns} cases`);
  assert.ok(clean > FC.numRuns / 4, `only ${clean} of ${FC.numRuns} cases replayed without an error`);
});

// ---------------------------------------------------------------------------------------------------
// 3. Schema changes and PRAGMAs while statements are cached

test('a cached statement follows schema changes: the table dropped and recreated with other columns', () => {
  const batches = [
    [`INSERT INTO t (id, s) VALUES (1, 'a')`, `INSERT INTO t (id, s) VALUES (2, 'b')`],
    ['DROP TRIGGER t_log', 'ALTER TABLE t RENAME TO t_old', 'CREATE TABLE t (s TEXT PRIMARY KEY, id, i, b, n, r, num)'],
    [`INSERT INTO t (id, s) VALUES (3, 'c')`, `INSERT INTO t (id, s) VALUES ('4', 'd')`],
  ];
  // the new t has no INTEGER PRIMARY KEY: '4' stays text, as exec stores it; a statement still compiled
  // for the old table would have written into t_old
  const { stats, error, rows } = assertSameAsExec(batches);
  assert.equal(error, null);
  assert.deepStrictEqual(
    rows.map((r) => [r[0], r[4]]),
    [
      [3n, 'c'],
      ['4', 'd'],
    ],
  );
  assert.ok(stats.hits >= 3);
});

test('PRAGMA foreign_keys = OFF between two statements of one shape takes effect (D11 with the cache)', () => {
  const path = freshPath('fk.sqlite3');
  const live = freshPath('fk-live.sqlite3');
  const batches: string[][] = [
    [
      'CREATE TABLE parent (id INTEGER PRIMARY KEY)',
      'CREATE TABLE child (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent(id) ON DELETE CASCADE)',
      'INSERT INTO parent VALUES (1), (2)',
      'INSERT INTO child VALUES (10, 1), (20, 2)',
    ],
    ['DELETE FROM parent WHERE id = 1'], // compiled with foreign keys on: cascades to child 10
    ['PRAGMA foreign_keys = OFF;'], // runs outside the transaction, and empties the cache
    ['DELETE FROM parent WHERE id = 2'], // the same shape, now without the cascade: child 20 stays
    ['PRAGMA foreign_keys = ON;'],
  ];
  // as lightningd ran it: each batch its own transaction, PRAGMAs outside any
  const ldb = new Database(live);
  ldb.pragma('foreign_keys = ON');
  for (const b of batches) {
    if (b[0]!.startsWith('PRAGMA')) ldb.exec(b[0]!);
    else {
      ldb.exec('BEGIN');
      for (const s of b) ldb.exec(s);
      ldb.exec('COMMIT');
    }
  }
  ldb.close();
  const db = new Database(path);
  db.pragma('foreign_keys = ON');
  const r = new Replayer(db);
  batches.forEach((b, i) => r.apply({ kind: 'change', version: i + 1, offset: i, statements: b }));
  r.finish();
  assert.deepEqual(db.prepare('SELECT id, pid FROM child').all(), [{ id: 20, pid: 2 }]);
  db.close();
  // both INSERTs and both DELETEs ran through templates; the DELETE's was compiled again after the PRAGMA
  assert.deepEqual(r.cacheStats, { hits: 4, text: 4, compiled: 4, internal: 0 });
  assert.equal(dump(path), dump(live));
});

// ---------------------------------------------------------------------------------------------------
// 4. Through restoreBackup

test('restore: a failure in a cached statement names its version, offset and statement; no file is left', () => {
  const dir = mkdtempSync(join(work, 'r-'));
  const backup = join(work, `fail-${++seq}.v2`);
  createV2(backup);
  const w = V2Writer.open(backup);
  w.appendChange(1, ['CREATE TABLE vars (name TEXT, intval INTEGER, PRIMARY KEY (name))', `INSERT INTO vars VALUES ('data_version', 1)`, 'CREATE TABLE inv (id INTEGER PRIMARY KEY, label TEXT UNIQUE)']);
  for (let v = 2; v <= 5; v++) {
    w.appendChange(v, [`INSERT INTO inv VALUES (${v}, 'label-${v}')`, `UPDATE vars SET intval = ${v} WHERE name = 'data_version'`]);
  }
  w.appendChange(6, [`INSERT INTO inv VALUES (6, 'label-6')`, `INSERT INTO inv VALUES (7, 'label-3')`, `UPDATE vars SET intval = 6 WHERE name = 'data_version'`]);
  w.close();
  const reader = V2Reader.open(backup);
  const bad = listHeaders(reader)[5]!;
  assert.equal(bad.version, 6);
  let caught: unknown;
  try {
    restoreBackup(reader, join(dir, 'lightningd.sqlite3'));
  } catch (e) {
    caught = e;
  } finally {
    reader.close();
  }
  assert.ok(caught instanceof RestoreError, String(caught));
  assert.match(caught.message, new RegExp(`at entry version 6 at offset ${bad.offset}, statement 2 of 3: UNIQUE constraint failed: inv\\.label; the statement: INSERT INTO inv VALUES \\(7, 'label-3'\\)`));
  assert.ok(caught.cause instanceof ReplayError);
  assert.equal(caught.cause.statementIndex, 1);
  assert.deepEqual(readdirSync(dir), []);
});
