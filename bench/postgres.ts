/**
 * The PostgreSQL destination's hot path, against a real server this bench starts (test/helpers/postgres.ts:
 * initdb in a temp dir, fsync on, loopback TCP with a password):
 *
 * 1. hook latency: db_write round trips through the real plugin process (FIFOs, as lightningd drives it)
 *    beside the floor of the same server measured in the same run: PostgreSQL's own single-row INSERT commit
 *    (a prepared INSERT of a row of the same size, autocommit, over its own connection from this process).
 *    Rounds alternate floor and plugin, so both see the same load. Target: hook p50 within 1.2x the floor's.
 *    Beside them, the least a Node plugin can do (bench/minimal-pg-plugin.ts: the same INSERT behind the
 *    plugin protocol, nothing else): how much of the gap the protocol alone takes on this machine.
 * 2. twenty nodes writing at once: twenty plugin processes, each driven by its own thread, into one
 *    database: aggregate writes/s and p99 per node.
 * 3. with --encrypt, each round also drives an encrypted backup (init --encrypt --key-file, the plugin
 *    encrypting every change before it leaves the process) right after the plaintext one: its hook p50 and
 *    plugin CPU per write beside the plaintext hook's, same rounds, same load (docs/encryption.md, "Cost").
 * 4. with --worker, each round also drives a plugin with CLNVAULT_REMOTE_WORKER=1 (the connection in a worker
 *    thread behind a synchronous call, as with several destinations) beside the event-loop path: the A/B
 *    (the worker's plugin runs last in even rounds and first in odd ones).
 *
 *   node dist/bench/postgres.js [--n N] [--rounds R] [--warmup W] [--nodes K] [--per-node N] [--bytes B] [--encrypt] [--worker]
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import pg from 'pg';
import { FifoDriver } from './driver.js';
import { batch } from './plugin.js';
import { fmtUs, procCpuNs, summarize, type Summary } from './stats.js';
import { findPgBin, PG_DB, PgServer } from '../test/helpers/postgres.js';
import { runCli } from '../test/helpers/cli.js';

interface NodeJob {
  netDir: string;
  n: number;
  warmup: number;
  bytes: number;
}

function startNode(netDir: string, env: NodeJS.ProcessEnv = {}, command?: readonly string[]): FifoDriver {
  const d = new FifoDriver(netDir, command, env);
  const m = d.call(`{"jsonrpc":"2.0","id":"cln:getmanifest#1","method":"getmanifest","params":{"allow-deprecated-apis":false}}\n\n`, 'cln:getmanifest#1');
  if (!m.includes('db_write')) throw new Error(`bad manifest: ${m}`);
  return d;
}

/** `onMeasured`: called right before the first measured call and right after the last one */
function loop(d: FifoDriver, job: NodeJob, onMeasured?: (edge: 'start' | 'end') => void): { lat: number[]; elapsedS: number } {
  const lat: number[] = [];
  let t0 = process.hrtime.bigint();
  for (let dv = 1; dv <= job.n; dv++) {
    const id = `cln:db_write#${dv + 20}`;
    const msg = Buffer.from(`${JSON.stringify({ jsonrpc: '2.0', id, method: 'db_write', params: { data_version: dv, writes: batch(dv, job.bytes) } })}\n\n`);
    if (dv === job.warmup + 1) {
      onMeasured?.('start');
      t0 = process.hrtime.bigint();
    }
    const s = process.hrtime.bigint();
    const reply = d.call(msg, id);
    if (!reply.includes('"continue"')) throw new Error(`db_write refused: ${reply}`);
    if (dv > job.warmup) lat.push(Number(process.hrtime.bigint() - s) / 1000);
  }
  const elapsedS = Number(process.hrtime.bigint() - t0) / 1e9;
  onMeasured?.('end');
  return { lat, elapsedS };
}

/** One plugin, driven synchronously (this runs in a worker thread when several nodes write at once). */
function drive(job: NodeJob): { lat: number[]; elapsedS: number } {
  const d = startNode(job.netDir);
  try {
    return loop(d, job);
  } finally {
    void d.close();
  }
}

/**
 * One plugin in this thread, with the CPU time per measured db_write of the plugin process and of the
 * PostgreSQL backend serving its connection (/proc schedstat: barely moved by the machine's load).
 */
