/**
 * Schema migration 5 (src/backends/postgres/schema.ts) on a database with data: a schema version 4
 * database holding a real backup (snapshot, compaction, a restart, PRAGMA-only batches) is migrated in
 * place by `clnvault init --schema-only` without rewriting the table; it then restores to the same
 * database, a plugin of this release goes on writing into it, and the kind and version rules hold as
 * before (now the columns' domains).
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { SimNode } from '../src/sim/lightningd.js';
import { MIGRATIONS } from '../src/backends/postgres/schema.js';
import { FIXTURES } from './helpers/fixtures.js';
import { runCli, show } from './helpers/cli.js';
import { dump } from './helpers/sqlite.js';
import { PG_SKIP, PG_SUPERPASS, PgServer } from './helpers/postgres.js';

const CLN = join(FIXTURES, 'cln-v26.06.6');
const dirs: string[] = [];
let server: PgServer;

function scratch(): string {
  const d = mkdtempSync(join(tmpdir(), 'clnvault-pgmig-'));
  dirs.push(d);
  return d;
}

const superUrl = (db: string, backup: string): string => `postgresql://postgres:${PG_SUPERPASS}@127.0.0.1:${server.port}/${db}?backup=${backup}`;

async function restoreDump(dir: string, url: string): Promise<string> {
  const dest = join(dir, `restored-${Math.random().toString(16).slice(2)}`);
  mkdirSync(dest);
  const r = await runCli(['restore', url, dest], { cwd: dir });
  assert.equal(r.code, 0, show(r));
  return dump(join(dest, 'lightningd.sqlite3'));
}

/** A new database with clnvault's schema at `version`, as the releases that stopped there left it. */
async function oldDatabase(name: string, version: number): Promise<pg.Client> {
  const c = await server.superClient();
  try {
    await c.query(`CREATE DATABASE ${name}`);
  } finally {
    await c.end();
  }
  const o = await server.superClient(name);
  await o.query('CREATE SCHEMA clnvault');
  await o.query('CREATE TABLE clnvault.schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())');
  for (let v = 1; v <= version; v++) {
    await o.query(MIGRATIONS[v - 1]!);
    await o.query('INSERT INTO clnvault.schema_version(version) VALUES ($1)', [v]);
  }
  return o;
}

const ENTRY_COLUMNS = 'seq, kind, version, pragma_only, statements, bytes, chunks';

