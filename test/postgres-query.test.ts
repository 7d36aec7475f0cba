/**
 * The hot INSERT's query object (worker.ts runNamed): it stays a prepared statement of the session (parsed
 * once, then only Bind/Execute per db_write), passes its values, and rejects with PostgreSQL's error.
 * Against a real server: the name is set on pg's Query after construction, so a pg release that read it
 * elsewhere would silently re-parse every write; this test would catch that.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { runNamed } from '../src/backends/postgres/worker.js';
import { PG_SKIP, PgServer } from './helpers/postgres.js';

let server: PgServer;
let c: pg.Client;

describe('the prepared INSERT of each db_write', { skip: PG_SKIP }, () => {
  before(async () => {
    server = await PgServer.start();
    c = await server.superClient();
    await c.query('CREATE TABLE q (k bigint PRIMARY KEY, v text[] NOT NULL)');
  });
  after(async () => {
    await c?.end();
    await server?.stop();
  });

  it('is parsed once per session and run by name, with its values', async () => {
    const text = 'INSERT INTO q (k, v) VALUES ($1, $2)';
    for (let k = 1; k <= 3; k++) await runNamed(c, 'clnvault_test_insert', text, [k, [`INSERT INTO t VALUES (${k})`, "it's"]]);
    const rows = (await c.query('SELECT k, v FROM q ORDER BY k')).rows as Array<{ k: string; v: string[] }>;
    assert.deepEqual(rows.map((r) => [Number(r.k), r.v]), [1, 2, 3].map((k) => [k, [`INSERT INTO t VALUES (${k})`, "it's"]]));
    const prepared = (await c.query('SELECT name, statement FROM pg_prepared_statements')).rows as Array<{ name: string; statement: string }>;
    assert.deepEqual(prepared, [{ name: 'clnvault_test_insert', statement: text }]);
  });

  it("rejects with the server's error and code, and the session goes on", async () => {
    const text = 'INSERT INTO q (k, v) VALUES ($1, $2)';
    await assert.rejects(runNamed(c, 'clnvault_test_insert', text, [1, ['again']]), (e: Error & { code?: string }) => e.code === '23505');
    await runNamed(c, 'clnvault_test_insert', text, [4, ['next']]);
    assert.equal(Number((await c.query('SELECT count(*) AS n FROM q')).rows[0].n), 4);
  });
});