async function driveMeasured(
  server: PgServer,
  role: string,
  job: NodeJob,
  env: NodeJS.ProcessEnv = {},
): Promise<{ lat: number[]; pluginCpuUs: number; backendCpuUs: number }> {
  const d = startNode(job.netDir, env);
  try {
    const admin = await server.superClient();
    const r = await admin.query(`SELECT pid FROM pg_stat_activity WHERE usename = $1 AND application_name LIKE 'clnvault writer%'`, [role]);
    await admin.end();
    const backend = Number(r.rows[0]?.pid);
    let p0 = 0;
    let b0 = 0;
    let pluginCpuUs = NaN;
    let backendCpuUs = NaN;
    const measured = job.n - job.warmup;
    const out = loop(d, job, (edge) => {
      if (edge === 'start') {
        p0 = procCpuNs(d.pid);
        b0 = procCpuNs(backend);
      } else {
        pluginCpuUs = (procCpuNs(d.pid) - p0) / 1000 / measured;
        backendCpuUs = (procCpuNs(backend) - b0) / 1000 / measured;
      }
    });
    return { lat: out.lat, pluginCpuUs, backendCpuUs };
  } finally {
    void d.close();
  }
}

if (!isMainThread) {
  parentPort!.postMessage(drive(workerData as NodeJob));
}

async function newNode(server: PgServer, root: string, name: string, encrypt = false): Promise<string> {
  await server.createNodeRole(name, `pw-${name}`);
  const netDir = join(root, name);
  mkdirSync(netDir);
  const url = server.url(name, `pw-${name}`, name);
  const keyFile = join(root, `${name}.key`);
  const r = await runCli(['init', ...(encrypt ? ['--encrypt', '--key-file', keyFile] : []), url], { cwd: root });
  if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`);
  writeFileSync(join(netDir, 'backup.lock'), JSON.stringify(encrypt ? { backend_url: url, encrypt: { key_file: keyFile } } : { backend_url: url }));
  return netDir;
}

/**
 * PostgreSQL's own commit latency: prepared single-row INSERT in autocommit, same row size, same server.
 * `warmup` inserts first, not measured, as many as the plugin's warm-up calls: a cold client (V8 still
 * compiling pg's code, a new backend's caches) made the floor slower, and so the ratio kinder, than a fair
 * comparison with the warmed-up plugin.
 */
async function floor(server: PgServer, n: number, bytes: number, warmup: number): Promise<{ lat: number[]; clientCpuUs: number; backendCpuUs: number }> {
  const c = new pg.Client({ connectionString: `postgresql://postgres:${'super-secret'}@127.0.0.1:${server.port}/${PG_DB}` });
  await c.connect();
  await c.query('CREATE TABLE IF NOT EXISTS bench_floor (id bigserial PRIMARY KEY, k bigint NOT NULL, v text[] NOT NULL)');
  const backend = Number((await c.query('SELECT pg_backend_pid() AS pid')).rows[0].pid);
  for (let i = 0; i < warmup; i++) await c.query({ name: 'floor', text: 'INSERT INTO bench_floor (k, v) VALUES ($1, $2)', values: [-1 - i, batch(i + 1, bytes)] });
  const lat: number[] = [];
  const b0 = procCpuNs(backend);
  const c0 = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    const v = batch(i + 1, bytes);
    const s = process.hrtime.bigint();
    await c.query({ name: 'floor', text: 'INSERT INTO bench_floor (k, v) VALUES ($1, $2)', values: [i, v] });
    lat.push(Number(process.hrtime.bigint() - s) / 1000);
  }
  const cu = process.cpuUsage(c0);
  const backendCpuUs = (procCpuNs(backend) - b0) / 1000 / n;
  await c.end();
  return { lat, clientCpuUs: (cu.user + cu.system) / n, backendCpuUs };
}

const MINIMAL_PG = [process.execPath, fileURLToPath(new URL('./minimal-pg-plugin.js', import.meta.url))];

/** bench/minimal-pg-plugin.ts under the same driver, as many warm-up and measured calls as the plugin. */
function driveMinimal(server: PgServer, root: string, name: string, job: Omit<NodeJob, 'netDir'>): { lat: number[] } {
  const netDir = join(root, name);
  mkdirSync(netDir);
  const d = startNode(netDir, { CLNVAULT_MINIMAL_PG_URL: `postgresql://postgres:super-secret@127.0.0.1:${server.port}/${PG_DB}` }, MINIMAL_PG);
  try {
    return { lat: loop(d, { ...job, netDir }).lat };
  } finally {
    void d.close();
  }
}

