/**
 * The least a db_write plugin written in Node can do with PostgreSQL, for bench/postgres.ts to run beside
 * clnvault's: stdin read by the event loop (clnvault's own src/plugin/stdin.ts), JSON.parse, one prepared single-row INSERT in autocommit with
 * `pg` (the floor's statement and table shape), answer. No versions, no lock, no row-level security, no
 * timeouts. Its gap to the floor (the same INSERT from a client that is not a plugin) is what the plugin
 * protocol costs on this machine: two pipe wake-ups per call, moving and parsing the JSON.
 *
 *   CLNVAULT_MINIMAL_PG_URL=postgresql://... node dist/bench/minimal-pg-plugin.js
 */
import { writeSync } from 'node:fs';
import pg from 'pg';
import { serveStdinAsync } from '../src/plugin/stdin.js';

const client = new pg.Client({ connectionString: process.env.CLNVAULT_MINIMAL_PG_URL, application_name: 'clnvault minimal plugin' });
await client.connect();
await client.query('CREATE TABLE IF NOT EXISTS bench_minimal (id bigserial PRIMARY KEY, k bigint NOT NULL, v text[] NOT NULL)');

const answer = (id: unknown, result: string): void => {
  writeSync(1, `{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":${result}}\n\n`);
};

let busy: Promise<void> = Promise.resolve();
const handle = (msg: { id: unknown; method: string; params: { data_version: number; writes: string[] } }): void => {
  // one at a time, in order, as lightningd's hook calls are
  busy = busy.then(async () => {
    if (msg.method === 'db_write') {
      await client.query({ name: 'minimal', text: 'INSERT INTO bench_minimal (k, v) VALUES ($1, $2)', values: [msg.params.data_version, msg.params.writes] });
      answer(msg.id, '{"result":"continue"}');
    } else if (msg.method === 'getmanifest') {
      answer(msg.id, '{"options":[],"rpcmethods":[],"hooks":[{"name":"db_write"}],"dynamic":false}');
    } else {
      answer(msg.id, '{}');
    }
  });
};
// clnvault's own event-loop stdin (fd 0 read by net.Socket's onread straight into one buffer, split there):
// the protocol costs the same on both sides of the comparison
serveStdinAsync({
  onMessage: (buf, start, end) => handle(JSON.parse(buf.toString('utf8', start, end))),
  onEnd: () => void busy.then(() => client.end()).then(() => process.exit(0)),
  onFrameError: (e) => {
    process.stderr.write(`minimal-pg-plugin: ${e.message}\n`);
    process.exit(1);
  },
});
