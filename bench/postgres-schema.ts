/**
 * Where the PostgreSQL backend's time per db_write INSERT goes (docs/postgresql.md, "Where the time goes"):
 * the backend CPU of one single-row INSERT + COMMIT into clnvault.entries as a node role, beside the same
 * into the hook bench's floor table and into copies of entries with one part taken away (row-level
 * security, the version index, the payload CHECK) or put back (schema version 4's CHECKs on kind and version
 * instead of the domains). Same server, same role, same 1 KiB row; the variants interleave in blocks.
 *
 * Two paths, both with synchronous_commit off in the measuring sessions (the WAL flush is the same for
 * every variant and only adds noise: this measures CPU, not durability):
 * - protocol: the plugin's own prepared INSERT from a client connection (Bind/Execute/Sync per row);
 * - loop: a procedure doing INSERT; COMMIT per row on the server (no protocol, no client: the steadiest).
 *
 *   node dist/bench/postgres-schema.js [--blocks 30] [--block 100] [--loop-rows 500]
 */
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { batch } from './plugin.js';
import { procCpuNs } from './stats.js';
import { findPgBin, PG_DB, PgServer } from '../test/helpers/postgres.js';
import { runCli } from '../test/helpers/cli.js';

const ROLE = 'bench_node';
const POLICY = (t: string): string =>
  `ALTER TABLE bench.${t} ENABLE ROW LEVEL SECURITY; CREATE POLICY own ON bench.${t} USING (EXISTS (SELECT 1 FROM clnvault.backups b WHERE b.id = ${t}.backup_id))`;
const COPY = (t: string): string => `CREATE TABLE bench.${t} (LIKE clnvault.entries INCLUDING ALL)`;

/** name -> DDL (after it, INSERT is granted to the node role); 'entries' is clnvault's own table */
const VARIANTS: Record<string, string | null> = {
  floor: 'CREATE TABLE bench.floor (id bigserial PRIMARY KEY, k bigint NOT NULL, v text[] NOT NULL)',
  entries: null,
  no_rls: COPY('no_rls'),
  no_version_index: `${COPY('no_version_index')}; DROP INDEX bench.no_version_index_backup_id_version_idx; ${POLICY('no_version_index')}`,
  no_payload_check: `${COPY('no_payload_check')}; ALTER TABLE bench.no_payload_check DROP CONSTRAINT entries_payload; ${POLICY('no_payload_check')}`,
  v4_checks: `${COPY('v4_checks')}; ALTER TABLE bench.v4_checks ALTER COLUMN kind TYPE smallint, ALTER COLUMN version TYPE bigint,
    ADD CHECK (kind IN (0, 1)), ADD CHECK (version >= 0 AND version < 4294967296); ${POLICY('v4_checks')}`,
};

function table(v: string): string {
  return v === 'entries' ? 'clnvault.entries' : `bench.${v}`;
}

function insertSql(v: string): string {
  if (v === 'floor') return 'INSERT INTO bench.floor (k, v) VALUES ($1, $2)';
  // the plugin's statement (src/backends/postgres/worker.ts)
  return `INSERT INTO ${table(v)} (backup_id, seq, kind, version, pragma_only, statements, bytes) VALUES ($1, $2, 0, $3::bigint, $4, $5, $6)`;
}

interface Figures {
  median: number;
  q1: number;
  q3: number;
}

function figures(xs: number[]): Figures {
  const s = [...xs].sort((a, b) => a - b);
  const at = (p: number): number => s[Math.min(s.length - 1, Math.floor(s.length * p))]!;
  return { median: at(0.5), q1: at(0.25), q3: at(0.75) };
}

export interface SchemaBenchResult {
  load: number[];
  /** backend CPU per INSERT + COMMIT, µs */
  protocol: Record<string, Figures>;
  loop: Record<string, Figures>;
}