function runNodes(jobs: NodeJob[]): Promise<Array<{ lat: number[]; elapsedS: number }>> {
  const self = fileURLToPath(import.meta.url);
  return Promise.all(
    jobs.map(
      (job) =>
        new Promise<{ lat: number[]; elapsedS: number }>((resolve, reject) => {
          const w = new Worker(self, { workerData: job });
          w.once('message', resolve);
          w.once('error', reject);
        }),
    ),
  );
}

export interface PgBenchResult {
  floorUs: Summary;
  hookUs: Summary;
  ratioP50: number;
  /** per round: the floor's, the minimal plugin's and the hook's p50, and the hook's ratio to the floor */
  rounds: Array<{ floorP50: number; minimalP50: number; hookP50: number; ratio: number }>;
  /** bench/minimal-pg-plugin.ts: the floor's INSERT behind the plugin protocol */
  minimalUs: Summary;
  medianRatio: number;
  /** CPU time per write (medians over the rounds), µs */
  cpu: { floorClient: number; floorBackend: number; plugin: number; hookBackend: number };
  many: { nodes: number; writesPerSec: number; wallWritesPerSec: number; p99PerNodeUs: { min: number; median: number; max: number } };
  load: number[];
  /** --worker: the worker thread's path (CLNVAULT_REMOTE_WORKER=1) beside the event loop's, per round */
  worker: { rounds: Array<{ loopP50: number; workerP50: number; floorP50: number }>; pluginCpu: number; backendCpu: number } | null;
  /** --encrypt: the encrypted backup's hook beside the plaintext one, per round */
  encrypted: { hookUs: Summary; rounds: Array<{ plainP50: number; encP50: number; ratio: number }>; medianRatio: number; pluginCpu: number } | null;
}

