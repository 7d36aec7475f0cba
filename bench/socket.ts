/**
 * socket: hook latency over loopback, beside the server disk's own floor measured in the same run.
 *
 *   node dist/bench/socket.js [--n 3000] [--rounds 3] [--warmup 6000] [--bytes 1024] [--nodes 10] [--dir DIR]
 *
 * 1. floor: write+fdatasync of one record on the server's disk (what no server can beat);
 * 2. one node: the built plugin driven over FIFOs (as lightningd does), backup.lock socket:127.0.0.1:PORT,
 *    `clnvault server` storing into a v2 file on that disk; db_write latency as lightningd sees it;
 *    The same through clnvault's own mode (clnvault://, TLS-PSK, server --dir), plain and encrypted (the
 *    node seals every record, the server appends it without the key: docs/encryption.md).
 *    And socket: once more with CLNVAULT_REMOTE_WORKER=1: the connection in a worker thread behind a
 *    synchronous call (the path before the event-loop writer, still used with several destinations), so
 *    the two paths are compared under the same load.
 *    Rounds alternate floor, socket: and clnvault://, so all see the same load; the medians of the
 *    rounds' p50s are compared. Beside each, the CPU time per db_write of the plugin process and of the
 *    server process (all threads, /proc schedstat), a figure the machine's load barely moves.
 *    A second floor, also in each round: a bare Node TCP server in its own process that appends each
 *    packet to a file with fdatasync and answers 9 bytes, driven over loopback by this process. It is the
 *    least any socket server costs on this machine (its TCP stack, its wake-ups, the disk), so the gap
 *    between it and clnvault's path is what clnvault's code adds.
 * 3. N nodes at once through one `clnvault server --dir` (each its own key and backup, all on one disk):
 *    aggregate writes/s, p99 per node.
 */
import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { fdatasyncSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { changePacket } from '../src/backends/socket/protocol.js';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createV2 } from '../src/backends/file/v2.js';
import { FifoDriver } from './driver.js';
import { batch, measureFloor } from './plugin.js';
import { fmtUs, procCpuNs, summarize, type Summary } from './stats.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const SELF = fileURLToPath(import.meta.url);

const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '3000' },
    rounds: { type: 'string', default: '3' },
    // the plugin lives as long as the node; V8 tiers its per-call code up over the first few thousand calls
    warmup: { type: 'string', default: '6000' },
    bytes: { type: 'string', default: '1024' },
    nodes: { type: 'string', default: '10' },
    dir: { type: 'string' },
    // internal: run one node against PORT and print its latencies as JSON
    'one-node': { type: 'string' },
    // internal: the network+disk floor's server (a bare TCP server that appends and fdatasyncs each packet)
    'echo-floor': { type: 'string' },
    node: { type: 'string' },
    key: { type: 'string' },
  },
});
const n = Number(values.n);
const bytes = Number(values.bytes);

/** `nodes` > 0: clnvault's own mode (server --dir with nodes n0, n1, ...); returns their keys */
async function startServer(dir: string, nodes = 0): Promise<{ port: number; pid: number; keys: string[]; kill: () => Promise<void> }> {
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
    pid: child.pid!,
    keys,
    kill: async () => {
      child.kill('SIGTERM');
      await once(child, 'exit');
    },
  };
}

/** One node: warm-up calls (not counted), then `count` timed calls. */
/** `node`: clnvault's own mode as that node (name and key); plain socket: otherwise */
/** The network+disk floor's server: `--echo-floor FILE`; prints its port. */
function echoFloorServer(file: string): void {
  const fd = openSync(file, 'w');
  let pos = 0;
  const srv = createServer((s) => {
    s.setNoDelay(true);
    let buf: Buffer = Buffer.alloc(0);
    s.on('data', (d: Buffer) => {
      buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
      while (buf.length >= 5 && buf.length >= 5 + buf.readUInt32BE(1)) {
        const len = 5 + buf.readUInt32BE(1);
        writeSync(fd, buf, 0, len, pos);
        pos += len;
        fdatasyncSync(fd);
        buf = buf.subarray(len);
        const ack = Buffer.alloc(9);
        ack[0] = 6;
        ack.writeUInt32BE(4, 1);
        s.write(ack);
      }
    });
    s.on('error', () => {});
  });
  srv.listen(0, '127.0.0.1', () => process.stdout.write(`${(srv.address() as { port: number }).port}\n`));
}

