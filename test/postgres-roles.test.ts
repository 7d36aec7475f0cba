/**
 * Twenty nodes' backups in one database, each written by its own role: a role sees, changes and
 * restores only its own backup (row-level security keyed on the owner role; docs/postgresql.md).
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { openPgWriter } from '../src/backends/postgres/index.js';
import { runCli, show } from './helpers/cli.js';
import { dump } from './helpers/sqlite.js';
import { PG_DB, PG_SKIP, PgServer } from './helpers/postgres.js';

const NODES = 20;
let server: PgServer;
let dir: string;

describe('twenty nodes in one database', { skip: PG_SKIP }, () => {
  before(async () => {
    server = await PgServer.startWithSchema();
    dir = mkdtempSync(join(tmpdir(), 'clnvault-pgroles-'));
  });
  after(async () => {
    await server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('each role reads, writes and restores only its own backup', { timeout: 300_000 }, async () => {
    const names = Array.from({ length: NODES }, (_, i) => `node${i + 1}`);
    for (const n of names) {
      await server.createNodeRole(n, `pw-${n}`);
      const r = await runCli(['init', server.url(n, `pw-${n}`, n)], { cwd: dir });
      assert.equal(r.code, 0, show(r));
    }
    // every node writes its own history (the plugin's writer, one INSERT per batch)
    for (const [i, n] of names.entries()) {
      const w = openPgWriter(server.url(n, `pw-${n}`, n), null);
      try {
        w.appendChange(1, [
          'CREATE TABLE vars (name TEXT PRIMARY KEY, intval INTEGER)',
          `INSERT INTO vars VALUES ('owner', ${i})`,
          `INSERT INTO vars VALUES ('data_version', 1)`,
        ]);
        for (let v = 2; v <= 3 + i; v++) {
          w.appendChange(v, [`INSERT INTO vars VALUES ('${n}-${v}', ${v})`, `UPDATE vars SET intval = ${v} WHERE name = 'data_version'`]);
        }
      } finally {
        w.close();
      }
    }
    const ids = new Map<string, number>();
    const admin = await server.superClient();
    for (const r of (await admin.query('SELECT id, name FROM clnvault.backups')).rows) ids.set(r.name, Number(r.id));
    await admin.end();

    for (const [i, n] of names.entries()) {
      const c = new pg.Client({ connectionString: `postgresql://${n}:pw-${n}@127.0.0.1:${server.port}/${PG_DB}` });
      await c.connect();
      try {
        const mine = ids.get(n)!;
        const other = ids.get(names[(i + 1) % NODES]!)!;
        assert.deepEqual((await c.query('SELECT name FROM clnvault.backups')).rows, [{ name: n }]);
        const seen = (await c.query('SELECT DISTINCT backup_id FROM clnvault.entries')).rows.map((r) => Number(r.backup_id));
        assert.deepEqual(seen, [mine]);
        assert.equal(Number((await c.query('SELECT count(*) AS n FROM clnvault.entries')).rows[0].n), 3 + i);
        assert.equal((await c.query('SELECT * FROM clnvault.entries WHERE backup_id = $1', [other])).rowCount, 0);
        assert.equal((await c.query('DELETE FROM clnvault.entries WHERE backup_id = $1', [other])).rowCount, 0);
        assert.equal((await c.query('UPDATE clnvault.backups SET owner = current_user WHERE id = $1', [other]).catch((e: Error) => e)) instanceof Error, true);
        await assert.rejects(
          c.query(`INSERT INTO clnvault.entries (backup_id, seq, kind, version, statements, bytes) VALUES ($1, 999, 0, 999, ARRAY['DROP TABLE vars'], 1)`, [other]),
          /row-level security/,
        );
        await assert.rejects(c.query(`INSERT INTO clnvault.backups (name, owner) VALUES ('stolen', $1)`, [names[(i + 1) % NODES]]), /row-level security/);
        // nor rows for a backup that does not exist (the policy refuses them; no foreign key does since schema migration 4)
        await assert.rejects(
          c.query(`INSERT INTO clnvault.entries (backup_id, seq, kind, version, statements, bytes) VALUES (999999, 1, 0, 1, ARRAY['x'], 1)`),
          /row-level security/,
        );
      } finally {
        await c.end();
      }
      // clnvault itself, with this role's credentials and another's backup name: nothing to see
      const peek = await runCli(['inspect', server.url(n, `pw-${n}`, names[(i + 1) % NODES]!)], { cwd: dir });
      assert.notEqual(peek.code, 0, show(peek));
      assert.match(peek.stderr, /no backup "node\d+" that this role can see/);
      // and its own restores to exactly its own rows
      const dest = join(dir, `restored-${n}`);
      mkdirSync(dest);
      const r = await runCli(['restore', server.url(n, `pw-${n}`, n), dest], { cwd: dir });
      assert.equal(r.code, 0, show(r));
      const d = dump(join(dest, 'lightningd.sqlite3'));
      assert.match(d, new RegExp(`'owner',${i}\\)`));
      for (const other of names) if (other !== n) assert.doesNotMatch(d, new RegExp(`'${other}-`));
    }
  });
});