export async function benchPostgres(opts: { n: number; rounds: number; nodes: number; perNode: number; bytes: number; warmup: number; encrypt?: boolean; worker?: boolean }): Promise<PgBenchResult> {
  const server = await PgServer.start();
  const root = mkdtempSync(join(tmpdir(), 'clnvault-pgbench-'));
  try {
    await server.adminSetup();
    const a = await runCli(['init', '--schema-only', server.url('clnvault_admin', 'admin-secret', 'unused')]);
    if (a.code !== 0) throw new Error(a.stderr);
    const floorLat: number[] = [];
    const hookLat: number[] = [];
    const minimalLat: number[] = [];
    const load = [loadavg()[0]!];
    const rounds: PgBenchResult['rounds'] = [];
    const cpus: Array<PgBenchResult['cpu']> = [];
    const encLat: number[] = [];
    const encRounds: NonNullable<PgBenchResult['encrypted']>['rounds'] = [];
    const encCpu: number[] = [];
    const workerRounds: NonNullable<PgBenchResult['worker']>['rounds'] = [];
    const workerCpu: Array<{ plugin: number; backend: number }> = [];
    for (let r = 0; r < opts.rounds; r++) {
      // the A/B's order alternates by round (worker first in odd rounds), so a load that rises or falls through a
      // round does not favour one path
      const viaWorker = async (): Promise<{ lat: number[]; pluginCpuUs: number; backendCpuUs: number }> => {
        const nw = await newNode(server, root, `worker${r}`);
        return driveMeasured(server, `worker${r}`, { netDir: nw, n: opts.n + opts.warmup, warmup: opts.warmup, bytes: opts.bytes }, { CLNVAULT_REMOTE_WORKER: '1' });
      };
      const wFirst = opts.worker && r % 2 === 1 ? await viaWorker() : null;
      const f = await floor(server, opts.n, opts.bytes, opts.warmup);
      floorLat.push(...f.lat);
      const nd = await newNode(server, root, `single${r}`);
      const h = await driveMeasured(server, `single${r}`, { netDir: nd, n: opts.n + opts.warmup, warmup: opts.warmup, bytes: opts.bytes });
      hookLat.push(...h.lat);
      const mn = driveMinimal(server, root, `minimal${r}`, { n: opts.n + opts.warmup, warmup: opts.warmup, bytes: opts.bytes });
      minimalLat.push(...mn.lat);
      const fp = summarize(f.lat).p50;
      const hp = summarize(h.lat).p50;
      rounds.push({ floorP50: fp, minimalP50: summarize(mn.lat).p50, hookP50: hp, ratio: hp / fp });
      cpus.push({ floorClient: f.clientCpuUs, floorBackend: f.backendCpuUs, plugin: h.pluginCpuUs, hookBackend: h.backendCpuUs });
      if (opts.encrypt) {
        const ne = await newNode(server, root, `enc${r}`, true);
        const e = await driveMeasured(server, `enc${r}`, { netDir: ne, n: opts.n + opts.warmup, warmup: opts.warmup, bytes: opts.bytes });
        encLat.push(...e.lat);
        const ep = summarize(e.lat).p50;
        encRounds.push({ plainP50: hp, encP50: ep, ratio: ep / hp });
        encCpu.push(e.pluginCpuUs);
      }
      if (opts.worker) {
        const w = wFirst ?? (await viaWorker());
        workerRounds.push({ loopP50: hp, workerP50: summarize(w.lat).p50, floorP50: fp });
        workerCpu.push({ plugin: w.pluginCpuUs, backend: w.backendCpuUs });
      }
    }
    load.push(loadavg()[0]!);
    const jobs: NodeJob[] = [];
    for (let i = 0; i < opts.nodes; i++) jobs.push({ netDir: await newNode(server, root, `many${i}`), n: opts.perNode + 20, warmup: 20, bytes: opts.bytes });
    const t0 = process.hrtime.bigint();
    const res = await runNodes(jobs);
    const wall = Number(process.hrtime.bigint() - t0) / 1e9;
    load.push(loadavg()[0]!);
    const p99s = res.map((x) => summarize(x.lat).p99).sort((x, y) => x - y);
    const floorUs = summarize(floorLat);
    const hookUs = summarize(hookLat);
    return {
      floorUs,
      hookUs,
      minimalUs: summarize(minimalLat),
      ratioP50: hookUs.p50 / floorUs.p50,
      rounds,
      medianRatio: med(rounds.map((x) => x.ratio)),
      cpu: {
        floorClient: med(cpus.map((x) => x.floorClient)),
        floorBackend: med(cpus.map((x) => x.floorBackend)),
        plugin: med(cpus.map((x) => x.plugin)),
        hookBackend: med(cpus.map((x) => x.hookBackend)),
      },
      many: {
        nodes: opts.nodes,
        // measured writes over the longest node's measured span (after its start-up and warm-up)
        writesPerSec: (opts.nodes * opts.perNode) / Math.max(...res.map((x) => x.elapsedS)),
        // everything, start-up and warm-up of twenty plugins included, over the wall-clock time
        wallWritesPerSec: (opts.nodes * (opts.perNode + 20)) / wall,
        p99PerNodeUs: { min: p99s[0]!, median: p99s[Math.floor(p99s.length / 2)]!, max: p99s[p99s.length - 1]! },
      },
      load,
      worker: opts.worker
        ? { rounds: workerRounds, pluginCpu: med(workerCpu.map((x) => x.plugin)), backendCpu: med(workerCpu.map((x) => x.backend)) }
        : null,
      encrypted: opts.encrypt ? { hookUs: summarize(encLat), rounds: encRounds, medianRatio: med(encRounds.map((x) => x.ratio)), pluginCpu: med(encCpu) } : null,
    };
  } finally {
    await server.stop();
    rmSync(root, { recursive: true, force: true });
  }
}

