/**
 * socket: hook latency over loopback, beside the server disk's own floor measured in the same run.
 *
 *   node dist/bench/socket.js [--n 3000] [--bytes 1024] [--nodes 10] [--dir DIR]
 *
 * 1. floor: write+fdatasync of one record on the server's disk (what no server can beat);
 * 2. one node: the built plugin driven over FIFOs (as lightningd does), backup.lock socket:127.0.0.1:PORT,
 *    `clnvault server` storing into a v2 file on that disk; db_write latency as lightningd sees it;
 *    The same through clnvault's own mode (clnvault://, TLS-PSK, server --dir).
 * 3. N nodes at once through one `clnvault server --dir` (each its own key and backup, all on one disk):
 *    aggregate writes/s, p99 per node.
 */
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createV2 } from '../src/backends/file/v2.js';
import { FifoDriver } from './driver.js';
import { batch, measureFloor } from './plugin.js';
import { fmtUs, summarize, type Summary } from './stats.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const SELF = fileURLToPath(import.meta.url);

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '3000' },
    bytes: { type: 'string', default: '1024' },
    nodes: { type: 'string', default: '10' },
    dir: { type: 'string' },
    // internal: run one node against PORT and print its latencies as JSON
    'one-node': { type: 'string' },
    node: { type: 'string' },
    key: { type: 'string' },
  },
});
const n = Number(values.n);
const bytes = Number(values.bytes);