export async function benchPgSchema(opts: { blocks: number; block: number; loopRows: number }): Promise<SchemaBenchResult> {
  const server = await PgServer.startWithSchema();
  const clients: pg.Client[] = [];
  try {
    await server.createNodeRole(ROLE, `pw-${ROLE}`);
    const init = await runCli(['init', server.url(ROLE, `pw-${ROLE}`, ROLE)]);
    if (init.code !== 0) throw new Error(init.stderr);
    const su = await server.superClient();
    clients.push(su);
    const backupId = Number((await su.query('SELECT id FROM clnvault.backups WHERE name = $1', [ROLE])).rows[0].id);
    await su.query('CREATE SCHEMA bench; GRANT USAGE ON SCHEMA bench TO clnvault_node');
    const names = Object.keys(VARIANTS);
    for (const v of names) {
      const ddl = VARIANTS[v];
      if (ddl !== null) await su.query(ddl);
      await su.query(`GRANT INSERT ON ${table(v)} TO clnvault_node`);
      const row =
        v === 'floor'
          ? `INSERT INTO bench.floor (k, v) VALUES (i, ARRAY[repeat('x', 1000)])`
          : `INSERT INTO ${table(v)} (backup_id, seq, kind, version, pragma_only, statements, bytes) VALUES (${backupId}, i, 0, i::bigint, false, ARRAY[repeat('x', 1000)], 1000)`;
      await su.query(`CREATE PROCEDURE bench.fill_${v}(a bigint, b bigint) LANGUAGE plpgsql AS $$ BEGIN FOR i IN a..b LOOP ${row}; COMMIT; END LOOP; END $$`);
      await su.query(`GRANT EXECUTE ON PROCEDURE bench.fill_${v}(bigint, bigint) TO clnvault_node`);
    }
    await su.query('GRANT USAGE ON SEQUENCE bench.floor_id_seq TO clnvault_node');

    // one connection per variant for the protocol path (each keeps its prepared statement), one for the loops
    const conn = async (): Promise<{ c: pg.Client; pid: number }> => {
      const c = new pg.Client({ connectionString: `postgresql://${ROLE}:pw-${ROLE}@127.0.0.1:${server.port}/${PG_DB}` });
      await c.connect();
      clients.push(c);
      await c.query('SET synchronous_commit = off');
      return { c, pid: Number((await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid) };
    };
    const proto = new Map<string, { c: pg.Client; pid: number }>();
    for (const v of names) proto.set(v, await conn());
    const looper = await conn();

    const load = [loadavg()[0]!];
    const protoUs = new Map<string, number[]>(names.map((v) => [v, []]));
    const loopUs = new Map<string, number[]>(names.map((v) => [v, []]));
    // separate key ranges: the protocol path from 1, the loops from 10^9 (seq is only a key here; versions stay below 2^32)
    let key = 1;
    let loopKey = 1e9;
    for (let b = 0; b <= opts.blocks; b++) {
      // the order flips every block, so a load that rises or falls through a block favours no variant; block 0 warms up
      for (const v of b % 2 === 0 ? names : [...names].reverse()) {
        const { c, pid } = proto.get(v)!;
        const text = insertSql(v);
        const c0 = procCpuNs(pid);
        for (let j = 0; j < opts.block; j++, key++) {
          const rows = batch(key, 1024);
          const values = v === 'floor' ? [key, rows] : [backupId, key, key, false, rows, 1000];
          await c.query({ name: 'ins', text, values });
        }
        if (b > 0) protoUs.get(v)!.push((procCpuNs(pid) - c0) / 1000 / opts.block);
        const l0 = procCpuNs(looper.pid);
        await looper.c.query(`CALL bench.fill_${v}($1, $2)`, [loopKey, loopKey + opts.loopRows - 1]);
        loopKey += opts.loopRows;
        if (b > 0) loopUs.get(v)!.push((procCpuNs(looper.pid) - l0) / 1000 / opts.loopRows);
      }
    }
    load.push(loadavg()[0]!);
    return {
      load,
      protocol: Object.fromEntries(names.map((v) => [v, figures(protoUs.get(v)!)])),
      loop: Object.fromEntries(names.map((v) => [v, figures(loopUs.get(v)!)])),
    };
  } finally {
    for (const c of clients) await c.end().catch(() => undefined);
    await server.stop();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      blocks: { type: 'string', default: '30' },
      block: { type: 'string', default: '100' },
      'loop-rows': { type: 'string', default: '500' },
    },
  });
  if (findPgBin() === null) {
    console.error('PostgreSQL binaries missing (apt-get install postgresql)');
    process.exit(2);
  }
  const r = await benchPgSchema({ blocks: Number(values.blocks), block: Number(values.block), loopRows: Number(values['loop-rows']) });
  const fmt = (f: Figures): string => `${f.median.toFixed(1)} µs (quartiles ${f.q1.toFixed(1)}-${f.q3.toFixed(1)})`;
  console.log(`backend CPU per single-row INSERT + COMMIT (synchronous_commit off), as a node role; load ${r.load.map((l) => l.toFixed(2)).join(' -> ')}`);
  console.log(`  ${'variant'.padEnd(18)} ${'protocol (the plugin\'s prepared INSERT)'.padEnd(40)} loop (procedure, no client)`);
  for (const v of Object.keys(r.protocol)) console.log(`  ${v.padEnd(18)} ${fmt(r.protocol[v]!).padEnd(40)} ${fmt(r.loop[v]!)}`);
  console.log(JSON.stringify(r));
}
