import { listHeaders } from '../src/backends/backend.js';
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { BackupReader, BackupWriter } from '../src/backends/backend.js';
import { createV1, V1Reader, V1Writer } from '../src/backends/file/v1.js';
import { createV2, V2Reader, V2Writer } from '../src/backends/file/v2.js';
import { decideFirst, isPragmaOnly } from '../src/engine/versions.js';
import { RestoreError, resolveDestination, restoreBackup } from '../src/restore/restore.js';
import type { RestoreOptions, RestoreResult } from '../src/restore/restore.js';
import { rewriteStatement } from '../src/restore/rewrite.js';
import { FIXTURES } from './helpers/fixtures.js';
import { isHookCall, readHooks } from './helpers/hooks.js';
import { dataVersion, dump } from './helpers/sqlite.js';

const FIX = FIXTURES;
const REF = join(FIX, 'reference-backups');
const CLN = join(FIX, 'cln-v26.06.6');

const work = mkdtempSync(join(tmpdir(), 'clnvault-restore-'));
after(() => rmSync(work, { recursive: true, force: true }));
let seq = 0;
function freshDir(): string {
  const d = join(work, `d${++seq}`);
  mkdirSync(d);
  return d;
}

function restoreWith(reader: BackupReader, dest: string, opts?: RestoreOptions): RestoreResult {
  try {
    return restoreBackup(reader, dest, opts);
  } finally {
    reader.close();
  }
}

function expectRestoreError(fn: () => unknown, re: RegExp): RestoreError {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof RestoreError, `expected a RestoreError, got ${String(caught)}`);
  assert.match(caught.message, re);
  return caught;
}

const read = (p: string): string => readFileSync(p, 'utf8');
const readInt = (p: string): number => Number(read(p).trim());

// ---------------------------------------------------------------------------------------------------
// 1. Files written by the reference plugin

for (const set of ['empty-init', 'snapshot-init', 'after-rewind', 'compacted', 'pre-4090']) {
  test(`reference-backups/${set}: restore dumps byte-identical to expected.dump.sql`, () => {
    const dest = join(freshDir(), 'lightningd.sqlite3');
    const r = restoreWith(V1Reader.open(join(REF, set, 'backup.dbak')), dest);
    const want = readInt(join(REF, set, 'expected-data_version.txt'));
    assert.equal(r.path, dest);
    assert.equal(r.head, want);
    assert.equal(dataVersion(dest), want);
    assert.equal(dump(dest), read(join(REF, set, 'expected.dump.sql')));
  });
}

test('after-rewind: the stale uncommitted dv 16 (which breaks the reference restore) is dropped', () => {
  const dest = join(freshDir(), 'lightningd.sqlite3');
  const r = restoreWith(V1Reader.open(join(REF, 'after-rewind', 'backup.dbak')), dest);
  assert.equal(r.dropped, 1);
  assert.equal(r.applied, 23);
  const db = new Database(dest, { readonly: true });
  const labels = db.prepare('SELECT CAST(label AS TEXT) AS l FROM invoices ORDER BY id').all() as { l: string }[];
  db.close();
  assert.deepEqual(labels.map((x) => x.l), ['c3-inv-1', 'c3-inv-2', 'c3-inv-3', 'c3-inv-4', 'c3-after-1', 'c3-after-2']);
});

test('after-rewind/backup-after-crash.dbak: a backup one transaction ahead restores that transaction (c3-crashed)', () => {
  const dest = join(freshDir(), 'lightningd.sqlite3');
  const r = restoreWith(V1Reader.open(join(REF, 'after-rewind', 'backup-after-crash.dbak')), dest);
  assert.equal(r.head, 16);
  assert.equal(r.dropped, 0);
  assert.equal(dataVersion(dest), 16);
  const db = new Database(dest, { readonly: true });
  const row = db.prepare(`SELECT id FROM invoices WHERE CAST(label AS TEXT) = 'c3-crashed'`).get() as { id: number } | undefined;
  db.close();
  assert.deepEqual(row, { id: 5 });
});

