/**
 * A small, fully known history for the torn-write and bit-rot suites: batches that each move the DB to a
 * known state (data_version bumped, PRAGMA pairs with a repeated version, unicode, a few KB blobs), the
 * content of the DB after each, and backups of it in both formats with the byte offset of every entry.
 */
import Database from 'better-sqlite3';
import { closeSync, openSync, readSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { V1Writer } from '../../src/backends/file/v1.js';
import { V2Writer } from '../../src/backends/file/v2.js';
import { createBackup } from '../../src/backends/open.js';
import type { BackupFormat } from '../../src/engine/entries.js';
import { SimDb } from '../../src/sim/db.js';
import { Prng } from '../../src/sim/workload.js';

export interface Batch {
  version: number;
  statements: string[];
}

export function makeHistory(n: number, seed: number): Batch[] {
  const rng = new Prng(seed);
  const out: Batch[] = [
    {
      version: 1,
      statements: [
        'CREATE TABLE vars (name TEXT PRIMARY KEY, intval INTEGER)',
        "INSERT INTO vars VALUES ('data_version', 1)",
        'CREATE TABLE t (id INTEGER PRIMARY KEY, s TEXT, b BLOB)',
      ],
    },
  ];
  let v = 1;
  while (out.length < n) {
    if (rng.next() < 0.15) {
      out.push({ version: v, statements: [rng.next() < 0.5 ? 'PRAGMA foreign_keys = OFF;' : 'PRAGMA foreign_keys = ON;'] });
      continue;
    }
    const id = out.length;
    const text = `row ${id} ⚡ Grüße '' ${'x'.repeat(rng.int(0, 60))}`;
    out.push({
      version: v + 1,
      statements: [
        `INSERT INTO t VALUES (${id}, '${text}', x'${rng.hex(rng.int(1, 300))}');`,
        rng.next() < 0.3 ? `DELETE FROM t WHERE id = ${rng.int(1, id)}` : `UPDATE t SET s = s || '.' WHERE id % 3 = ${id % 3}`,
        `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${v}`,
      ],
    });
    v++;
  }
  return out;
}

/** A canonical text of everything in the DB, for exact comparisons without spawning sqlite3. */
export function contentOf(dbPath: string): string {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const tables = db.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as Array<{ name: string; sql: string }>;
    const parts: string[] = [];
    for (const t of tables) {
      parts.push(t.sql);
      const rows = db.prepare(`SELECT * FROM "${t.name}" ORDER BY rowid`).raw().all() as unknown[][];
      for (const r of rows) parts.push(JSON.stringify(r.map((x) => (Buffer.isBuffer(x) ? `x'${x.toString('hex')}'` : x))));
    }
    return parts.join('\n');
  } finally {
    db.close();
  }
}

/** states[k] = content after the first k batches (states[0]: nothing). */
export function statesOf(history: Batch[], dir: string): string[] {
  const path = join(dir, 'states.sqlite3');
  rmSync(path, { force: true });
  const db = new SimDb(path);
  db.open();
  const states = [''];
  try {
    for (const b of history) {
      db.apply(b.statements);
      states.push(contentOf(path));
    }
  } finally {
    db.close();
    rmSync(path, { force: true });
  }
  return states;
}

export interface BuiltBackup {
  path: string;
  /** offsets[i] = where entry i starts; offsets[n] = end of file */
  offsets: number[];
}

/** Writes `history` with the real writer; `snapshotAt` inserts a snapshot of the state after that many batches. */
export function writeBackup(dir: string, name: string, format: BackupFormat, history: Batch[], snapshotAt?: { after: number; dbPath: string; version: number }): BuiltBackup {
  const path = join(dir, name);
  rmSync(path, { force: true });
  createBackup(`file://${path}`, dir, format);
  const w = format === 'v2' ? V2Writer.open(path) : V1Writer.open(path);
  const offsets: number[] = [];
  try {
    for (let i = 0; i < history.length; i++) {
      offsets.push(w.stats().bytes);
      w.appendChange(history[i]!.version, history[i]!.statements);
      if (snapshotAt && snapshotAt.after === i + 1) {
        offsets.push(w.stats().bytes);
        w.appendSnapshotFile(snapshotAt.version, snapshotAt.dbPath);
      }
    }
    offsets.push(w.stats().bytes);
  } finally {
    w.close();
  }
  return { path, offsets };
}

export function readAll(path: string): Buffer {
  const fd = openSync(path, 'r');
  try {
    const chunks: Buffer[] = [];
    const b = Buffer.allocUnsafe(1 << 16);
    for (let pos = 0; ; ) {
      const n = readSync(fd, b, 0, b.length, pos);
      if (n === 0) break;
      chunks.push(Buffer.from(b.subarray(0, n)));
      pos += n;
    }
    return Buffer.concat(chunks);
  } finally {
    closeSync(fd);
  }
}