/** Round trips of CHANGE-sized packets through the echo-floor server, with its CPU per packet. */
async function measureNetFloor(dir: string, count: number): Promise<{ p50: number; serverCpuUs: number }> {
  const child = spawn(process.execPath, [SELF, '--echo-floor', join(dir, 'echo-floor.bin')], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise<number>((resolve, reject) => {
    child.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())));
    child.once('exit', () => reject(new Error('the echo-floor server exited')));
  });
  const sock = connect(port, '127.0.0.1');
  sock.setNoDelay(true);
  await once(sock, 'connect');
  const pkt = changePacket(1, batch(1, bytes));
  const lat: number[] = [];
  let c0 = 0;
  const warm = 200;
  for (let i = 0; i < warm + count; i++) {
    if (i === warm) c0 = procCpuNs(child.pid!);
    const t = process.hrtime.bigint();
    await new Promise<void>((resolve) => {
      sock.once('data', () => resolve());
      sock.write(pkt);
    });
    if (i >= warm) lat.push(Number(process.hrtime.bigint() - t) / 1000);
  }
  const serverCpuUs = (procCpuNs(child.pid!) - c0) / 1000 / count;
  sock.destroy();
  child.kill();
  await once(child, 'exit');
  rmSync(join(dir, 'echo-floor.bin'), { force: true });
  return { p50: summarize(lat).p50, serverCpuUs };
}

interface NodeRun {
  lat: number[];
  seconds: number;
  /** CPU time per measured db_write, µs: the plugin process, and the server process when its pid is given */
  pluginCpuUs: number;
  serverCpuUs: number;
}

