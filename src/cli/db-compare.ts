import Database from '../engine/sqlite.js';
import { createHash, type Hash } from 'node:crypto';

/**
 * Table-by-table comparison of two SQLite databases (a restored backup and the node's own database):
 * the schema of every table and index, and per table the row count and a SHA-256 over its rows in a
 * canonical order. Both sides are read in the same order, so the first differing row can be shown too.
 */

export interface TableComparison {
  table: string;
  /** null when the table is missing on that side */
  rows: number | null;
  otherRows: number | null;
  hash: string | null;
  otherHash: string | null;
  equal: boolean;
  /** first differing row, rendered short (only for tables whose content differs) */
  firstDifference?: string;
}

export interface Comparison {
  equal: boolean;
  tables: TableComparison[];
  /** schema objects (tables, indexes, triggers, views) whose SQL differs or that exist on one side only */
  schemaDifferences: string[];
  totalRows: number;
}

type Row = unknown[];

/** SQLite's own statistics tables change with ANALYZE, not with the node's transactions. */
const IGNORED = /^sqlite_stat\d$/;

export function compareDatabases(path: string, otherPath: string): Comparison {
  const a = openReadOnly(path);
  let b: Database.Database | null = null;
  try {
    b = openReadOnly(otherPath);
    const schemaA = schemaOf(a);
    const schemaB = schemaOf(b);
    const schemaDifferences: string[] = [];
    for (const name of new Set([...schemaA.keys(), ...schemaB.keys()])) {
      const sa = schemaA.get(name);
      const sb = schemaB.get(name);
      if (sa === undefined) schemaDifferences.push(`${name}: only in ${otherPath}`);
      else if (sb === undefined) schemaDifferences.push(`${name}: only in ${path}`);
      else if (sa.sql !== sb.sql) schemaDifferences.push(`${name}: its definition differs`);
    }
    const tablesA = tablesOf(a);
    const tablesB = tablesOf(b);
    const tables: TableComparison[] = [];
    let totalRows = 0;
    for (const t of [...new Set([...tablesA, ...tablesB])].sort()) {
      const inA = tablesA.includes(t);
      const inB = tablesB.includes(t);
      if (!inA || !inB) {
        const one = summarize(inA ? a : b, t);
        tables.push({
          table: t,
          rows: inA ? one.rows : null,
          otherRows: inB ? one.rows : null,
          hash: inA ? one.hash : null,
          otherHash: inB ? one.hash : null,
          equal: false,
        });
        continue;
      }
      const c = compareTable(a, b, t);
      totalRows += c.rows ?? 0;
      tables.push(c);
    }
    return { equal: schemaDifferences.length === 0 && tables.every((t) => t.equal), tables, schemaDifferences, totalRows };
  } finally {
    a.close();
    b?.close();
  }
}

function openReadOnly(path: string): Database.Database {
  const db = new Database(path, { readonly: true, fileMustExist: true, timeout: 5000 });
  db.defaultSafeIntegers(true);
  return db;
}

function schemaOf(db: Database.Database): Map<string, { type: string; sql: string | null }> {
  const rows = db.prepare(`SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_autoindex_%'`).all() as Array<{
    type: string;
    name: string;
    sql: string | null;
  }>;
  const m = new Map<string, { type: string; sql: string | null }>();
  for (const r of rows) if (!IGNORED.test(r.name)) m.set(`${r.type} ${r.name}`, { type: r.type, sql: r.sql });
  return m;
}

function tablesOf(db: Database.Database): string[] {
  return (db.prepare(`SELECT name FROM sqlite_master WHERE type = 'table'`).pluck().all() as string[]).filter((n) => !IGNORED.test(n));
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Every column, in a total order that depends only on the content (rowids are not content). */
function orderedRows(db: Database.Database, table: string): IterableIterator<Row> {
  const cols = (db.prepare(`SELECT name FROM pragma_table_info(?)`).pluck().all(table) as string[]).length;
  const order = Array.from({ length: cols }, (_, i) => String(i + 1)).join(', ');
  const stmt = db.prepare(`SELECT * FROM ${quoteIdent(table)}${cols > 0 ? ` ORDER BY ${order}` : ''}`).raw(true);
  return stmt.iterate() as IterableIterator<Row>;
}

function feed(h: Hash, row: Row): void {
  for (const v of row) {
    if (v === null) h.update('N');
    else if (typeof v === 'bigint') h.update(`I${v};`);
    else if (typeof v === 'number') h.update(`R${v};`);
    else if (typeof v === 'string') {
      const b = Buffer.from(v, 'utf8');
      h.update(`T${b.length};`);
      h.update(b);
    } else if (Buffer.isBuffer(v)) {
      h.update(`B${v.length};`);
      h.update(v);
    } else h.update(`?${String(v)};`);
  }
  h.update('\n');
}

function sameRow(x: Row, y: Row): boolean {
  if (x.length !== y.length) return false;
  for (let i = 0; i < x.length; i++) {
    const p = x[i];
    const q = y[i];
    if (Buffer.isBuffer(p) && Buffer.isBuffer(q)) {
      if (!p.equals(q)) return false;
    } else if (p !== q) return false;
  }
  return true;
}

function render(row: Row | undefined): string {
  if (row === undefined) return '(no row)';
  const parts = row.map((v) => {
    if (v === null) return 'NULL';
    if (Buffer.isBuffer(v)) return v.length > 16 ? `x'${v.subarray(0, 16).toString('hex')}…'` : `x'${v.toString('hex')}'`;
    const s = typeof v === 'string' ? `'${v}'` : String(v);
    return s.length > 40 ? `${s.slice(0, 40)}…` : s;
  });
  const text = `(${parts.join(', ')})`;
  return text.length > 200 ? `${text.slice(0, 200)}…)` : text;
}

function summarize(db: Database.Database, table: string): { rows: number; hash: string } {
  const h = createHash('sha256');
  let rows = 0;
  for (const r of orderedRows(db, table)) {
    feed(h, r);
    rows++;
  }
  return { rows, hash: h.digest('hex') };
}

function compareTable(a: Database.Database, b: Database.Database, table: string): TableComparison {
  const ha = createHash('sha256');
  const hb = createHash('sha256');
  const ia = orderedRows(a, table);
  const ib = orderedRows(b, table);
  let na = 0;
  let nb = 0;
  let firstDifference: string | undefined;
  for (;;) {
    const ra = ia.next();
    const rb = ib.next();
    if (!ra.done) {
      feed(ha, ra.value);
      na++;
    }
    if (!rb.done) {
      feed(hb, rb.value);
      nb++;
    }
    if (firstDifference === undefined && (ra.done !== rb.done || (!ra.done && !rb.done && !sameRow(ra.value, rb.value)))) {
      firstDifference = `row ${Math.max(na, nb)} in content order: ${render(ra.done ? undefined : ra.value)} vs ${render(rb.done ? undefined : rb.value)}`;
    }
    if (ra.done && rb.done) break;
  }
  const hash = ha.digest('hex');
  const otherHash = hb.digest('hex');
  const equal = na === nb && hash === otherHash;
  const c: TableComparison = { table, rows: na, otherRows: nb, hash, otherHash, equal };
  if (!equal && firstDifference !== undefined) c.firstDifference = firstDifference;
  return c;
}
