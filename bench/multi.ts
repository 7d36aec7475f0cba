/**
 * Several destinations: db_write hook latency with two and three destinations, beside each destination
 * alone, measured in the same run (issue 15: "hook p50 with two and three destinations beside the slowest
 * and the k-th fastest destination alone").
 *
 *   node dist/bench/multi.js [--n 2000] [--bytes 1024] [--dir DIR]
 *
 * Destinations: a local v2 file, and two `clnvault server`s over TCP on 127.0.0.1 (each storing into a v2
 * file on the same disk). The built plugin is driven over FIFOs as lightningd drives it.
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createV2 } from '../src/backends/file/v2.js';
import { FifoDriver } from './driver.js';
import { batch } from './plugin.js';
import { fmtUs, summarize, type Summary } from './stats.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const { values } = parseArgs({ options: { n: { type: 'string', default: '2000' }, bytes: { type: 'string', default: '1024' }, dir: { type: 'string' } } });
const n = Number(values.n);
const bytes = Number(values.bytes);
const load = (): string => loadavg().map((x) => x.toFixed(2)).join(' ');

async function server(dir: string): Promise<{ url: string; kill: () => Promise<void> }> {
  const file = join(mkdtempSync(join(dir, 's-')), 'srv.bkp');
  createV2(file);
  const child = spawn(process.execPath, [CLI, 'server', `file://${file}`, '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.setEncoding('utf8');
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.on('data', (d: string) => {
      out += d;
      const m = /on [^ ]+:(\d+)\n/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', () => reject(new Error(`server exited: ${out}`)));
  });
  return {
    url: `socket:127.0.0.1:${port}`,
    kill: async () => {
      child.kill('SIGTERM');
      await once(child, 'exit');
    },
  };
}

/** A fresh backup per run: every destination starts empty, as the first write of a new node expects. */
async function run(dir: string, lock: (fresh: () => Promise<string>) => Promise<Record<string, unknown>>, warmup = 200): Promise<Summary> {
  const nd = mkdtempSync(join(dir, 'nd-'));
  const servers: Array<{ kill: () => Promise<void> }> = [];
  const fresh = async (kind = 'file'): Promise<string> => {
    if (kind === 'file') {
      const f = join(mkdtempSync(join(dir, 'f-')), 'local.bkp');
      createV2(f);
      return `file://${f}`;
    }
    const s = await server(dir);
    servers.push(s);
    return s.url;
  };
  writeFileSync(join(nd, 'backup.lock'), JSON.stringify(await lock(fresh as () => Promise<string>)));
  const d = new FifoDriver(nd);
  d.call(`{"jsonrpc":"2.0","id":"m","method":"getmanifest","params":{}}\n\n`, 'm');
  const lat: number[] = [];
  for (let dv = 1; dv <= warmup + n; dv++) {
    const id = `w${dv}`;
    const msg = Buffer.from(`${JSON.stringify({ jsonrpc: '2.0', id, method: 'db_write', params: { data_version: dv, writes: batch(dv, bytes) } })}\n\n`);
    const s = process.hrtime.bigint();
    const reply = d.call(msg, id);
    if (!reply.includes('"continue"')) throw new Error(`db_write refused: ${reply}`);
    if (dv > warmup) lat.push(Number(process.hrtime.bigint() - s) / 1000);
  }
  await d.close();
  for (const s of servers) await s.kill();
  rmSync(nd, { recursive: true, force: true });
  return summarize(lat);
}

function line(name: string, s: Summary): string {
  return `${name.padEnd(52)} p50 ${fmtUs(s.p50).padStart(10)}  p99 ${fmtUs(s.p99).padStart(10)}  max ${fmtUs(s.max).padStart(10)}`;
}

async function main(): Promise<void> {
  const dir = values.dir ?? mkdtempSync(join(tmpdir(), 'clnvault-bench-multi-'));
  console.log(`multi: bench, ${n} db_writes of ~${bytes} B each, load average before: ${load()}`);
  type F = (kind?: string) => Promise<string>;
  const rows: Array<[string, Summary]> = [];
  const add = async (name: string, lock: (f: F) => Promise<Record<string, unknown>>): Promise<void> => {
    const s = await run(dir, lock as never);
    rows.push([name, s]);
    console.log(line(name, s));
  };
  await add('file alone (backend_url)', async (f) => ({ backend_url: await f('file') }));
  await add('socket alone (backend_url)', async (f) => ({ backend_url: await f('socket') }));
  await add('file alone, as "destinations": [file]', async (f) => ({ destinations: [await f('file')] }));
  await add('socket alone, as "destinations": [socket]', async (f) => ({ destinations: [await f('socket')] }));
  await add('2 destinations file + socket, ack 1', async (f) => ({ destinations: [await f('file'), await f('socket')], ack: 1 }));
  await add('2 destinations file + socket, ack all', async (f) => ({ destinations: [await f('file'), await f('socket')], ack: 'all' }));
  await add('2 destinations socket + socket, ack all', async (f) => ({ destinations: [await f('socket'), await f('socket')], ack: 'all' }));
  await add('3 destinations file + 2 sockets, ack 2', async (f) => ({ destinations: [await f('file'), await f('socket'), await f('socket')], ack: 2 }));
  await add('3 destinations file + 2 sockets, ack all', async (f) => ({ destinations: [await f('file'), await f('socket'), await f('socket')], ack: 'all' }));
  console.log(`load average after: ${load()}`);
  console.log('read: with ack 1 the k-th fastest alone is the file; with ack all / ack 2 of file+2 sockets it is a socket (the slowest alone)');
  if (values.dir === undefined) rmSync(dir, { recursive: true, force: true });
}

await main();