/** `nodes` > 0: clnvault's own mode (server --dir with nodes n0, n1, ...); returns their keys */
async function startServer(dir: string, nodes = 0): Promise<{ port: number; keys: string[]; kill: () => Promise<void> }> {
  const keys: string[] = [];
  let args: string[];
  if (nodes > 0) {
    for (let i = 0; i < nodes; i++) {
      const out = execFileSync(process.execPath, [CLI, 'server', 'add-node', '--dir', dir, `n${i}`], { encoding: 'utf8' });
      keys.push(/echo ([0-9a-f]{64})/.exec(out)![1]!);
    }
    args = ['--dir', dir, '--listen', '127.0.0.1:0'];
  } else {
    const file = join(dir, 'srv.bkp');
    createV2(file);
    args = [`file://${file}`, '127.0.0.1:0'];
  }
  const child = spawn(process.execPath, [CLI, 'server', ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
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
    port,
    keys,
    kill: async () => {
      child.kill('SIGTERM');
      await once(child, 'exit');
    },
  };
}

/** One node: warm-up calls (not counted), then `count` timed calls. */
/** `node`: clnvault's own mode as that node (name and key); plain socket: otherwise */
async function runNode(dir: string, port: number, count: number, warmup: number, node: { name: string; key: string } | null = null): Promise<{ lat: number[]; seconds: number }> {
  const nd = mkdtempSync(join(dir, 'nd-'));
  if (node !== null) writeFileSync(join(nd, 'clnvault-remote.key'), node.key, { mode: 0o600 });
  const url = node === null ? `socket:127.0.0.1:${port}` : `clnvault://${node.name}@127.0.0.1:${port}`;
  writeFileSync(join(nd, 'backup.lock'), JSON.stringify({ backend_url: url }));
  const d = new FifoDriver(nd);
  d.call(`{"jsonrpc":"2.0","id":"m","method":"getmanifest","params":{}}\n\n`, 'm');
  const lat: number[] = [];
  let t0 = 0n;
  for (let dv = 1; dv <= warmup + count; dv++) {
    if (dv === warmup + 1) t0 = process.hrtime.bigint();
    const id = `w${dv}`;
    const msg = Buffer.from(`${JSON.stringify({ jsonrpc: '2.0', id, method: 'db_write', params: { data_version: dv, writes: batch(dv, bytes) } })}\n\n`);
    const s = process.hrtime.bigint();
    const reply = d.call(msg, id);
    if (!reply.includes('"continue"')) throw new Error(`db_write refused: ${reply}`);
    if (dv > warmup) lat.push(Number(process.hrtime.bigint() - s) / 1000);
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  await d.close();
  rmSync(nd, { recursive: true, force: true });
  return { lat, seconds };
}

function line(name: string, s: Summary): string {
  return `${name.padEnd(44)} p50 ${fmtUs(s.p50).padStart(10)}  p99 ${fmtUs(s.p99).padStart(10)}  max ${fmtUs(s.max).padStart(10)}`;
}

async function main(): Promise<void> {
  if (values['one-node'] !== undefined) {
    const node = values.node === undefined ? null : { name: values.node, key: values.key! };
    const r = await runNode(values.dir!, Number(values['one-node']), n, 200, node);
    process.stdout.write(JSON.stringify(r));
    return;
  }
  const dir = values.dir ?? mkdtempSync(join(tmpdir(), 'clnvault-bench-socket-'));
  const nodes = Number(values.nodes);
  console.log(`socket: bench, ${n} db_writes of ~${bytes} B per node, load average before: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  const floor = measureFloor(dir, bytes + 64, Math.min(n, 2000));
  const srv = await startServer(mkdtempSync(join(dir, 's-')));
  const one = await runNode(dir, srv.port, n, 1000);
  await srv.kill();
  const tlsSrv = await startServer(mkdtempSync(join(dir, 't-')), 1);
  const tlsRun = await runNode(dir, tlsSrv.port, n, 1000, { name: 'n0', key: tlsSrv.keys[0]! });
  await tlsSrv.kill();
  const floor2 = measureFloor(dir, bytes + 64, Math.min(n, 2000));
  const s1 = summarize(one.lat);
  console.log(line('floor: write+fdatasync, server disk (before)', floor.latencyUs));
  console.log(line('floor: write+fdatasync, server disk (after)', floor2.latencyUs));
  console.log(line('db_write via socket: to clnvault server', s1));
  const s2 = summarize(tlsRun.lat);
  console.log(line('db_write via clnvault:// (TLS-PSK) to server --dir', s2));
  const floorP50 = Math.max(floor.latencyUs.p50, floor2.latencyUs.p50);
  console.log(`clnvault:// p50 over the floor: ${fmtUs(s2.p50 - floorP50)}`);
  console.log(`socket: p50 over the floor: ${fmtUs(s1.p50 - floorP50)} (target: within 150 µs; floor p50 = the larger of the two floor runs, ${fmtUs(floorP50)}; both are fdatasync-bound, so on a loaded VM the difference is within the disk's own noise and can come out negative)`);

  const multi = await startServer(mkdtempSync(join(dir, 'm-')), nodes);
  const t0 = Date.now();
  const runs = await Promise.all(
    multi.keys.map(async (key, i) => {
      const c = spawn(process.execPath, [SELF, '--one-node', String(multi.port), '--node', `n${i}`, '--key', key, '--n', String(Math.max(100, Math.floor(n / 5))), '--bytes', String(bytes), '--dir', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      c.stdout.setEncoding('utf8');
      c.stdout.on('data', (d: string) => (out += d));
      await once(c, 'exit');
      return JSON.parse(out) as { lat: number[]; seconds: number };
    }),
  );
  const wall = (Date.now() - t0) / 1000;
  await multi.kill();
  const total = runs.reduce((a, r) => a + r.lat.length, 0);
  const p99s = runs.map((r) => summarize(r.lat).p99).sort((a, b) => a - b);
  console.log(`${nodes} nodes at once through one clnvault server --dir (clnvault://, each its own key and backup, one disk): ${(total / Math.max(...runs.map((r) => r.seconds))).toFixed(0)} writes/s aggregate over the slowest node's run (${wall.toFixed(1)} s wall incl. start-up)`);
  console.log(`  p99 per node: ${p99s.map(fmtUs).join(', ')}`);
  console.log(`  p50 all nodes: ${fmtUs(summarize(runs.flatMap((r) => r.lat)).p50)}; load average after: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  if (values.dir === undefined) rmSync(dir, { recursive: true, force: true });
}

await main();