test('after-rewind-decrement: dropping the superseded entry gives stale-dropped.dump.sql (the set is ill-defined, see its README)', () => {
  const dest = join(freshDir(), 'lightningd.sqlite3');
  const r = restoreWith(V1Reader.open(join(REF, 'after-rewind-decrement', 'backup.dbak')), dest);
  assert.equal(r.dropped, 1);
  assert.equal(r.head, 19);
  assert.equal(dataVersion(dest), 19);
  assert.equal(dump(dest), read(join(REF, 'after-rewind-decrement', 'stale-dropped.dump.sql')));
});

test('pre-4090: the two statements CLN mis-expanded are rewritten; nothing else is', () => {
  assert.equal(
    rewriteStatement(`UPDATE outputs SET status=1, reserved_til=174WHERE prev_out_tx=x'45'`),
    `UPDATE outputs SET status=1, reserved_til=174 WHERE prev_out_tx=x'45'`,
  );
  assert.equal(
    rewriteStatement('UPDATE channels SET peer_id=12WHERE channels.id=3'),
    'UPDATE channels SET peer_id=12 WHERE channels.id=3',
  );
  for (const s of ['UPDATE x SET a=1 WHERE b=2', 'UPDATE channels SET peer_id=12WHERE id=3', `INSERT INTO t VALUES ('v1WHERE')`]) {
    assert.equal(rewriteStatement(s), s);
  }
});

// ---------------------------------------------------------------------------------------------------
// 2. Recorded lightningd traffic through real clnvault backup files

interface Format {
  name: 'v1' | 'v2';
  create(path: string): void;
  writer(path: string): BackupWriter;
  reader(path: string): BackupReader;
}
const FORMATS: Format[] = [
  { name: 'v2', create: createV2, writer: (p) => V2Writer.open(p), reader: (p) => V2Reader.open(p) },
  { name: 'v1', create: createV1, writer: (p) => V1Writer.open(p), reader: (p) => V1Reader.open(p) },
];

/**
 * Appends every db_write of `hooksFile` as the plugin does: a batch whose data_version the backup already
 * holds (and which is not a PRAGMA-only batch) replaces the never-committed head, via dropHead().
 * One call = one plugin run. Returns how many times the head was dropped.
 */
function appendRun(f: Format, path: string, hooksFile: string): number {
  if (!existsSync(path)) f.create(path);
  const w = f.writer(path);
  let rewinds = 0;
  try {
    for (const line of readHooks(hooksFile)) {
      if (!isHookCall(line)) continue;
      const d = decideFirst(w.head(), line.data_version, isPragmaOnly(line.writes), w.headIsSnapshot());
      if (d.action === 'refuse') assert.fail(`${hooksFile} dv ${line.data_version}: ${d.message}`);
      if (d.action === 'rewind') {
        w.dropHead();
        rewinds++;
      }
      w.appendChange(line.data_version, line.writes);
    }
  } finally {
    w.close();
  }
  return rewinds;
}

