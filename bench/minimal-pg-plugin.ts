/**
 * The least a db_write plugin written in Node can do with PostgreSQL, for bench/postgres.ts to run beside
 * clnvault's: stdin read by the event loop (as leanly as clnvault reads it), JSON.parse, one prepared single-row INSERT in autocommit with
 * `pg` (the floor's statement and table shape), answer. No versions, no lock, no row-level security, no
 * timeouts. Its gap to the floor (the same INSERT from a client that is not a plugin) is what the plugin
 * protocol costs on this machine: two pipe wake-ups per call, moving and parsing the JSON.
 *
 *   CLNVAULT_MINIMAL_PG_URL=postgresql://... node dist/bench/minimal-pg-plugin.js
 */
import { writeSync } from 'node:fs';
import { Socket, type OnReadOpts, type SocketConstructorOpts } from 'node:net';
import pg from 'pg';

const client = new pg.Client({ connectionString: process.env.CLNVAULT_MINIMAL_PG_URL, application_name: 'clnvault minimal plugin' });
await client.connect();
await client.query('CREATE TABLE IF NOT EXISTS bench_minimal (id bigserial PRIMARY KEY, k bigint NOT NULL, v text[] NOT NULL)');

const answer = (id: unknown, result: string): void => {
  writeSync(1, `{"jsonrpc":"2.0","id":${JSON.stringify(id)},"result":${result}}\n\n`);
};

// fd 0 read on the event loop straight into one buffer (net.Socket's onread), as clnvault's own async
// stdin does: no stream machinery, no per-chunk allocation
let buf = Buffer.allocUnsafe(1 << 20);
let have = 0;
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
const opts: SocketConstructorOpts & { onread: OnReadOpts } = {
  fd: 0,
  readable: true,
  writable: false,
  onread: {
    buffer: () => {
      if (buf.length - have < 65536) {
        const bigger = Buffer.allocUnsafe(buf.length * 2);
        buf.copy(bigger, 0, 0, have);
        buf = bigger;
      }
      return buf.subarray(have);
    },
    callback: (n: number) => {
      have += n;
      let start = 0;
      let sep: number;
      while ((sep = buf.indexOf('\n\n', start)) >= 0 && sep + 2 <= have) {
        handle(JSON.parse(buf.toString('utf8', start, sep)));
        start = sep + 2;
      }
      buf.copy(buf, 0, start, have);
      have -= start;
      return true;
    },
  },
};
const sock = new Socket(opts);
sock.on('end', () => {
  void busy.then(() => client.end()).then(() => process.exit(0));
});