describe('PostgreSQL schema migration 5 on a database with data', { skip: PG_SKIP }, () => {
  before(async () => {
    server = await PgServer.startWithSchema();
  });
  after(async () => {
    await server?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('a version 4 database with a backup migrates in place, rewrites nothing, restores the same and takes new writes', { timeout: 240_000 }, async () => {
    // a history written by the real plugin (into the suite's current database), copied row for row into a
    // version 4 database below: the rows a release before migration 5 wrote are the same
    const { url, role, backup } = await server.nodeRole('mig', 'native');
    const dir = scratch();
    const netDir = join(dir, 'regtest');
    mkdirSync(netDir);
    const init = await runCli(['init', '--lightning-dir', netDir, url], { cwd: dir });
    assert.equal(init.code, 0, show(init));
    const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000 });
    try {
      let r = await node.replay(join(CLN, 'session-basic/hooks.jsonl'));
      assert.equal(r.failure, undefined, JSON.stringify(r.failure));
      await node.stop();
      const compact = await runCli(['compact', url], { cwd: dir });
      assert.equal(compact.code, 0, show(compact));
      await node.restart();
      r = await node.replay(join(CLN, 'session-basic/hooks-restart.jsonl'));
      assert.equal(r.failure, undefined, JSON.stringify(r.failure));
      // a table rebuild's PRAGMA-only batches repeat the version they follow
      assert.equal((await node.pragma('PRAGMA foreign_keys = OFF')).answered, 'continue');
      assert.equal((await node.pragma('PRAGMA foreign_keys = ON')).answered, 'continue');
    } finally {
      await node.stop();
    }
    const expected = await restoreDump(dir, url);

    const s = await server.superClient();
    const old = await oldDatabase('clnvault_v4', 4);
    try {
      const id = Number((await s.query('SELECT id FROM clnvault.backups WHERE owner = $1', [role])).rows[0].id);
      const rows = (await s.query(`SELECT ${ENTRY_COLUMNS} FROM clnvault.entries WHERE backup_id = $1 ORDER BY seq, kind`, [id])).rows;
      assert.ok(rows.length > 10 && rows.some((x) => Number(x.kind) === 1) && rows.some((x) => x.pragma_only === true), `${rows.length} rows`);
      const oid = Number((await old.query(`INSERT INTO clnvault.backups (name, uid) VALUES ($1, $2) RETURNING id`, [backup, Buffer.alloc(16, 7)])).rows[0].id);
      for (const x of rows) {
        await old.query(`INSERT INTO clnvault.entries (backup_id, ${ENTRY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`, [
          oid,
          x.seq,
          x.kind,
          x.version,
          x.pragma_only,
          x.statements,
          x.bytes,
          x.chunks,
        ]);
      }
      for (const ch of (await s.query('SELECT seq, chunk, data FROM clnvault.snapshot_chunks WHERE backup_id = $1', [id])).rows) {
        await old.query('INSERT INTO clnvault.snapshot_chunks (backup_id, seq, chunk, data) VALUES ($1, $2, $3, $4)', [oid, ch.seq, ch.chunk, ch.data]);
      }
      const before = (await old.query(`SELECT relfilenode FROM pg_class WHERE oid = 'clnvault.entries'::regclass`)).rows[0].relfilenode;
      const content = (await old.query(`SELECT ${ENTRY_COLUMNS} FROM clnvault.entries ORDER BY seq, kind`)).rows;

      // this release refuses the old schema, naming the fix
      const early = await runCli(['restore', superUrl('clnvault_v4', backup), join(dir, 'early')], { cwd: dir });
      assert.notEqual(early.code, 0, show(early));
      assert.match(early.stderr, /schema version 4, this release needs 5/);

      const m = await runCli(['init', '--schema-only', superUrl('clnvault_v4', 'unused')]);
      assert.equal(m.code, 0, show(m));
      assert.match(m.stdout, /schema version 4 -> 5/);
      assert.equal((await old.query(`SELECT relfilenode FROM pg_class WHERE oid = 'clnvault.entries'::regclass`)).rows[0].relfilenode, before, 'no row was rewritten');
      assert.deepEqual((await old.query(`SELECT ${ENTRY_COLUMNS} FROM clnvault.entries ORDER BY seq, kind`)).rows, content);
      const cons = (await old.query(`SELECT conname FROM pg_constraint WHERE conrelid IN ('clnvault.entries'::regclass, 'clnvault.snapshot_chunks'::regclass) ORDER BY conname`)).rows.map((r) => r.conname);
      assert.deepEqual(cons, ['entries_payload', 'entries_pkey', 'snapshot_chunks_backup_id_seq_kind_fkey', 'snapshot_chunks_kind_check', 'snapshot_chunks_pkey']);
      const idx = (await old.query(`SELECT indexname FROM pg_indexes WHERE schemaname = 'clnvault' AND tablename = 'entries' ORDER BY 1`)).rows.map((r) => r.indexname);
      assert.deepEqual(idx, ['entries_one_per_version', 'entries_pkey']);
      // the rules the dropped CHECKs held, now the domains' (the superuser bypasses row-level security, not these)
      const ins = `INSERT INTO clnvault.entries (backup_id, seq, kind, version, statements, bytes) VALUES (${oid}, 100000, $1, $2, ARRAY['x'], 1)`;
      await assert.rejects(old.query(ins, [2, 99999]), /entry_kind_check/);
      await assert.rejects(old.query(ins, [0, 4294967296]), /entry_version_check/);
      await assert.rejects(old.query(ins, [0, -1]), /entry_version_check/);
      await assert.rejects(old.query(`INSERT INTO clnvault.entries (backup_id, seq, kind, version, bytes) VALUES (${oid}, 100000, 0, 99999, 0)`), /entries_payload/);
    } finally {
      await old.end();
      await s.end();
    }
    assert.equal(await restoreDump(dir, superUrl('clnvault_v4', backup)), expected);

    // a plugin of this release writes on into the migrated backup (the superuser owns nothing: it bypasses row-level security)
    const next = join(dir, 'migrated');
    mkdirSync(next);
    writeFileSync(join(next, 'backup.lock'), JSON.stringify({ backend_url: superUrl('clnvault_v4', backup) }));
    // the node's own database is at the backup's head
    copyFileSync(join(netDir, 'lightningd.sqlite3'), join(next, 'lightningd.sqlite3'));
    const again = new SimNode({ netDir: next, hookSafetyTimeoutMs: 60_000 });
    try {
      await again.start();
      assert.equal((await again.transaction(["INSERT INTO vars (name, intval) VALUES ('after-migration', 5)"])).answered, 'continue');
    } finally {
      await again.stop();
    }
    assert.deepEqual(again.violations, []);
    assert.match(await restoreDump(dir, superUrl('clnvault_v4', backup)), /after-migration/);
  });
});