for (const f of FORMATS) {
  test(`session-basic via ${f.name}: restore == final.dump.sql, then + restart == final-after-restart.dump.sql`, () => {
    const dir = freshDir();
    const backup = join(dir, `backup.${f.name}`);
    const s = join(CLN, 'session-basic');
    assert.equal(appendRun(f, backup, join(s, 'hooks.jsonl')), 0);
    const first = join(dir, 'first.sqlite3');
    const r1 = restoreWith(f.reader(backup), first);
    assert.equal(r1.head, 159);
    assert.equal(r1.applied, 161);
    assert.equal(dataVersion(first), readInt(join(s, 'final-data_version.txt')));
    assert.equal(dump(first), read(join(s, 'final.dump.sql')));

    assert.equal(appendRun(f, backup, join(s, 'hooks-restart.jsonl')), 0);
    const second = join(dir, 'second.sqlite3');
    const r2 = restoreWith(f.reader(backup), second);
    assert.equal(r2.head, 196);
    assert.equal(dataVersion(second), readInt(join(s, 'final-after-restart-data_version.txt')));
    assert.equal(dump(second), read(join(s, 'final-after-restart.dump.sql')));
  });

  test(`session-abort via ${f.name}: the aborted dv 16 is dropped by the writer; restore == final.dump.sql`, () => {
    const dir = freshDir();
    const backup = join(dir, `backup.${f.name}`);
    const s = join(CLN, 'session-abort');
    assert.equal(appendRun(f, backup, join(s, 'hooks.jsonl')), 1);
    const dest = join(dir, 'lightningd.sqlite3');
    const r = restoreWith(f.reader(backup), dest);
    assert.equal(r.head, 21);
    assert.equal(dataVersion(dest), readInt(join(s, 'final-data_version.txt')));
    assert.equal(dump(dest), read(join(s, 'final.dump.sql')));

    // point-in-time: the state just before the crash is exactly the node's DB after the abort
    const before = join(dir, 'before-crash.sqlite3');
    const p = restoreWith(f.reader(backup), before, { toVersion: 15 });
    assert.equal(p.head, 15);
    assert.equal(dataVersion(before), 15);
    assert.equal(dump(before), read(join(s, 'after-abort.dump.sql')));
  });

  test(`session-channels via ${f.name}: restore == final.dump.sql`, () => {
    const dir = freshDir();
    const backup = join(dir, `backup.${f.name}`);
    const s = join(CLN, 'session-channels');
    assert.equal(appendRun(f, backup, join(s, 'hooks.jsonl')), 0);
    const dest = join(dir, 'lightningd.sqlite3');
    const r = restoreWith(f.reader(backup), dest);
    assert.equal(r.head, 417);
    assert.equal(dataVersion(dest), readInt(join(s, 'final-data_version.txt')));
    assert.equal(dump(dest), read(join(s, 'final.dump.sql')));
  });
}

// ---------------------------------------------------------------------------------------------------
// 3. Refusals and safety