async function runNode(
  dir: string,
  port: number,
  count: number,
  warmup: number,
  node: { name: string; key: string } | null = null,
  serverPid: number | null = null,
  env: NodeJS.ProcessEnv = {},
  encrypt = false,
): Promise<NodeRun> {
  const nd = mkdtempSync(join(dir, 'nd-'));
  if (node !== null) writeFileSync(join(nd, 'clnvault-remote.key'), node.key, { mode: 0o600 });
  const url = node === null ? `socket:127.0.0.1:${port}` : `clnvault://${node.name}@127.0.0.1:${port}`;
  if (encrypt) {
    // init makes the node's empty backup on the server an encrypted one and writes backup.lock
    execFileSync(process.execPath, [CLI, 'init', '--lightning-dir', nd, '--encrypt', '--key-file', join(nd, 'backup.key'), url], { stdio: 'ignore' });
  } else {
    writeFileSync(join(nd, 'backup.lock'), JSON.stringify({ backend_url: url }));
  }
  const d = new FifoDriver(nd, undefined, env);
  d.call(`{"jsonrpc":"2.0","id":"m","method":"getmanifest","params":{}}\n\n`, 'm');
  const lat: number[] = [];
  let t0 = 0n;
  let p0 = 0;
  let s0 = 0;
  for (let dv = 1; dv <= warmup + count; dv++) {
    const id = `w${dv}`;
    const msg = Buffer.from(`${JSON.stringify({ jsonrpc: '2.0', id, method: 'db_write', params: { data_version: dv, writes: batch(dv, bytes) } })}\n\n`);
    if (dv === warmup + 1) {
      t0 = process.hrtime.bigint();
      p0 = procCpuNs(d.pid);
      s0 = serverPid === null ? 0 : procCpuNs(serverPid);
    }
    const s = process.hrtime.bigint();
    const reply = d.call(msg, id);
    if (!reply.includes('"continue"')) throw new Error(`db_write refused: ${reply}`);
    if (dv > warmup) lat.push(Number(process.hrtime.bigint() - s) / 1000);
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const pluginCpuUs = (procCpuNs(d.pid) - p0) / 1000 / count;
  const serverCpuUs = serverPid === null ? NaN : (procCpuNs(serverPid) - s0) / 1000 / count;
  await d.close();
  rmSync(nd, { recursive: true, force: true });
  return { lat, seconds, pluginCpuUs, serverCpuUs };
}

/** what `uptime` prints: the load the figures were measured under */
function uptime(): string {
  return `load average ${loadavg().map((x) => x.toFixed(2)).join(', ')} (${readFileSync('/proc/loadavg', 'utf8').trim().split(' ')[3]} running/total tasks)`;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function line(name: string, s: Summary): string {
  return `${name.padEnd(44)} p50 ${fmtUs(s.p50).padStart(10)}  p99 ${fmtUs(s.p99).padStart(10)}  max ${fmtUs(s.max).padStart(10)}`;
}

async function main(): Promise<void> {
  if (values['echo-floor'] !== undefined) {
    echoFloorServer(values['echo-floor']);
    return;
  }
  if (values['one-node'] !== undefined) {
    const node = values.node === undefined ? null : { name: values.node, key: values.key! };
    const r = await runNode(values.dir!, Number(values['one-node']), n, Number(values.warmup), node);
    process.stdout.write(JSON.stringify(r));
    return;
  }
  const dir = values.dir ?? mkdtempSync(join(tmpdir(), 'clnvault-bench-socket-'));
  const nodes = Number(values.nodes);
  const rounds = Number(values.rounds);
  const warmup = Number(values.warmup);
  console.log(`socket: bench, ${n} db_writes of ~${bytes} B per node after ${warmup} uncounted, ${rounds} rounds; uptime: ${uptime()}`);
  const rows: Array<{ floor: number; floorCpu: number; net: { p50: number; serverCpuUs: number }; sock: NodeRun; tls: NodeRun; enc: NodeRun; worker: NodeRun }> = [];
  for (let r = 0; r < rounds; r++) {
    const f = measureFloor(dir, bytes + 64, Math.min(n, 2000));
    const net = await measureNetFloor(dir, Math.min(n, 2000));
    const srv = await startServer(mkdtempSync(join(dir, 's-')));
    const sock = await runNode(dir, srv.port, n, warmup, null, srv.pid);
    await srv.kill();
    const tlsSrv = await startServer(mkdtempSync(join(dir, 't-')), 1);
    const tls = await runNode(dir, tlsSrv.port, n, warmup, { name: 'n0', key: tlsSrv.keys[0]! }, tlsSrv.pid);
    await tlsSrv.kill();
    const encSrv = await startServer(mkdtempSync(join(dir, 'e-')), 1);
    const enc = await runNode(dir, encSrv.port, n, warmup, { name: 'n0', key: encSrv.keys[0]! }, encSrv.pid, {}, true);
    await encSrv.kill();
    const wSrv = await startServer(mkdtempSync(join(dir, 'w-')));
    const worker = await runNode(dir, wSrv.port, n, warmup, null, wSrv.pid, { CLNVAULT_REMOTE_WORKER: '1' });
    await wSrv.kill();
    const f2 = measureFloor(dir, bytes + 64, Math.min(n, 2000));
    const floor = Math.max(f.latencyUs.p50, f2.latencyUs.p50);
    rows.push({ floor, floorCpu: (f.cpuUsPerOp + f2.cpuUsPerOp) / 2, net, sock, tls, enc, worker });
    const s1 = summarize(sock.lat);
    const s2 = summarize(tls.lat);
    console.log(`round ${r + 1}: floor p50 ${fmtUs(floor)} (larger of the runs before and after; CPU ${fmtUs((f.cpuUsPerOp + f2.cpuUsPerOp) / 2)}/op)`);
    console.log(`  network+disk floor (bare TCP server, append+fdatasync, ack): p50 ${fmtUs(net.p50)}, its CPU ${fmtUs(net.serverCpuUs)}/packet`);
    console.log(`  ${line('db_write via socket: to clnvault server', s1)}  +${fmtUs(s1.p50 - floor)}  CPU/write plugin ${fmtUs(sock.pluginCpuUs)} server ${fmtUs(sock.serverCpuUs)}`);
    console.log(`  ${line('db_write via clnvault:// (TLS-PSK)', s2)}  +${fmtUs(s2.p50 - floor)}  CPU/write plugin ${fmtUs(tls.pluginCpuUs)} server ${fmtUs(tls.serverCpuUs)}`);
    const s4 = summarize(enc.lat);
    console.log(`  ${line('db_write via clnvault://, encrypted', s4)}  +${fmtUs(s4.p50 - floor)}  CPU/write plugin ${fmtUs(enc.pluginCpuUs)} server ${fmtUs(enc.serverCpuUs)}`);
    const s3 = summarize(worker.lat);
    console.log(`  ${line('socket: through a worker thread (old path)', s3)}  +${fmtUs(s3.p50 - floor)}  CPU/write plugin ${fmtUs(worker.pluginCpuUs)} server ${fmtUs(worker.serverCpuUs)}`);
  }
  const over = (k: 'sock' | 'tls' | 'enc' | 'worker'): number => median(rows.map((x) => summarize(x[k].lat).p50 - x.floor));
  const cpu = (k: 'sock' | 'tls' | 'enc' | 'worker'): string =>
    `plugin ${fmtUs(median(rows.map((x) => x[k].pluginCpuUs)))} + server ${fmtUs(median(rows.map((x) => x[k].serverCpuUs)))} ` +
    `(the floor's write+fdatasync: ${fmtUs(median(rows.map((x) => x.floorCpu)))})`;
  console.log(`median over ${rounds} rounds: socket: p50 over the floor ${fmtUs(over('sock'))} (target: within 150 µs); clnvault:// ${fmtUs(over('tls'))}, encrypted ${fmtUs(over('enc'))}; socket: through a worker thread ${fmtUs(over('worker'))}`);
  const overNet = (k: 'sock' | 'tls'): number => median(rows.map((x) => summarize(x[k].lat).p50 - x.net.p50));
  console.log(
    `  over the network+disk floor (median ${fmtUs(median(rows.map((x) => x.net.p50)))}, i.e. ${fmtUs(median(rows.map((x) => x.net.p50 - x.floor)))} over the disk floor ` +
      `before any clnvault code runs): socket: ${fmtUs(overNet('sock'))}, clnvault:// ${fmtUs(overNet('tls'))}; the bare server's CPU per packet ${fmtUs(median(rows.map((x) => x.net.serverCpuUs)))}`,
  );
  console.log(`CPU time per db_write (medians; the load barely moves these): socket: ${cpu('sock')}; clnvault:// ${cpu('tls')}; encrypted ${cpu('enc')}; socket: through a worker thread ${cpu('worker')}`);
  console.log(`uptime after the single-node rounds: ${uptime()}`);

  const multi = await startServer(mkdtempSync(join(dir, 'm-')), nodes);
  const t0 = Date.now();
  const runs = await Promise.all(
    multi.keys.map(async (key, i) => {
      const c = spawn(process.execPath, [SELF, '--one-node', String(multi.port), '--node', `n${i}`, '--key', key, '--n', String(Math.max(100, Math.floor(n / 5))), '--warmup', '500', '--bytes', String(bytes), '--dir', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
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
  console.log(`  p50 all nodes: ${fmtUs(summarize(runs.flatMap((r) => r.lat)).p50)}; uptime after: ${uptime()}`);
  if (values.dir === undefined) rmSync(dir, { recursive: true, force: true });
}

await main();