function med(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function uptime(): string {
  return `load average ${loadavg().map((x) => x.toFixed(2)).join(', ')} (${readFileSync('/proc/loadavg', 'utf8').trim().split(' ')[3]} running/total tasks)`;
}

if (isMainThread && process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: {
      n: { type: 'string', default: '1000' },
      rounds: { type: 'string', default: '3' },
      nodes: { type: 'string', default: '20' },
      'per-node': { type: 'string', default: '300' },
      bytes: { type: 'string', default: '1024' },
      // the plugin lives as long as the node; V8 tiers its per-call code up over the first few thousand calls
      warmup: { type: 'string', default: '3000' },
      encrypt: { type: 'boolean', default: false },
      worker: { type: 'boolean', default: false },
    },
  });
  if (findPgBin() === null) {
    console.error('PostgreSQL binaries missing (apt-get install postgresql)');
    process.exit(2);
  }
  const r = await benchPostgres({
    n: Number(values.n),
    rounds: Number(values.rounds),
    nodes: Number(values.nodes),
    perNode: Number(values['per-node']),
    bytes: Number(values.bytes),
    warmup: Number(values.warmup),
    encrypt: values.encrypt === true,
    worker: values.worker === true,
  });
  console.log(`uptime at the end: ${uptime()}`);
  console.log(`PostgreSQL destination, ${values.bytes}-byte batches, load ${r.load.map((l) => l.toFixed(2)).join(' -> ')}`);
  console.log(`  floor: single-row INSERT commit  p50 ${fmtUs(r.floorUs.p50)}  p99 ${fmtUs(r.floorUs.p99)}`);
  console.log(`  plugin hook (db_write round trip) p50 ${fmtUs(r.hookUs.p50)}  p99 ${fmtUs(r.hookUs.p99)}  -> p50 ${r.ratioP50.toFixed(2)}x the floor over all rounds (target <= 1.20x)`);
  for (const [i, x] of r.rounds.entries()) {
    console.log(`    round ${i + 1}: floor p50 ${fmtUs(x.floorP50)}, minimal plugin ${fmtUs(x.minimalP50)} (${(x.minimalP50 / x.floorP50).toFixed(2)}x), hook p50 ${fmtUs(x.hookP50)}: ${x.ratio.toFixed(2)}x`);
  }
  console.log(`  median of the rounds' ratios: ${r.medianRatio.toFixed(2)}x`);
  console.log(
    `  minimal Node plugin (bench/minimal-pg-plugin.ts: the same INSERT behind the plugin protocol, nothing else): p50 ${fmtUs(r.minimalUs.p50)} = ` +
      `${(r.minimalUs.p50 / r.floorUs.p50).toFixed(2)}x the floor; clnvault's hook = ${(r.hookUs.p50 / r.minimalUs.p50).toFixed(2)}x the minimal plugin`,
  );
  console.log(
    `  CPU per write (medians): floor client ${fmtUs(r.cpu.floorClient)} + its backend ${fmtUs(r.cpu.floorBackend)}; ` +
      `plugin process ${fmtUs(r.cpu.plugin)} + its backend ${fmtUs(r.cpu.hookBackend)}`,
  );
  if (r.many.nodes > 0) console.log(
    `  ${r.many.nodes} nodes at once: ${Math.round(r.many.writesPerSec)} writes/s in total (${Math.round(r.many.wallWritesPerSec)}/s with start-ups); p99 per node ` +
      `min ${fmtUs(r.many.p99PerNodeUs.min)} median ${fmtUs(r.many.p99PerNodeUs.median)} max ${fmtUs(r.many.p99PerNodeUs.max)}`,
  );
  if (r.worker) {
    const w = r.worker;
    console.log(`  worker thread's path (CLNVAULT_REMOTE_WORKER=1): plugin CPU per write ${fmtUs(w.pluginCpu)} + its backend ${fmtUs(w.backendCpu)} (event loop: ${fmtUs(r.cpu.plugin)})`);
    for (const [i, x] of w.rounds.entries()) {
      console.log(`    round ${i + 1}: event-loop hook p50 ${fmtUs(x.loopP50)}, worker ${fmtUs(x.workerP50)} (${(x.workerP50 / x.floorP50).toFixed(2)}x the floor)`);
    }
  }
  if (r.encrypted) {
    const e = r.encrypted;
    console.log(`  encrypted backup: hook p50 ${fmtUs(e.hookUs.p50)}  p99 ${fmtUs(e.hookUs.p99)}; plugin CPU per write ${fmtUs(e.pluginCpu)} (plaintext ${fmtUs(r.cpu.plugin)})`);
    for (const [i, x] of e.rounds.entries()) console.log(`    round ${i + 1}: plaintext hook p50 ${fmtUs(x.plainP50)}, encrypted ${fmtUs(x.encP50)}: ${x.ratio.toFixed(2)}x`);
    console.log(`  median of the rounds' encrypted/plaintext ratios: ${e.medianRatio.toFixed(2)}x`);
  }
  console.log(JSON.stringify(r));
}