/** A small real v2 backup: a vars table with data_version bumps, like lightningd's batches. */
function smallV2(path: string, batches: string[][]): void {
  createV2(path);
  const w = V2Writer.open(path);
  try {
    w.appendChange(1, [
      'CREATE TABLE vars (name TEXT, intval INTEGER, PRIMARY KEY (name))',
      `INSERT INTO vars VALUES ('data_version', 0)`,
      `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 0`,
    ]);
    batches.forEach((b, i) => {
      const v = i + 2;
      w.appendChange(v, [...b, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${v - 1}`]);
    });
  } finally {
    w.close();
  }
}

test('an existing destination is refused without force and left untouched; force replaces it', () => {
  const dir = freshDir();
  const backup = join(work, `exists-${seq}.v2`);
  smallV2(backup, [['CREATE TABLE t (x)', 'INSERT INTO t VALUES (1)']]);
  const dest = join(dir, 'lightningd.sqlite3');
  writeFileSync(dest, 'precious');
  expectRestoreError(() => restoreWith(V2Reader.open(backup), dest), /lightningd\.sqlite3 exists; move it aside or pass --force/);
  assert.equal(read(dest), 'precious');
  assert.deepEqual(readdirSync(dir), ['lightningd.sqlite3']);

  // a directory means <dir>/lightningd.sqlite3, so it is refused the same way
  expectRestoreError(() => restoreWith(V2Reader.open(backup), dir), /exists; move it aside or pass --force/);
  assert.equal(read(dest), 'precious');

  const r = restoreWith(V2Reader.open(backup), dest, { force: true });
  assert.equal(r.head, 2);
  assert.equal(dataVersion(dest), 2);
  // the replaced file is kept beside it, never deleted (issue 10 item 1)
  const names = readdirSync(dir).sort();
  assert.equal(names.length, 2, names.join(', '));
  assert.equal(names[0], 'lightningd.sqlite3');
  assert.match(names[1]!, /^lightningd\.sqlite3\.replaced-\d{8}T\d{6}Z$/);
  assert.equal(read(join(dir, names[1]!)), 'precious');
  assert.equal(r.replaced?.keptAs, join(dir, names[1]!));
});

test('a leftover -journal next to a missing destination is refused: SQLite would play it into the restore', () => {
  const dir = freshDir();
  const backup = join(dir, 'b.v2');
  smallV2(backup, []);
  const dest = join(dir, 'lightningd.sqlite3');
  writeFileSync(`${dest}-journal`, 'old journal');
  expectRestoreError(() => restoreWith(V2Reader.open(backup), dest), /-journal exists/);
  assert.equal(existsSync(dest), false);
  restoreWith(V2Reader.open(backup), dest, { force: true });
  assert.equal(existsSync(`${dest}-journal`), false);
  assert.equal(dataVersion(dest), 1);
});

test('a directory destination restores to <dir>/lightningd.sqlite3; a missing directory is refused', () => {
  const dir = freshDir();
  const backup = join(work, `dirdest-${seq}.v2`);
  smallV2(backup, []);
  assert.equal(resolveDestination(dir), join(dir, 'lightningd.sqlite3'));
  const r = restoreWith(V2Reader.open(backup), dir);
  assert.equal(r.path, join(dir, 'lightningd.sqlite3'));
  assert.deepEqual(readdirSync(dir), ['lightningd.sqlite3']);
  assert.equal(dataVersion(r.path), 1);
  expectRestoreError(() => restoreWith(V2Reader.open(backup), join(dir, 'nope', 'x.sqlite3')), /directory .*nope does not exist/);
});

test('a statement that fails names version, offset and statement, and leaves no file behind', () => {
  const dir = freshDir();
  const backup = join(work, `bad-${seq}.v2`);
  smallV2(backup, [['CREATE TABLE t (x)'], ['INSERT INTO t VALUES (1)', 'THIS IS NOT SQL'], ['INSERT INTO t VALUES (2)']]);
  const reader = V2Reader.open(backup);
  const bad = listHeaders(reader)[2]!;
  assert.equal(bad.version, 3);
  const e = expectRestoreError(() => restoreWith(reader, join(dir, 'lightningd.sqlite3')), /version 3 at offset \d+/);
  assert.match(e.message, new RegExp(`offset ${bad.offset}\\b`));
  assert.match(e.message, /statement 2 of 3/);
  assert.match(e.message, /THIS IS NOT SQL/);
  assert.match(e.message, /syntax error/);
  assert.deepEqual(readdirSync(dir), []);
});

test('a backup that does not replay to its own head (data_version bump missing) is refused, no file left', () => {
  const dir = freshDir();
  const backup = join(work, `nobump-${seq}.v2`);
  createV2(backup);
  const w = V2Writer.open(backup);
  w.appendChange(1, ['CREATE TABLE vars (name TEXT, intval INTEGER, PRIMARY KEY (name))', `INSERT INTO vars VALUES ('data_version', 1)`]);
  w.appendChange(2, ['CREATE TABLE t (x)']);
  w.close();
  expectRestoreError(() => restoreWith(V2Reader.open(backup), join(dir, 'lightningd.sqlite3')), /data_version is 1 but the backup's head is version 2/);
  assert.deepEqual(readdirSync(dir), []);
});

test('foreign key violations in the result are refused, no file left', () => {
  const dir = freshDir();
  const backup = join(work, `fk-${seq}.v2`);
  smallV2(backup, [
    ['CREATE TABLE p (id INTEGER PRIMARY KEY)', 'CREATE TABLE c (pid INTEGER REFERENCES p(id))'],
    ['PRAGMA foreign_keys = OFF;'],
    ['INSERT INTO c VALUES (7)'],
  ]);
  expectRestoreError(() => restoreWith(V2Reader.open(backup), join(dir, 'lightningd.sqlite3')), /1 foreign key violation/);
  assert.deepEqual(readdirSync(dir), []);
});

for (const f of FORMATS) {
  test(`an empty ${f.name} backup restores to a valid empty database (the reference fails, D3)`, () => {
    const dir = freshDir();
    const backup = join(work, `empty-${seq}.${f.name}`);
    f.create(backup);
    const dest = join(dir, 'lightningd.sqlite3');
    const r = restoreWith(f.reader(backup), dest);
    assert.equal(r.head, 0);
    assert.equal(r.applied, 0);
    assert.equal(r.snapshotVersion, null);
    assert.ok(statSync(dest).size > 0);
    assert.equal(readFileSync(dest).subarray(0, 16).toString('latin1'), 'SQLite format 3\0');
    assert.equal(dump(dest), 'PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\nCOMMIT;\n');
    assert.deepEqual(readdirSync(dir), ['lightningd.sqlite3']);
    expectRestoreError(() => restoreWith(f.reader(backup), join(dir, 'x.sqlite3'), { toVersion: 3 }), /empty/);
  });
}

test('toVersion: in range stops there (also on a snapshot); out of range names the versions held', () => {
  const backup = join(REF, 'compacted', 'backup.dbak');
  const dir = freshDir();
  const atSnap = restoreWith(V1Reader.open(backup), join(dir, 'a.sqlite3'), { toVersion: 21 });
  assert.equal(atSnap.head, 21);
  assert.equal(atSnap.snapshotVersion, 21);
  assert.equal(atSnap.applied, 1);
  assert.equal(dataVersion(join(dir, 'a.sqlite3')), 21);
  const mid = restoreWith(V1Reader.open(backup), join(dir, 'b.sqlite3'), { toVersion: 23 });
  assert.equal(mid.head, 23);
  assert.equal(dataVersion(join(dir, 'b.sqlite3')), 23);
  const full = restoreWith(V1Reader.open(backup), join(dir, 'c.sqlite3'), { toVersion: 25 });
  assert.equal(dump(join(dir, 'c.sqlite3')), read(join(REF, 'compacted', 'expected.dump.sql')));
  assert.equal(full.head, 25);
  for (const v of [20, 26, 0]) {
    expectRestoreError(
      () => restoreWith(V1Reader.open(backup), join(dir, `x${v}.sqlite3`), { toVersion: v }),
      new RegExp(`version ${v}: it holds versions 21 to 25`),
    );
  }
  for (const v of [-1, 21.5]) {
    expectRestoreError(() => restoreWith(V1Reader.open(backup), join(dir, 'y.sqlite3'), { toVersion: v }), /must be a data_version/);
  }
  assert.deepEqual(readdirSync(dir).sort(), ['a.sqlite3', 'b.sqlite3', 'c.sqlite3']);
});

// ---------------------------------------------------------------------------------------------------
// 4. PRAGMA semantics (reference defect D11)

test('PRAGMA foreign_keys = OFF around a table rebuild takes effect as it did live: children survive', () => {
  // legacy_alter_table keeps the children's REFERENCES pointing at `parent` while foreign keys are off,
  // as SQLite before 3.26 did; with foreign keys (wrongly) on, the rename repoints them at temp_parent and
  // dropping it cascades. That is exactly the divergence a one-transaction replay produces.
  const batches: string[][] = [
    [
      'CREATE TABLE vars (name TEXT, intval INTEGER, PRIMARY KEY (name))',
      `INSERT INTO vars VALUES ('data_version', 0)`,
      'CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT)',
      'CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id) ON DELETE CASCADE)',
      `INSERT INTO parent VALUES (1, 'a'), (2, 'b')`,
      'INSERT INTO child VALUES (10, 1), (11, 2), (12, 2)',
      `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 0`,
    ],
    ['PRAGMA legacy_alter_table = ON;'],
    ['PRAGMA foreign_keys = OFF;'],
    [
      'ALTER TABLE parent RENAME TO temp_parent;',
      'CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT, extra INTEGER DEFAULT 0);',
      'INSERT INTO parent (id, name) SELECT * FROM temp_parent;',
      'DROP TABLE temp_parent;',
      `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 1`,
    ],
    ['PRAGMA foreign_keys = ON;'],
    [`INSERT INTO parent VALUES (3, 'c', 7)`, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 2`],
  ];
  const versions = [1, 1, 1, 2, 2, 3];
  const dir = freshDir();

  // live, as lightningd does it: each batch its own transaction, PRAGMA batches outside any
  const live = join(dir, 'live.sqlite3');
  const ldb = new Database(live);
  ldb.pragma('foreign_keys = ON');
  for (const b of batches) {
    if (isPragmaOnly(b)) {
      for (const s of b) ldb.exec(s);
      continue;
    }
    ldb.exec('BEGIN');
    for (const s of b) ldb.exec(s);
    ldb.exec('COMMIT');
  }
  ldb.close();

  // the reference's replay: everything in one transaction
  const oneTx = join(dir, 'one-tx.sqlite3');
  const odb = new Database(oneTx);
  odb.pragma('foreign_keys = ON');
  odb.exec('BEGIN');
  for (const b of batches) for (const s of b) odb.exec(s);
  odb.exec('COMMIT');
  odb.close();

  const backup = join(dir, 'b.v2');
  createV2(backup);
  const w = V2Writer.open(backup);
  batches.forEach((b, i) => w.appendChange(versions[i]!, b));
  w.close();
  const dest = join(dir, 'lightningd.sqlite3');
  const r = restoreWith(V2Reader.open(backup), dest);
  assert.equal(r.head, 3);
  assert.equal(r.applied, 6);

  const children = (p: string): number[] => {
    const db = new Database(p, { readonly: true });
    const ids = (db.prepare('SELECT id FROM child ORDER BY id').all() as { id: number }[]).map((x) => x.id);
    db.close();
    return ids;
  };
  assert.deepEqual(children(live), [10, 11, 12]);
  assert.deepEqual(children(oneTx), []); // the test is sensitive: in one transaction the cascade really happens
  assert.deepEqual(children(dest), [10, 11, 12]);
  assert.equal(dump(dest), dump(live));
});

test('a PRAGMA inside a mixed batch also runs outside the transaction', () => {
  const dir = freshDir();
  const backup = join(dir, 'b.v2');
  smallV2(backup, [
    [
      'CREATE TABLE parent (id INTEGER PRIMARY KEY)',
      'CREATE TABLE child (id INTEGER PRIMARY KEY, pid INTEGER REFERENCES parent(id) ON DELETE CASCADE)',
      'INSERT INTO parent VALUES (1)',
      'INSERT INTO child VALUES (5, 1)',
    ],
    ['PRAGMA foreign_keys = OFF;', 'DELETE FROM parent', 'INSERT INTO parent VALUES (1)', 'PRAGMA foreign_keys = ON;'],
  ]);
  const dest = join(dir, 'lightningd.sqlite3');
  restoreWith(V2Reader.open(backup), dest);
  const db = new Database(dest, { readonly: true });
  assert.deepEqual(db.prepare('SELECT id, pid FROM child').all(), [{ id: 5, pid: 1 }]);
  db.close();
});

// ---------------------------------------------------------------------------------------------------
// 5. Progress

test('progress: called, applied never decreases, the last call has applied == total', () => {
  const dir = freshDir();
  const backup = join(dir, 'b.v2');
  appendRun(FORMATS[0]!, backup, join(CLN, 'session-channels', 'hooks.jsonl'));
  const calls: { applied: number; total: number; bytes: number }[] = [];
  const r = restoreWith(V2Reader.open(backup), join(dir, 'lightningd.sqlite3'), { onProgress: (p) => calls.push({ ...p }) });
  assert.ok(calls.length >= 1);
  const last = calls[calls.length - 1]!;
  assert.equal(last.applied, last.total);
  assert.equal(last.total, r.applied);
  assert.equal(r.applied, 419);
  assert.ok(last.bytes > 1_000_000);
  for (let i = 1; i < calls.length; i++) {
    assert.ok(calls[i]!.applied >= calls[i - 1]!.applied);
    assert.ok(calls[i]!.bytes >= calls[i - 1]!.bytes);
  }
});
