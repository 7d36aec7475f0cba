/**
 * Hot-path benchmark: db_write round trips through the real plugin process, beside the floor of the
 * same disk (a bare positioned write + fdatasync of a record of the same size, in this process).
 *
 *   node dist/bench/plugin.js [--dir DIR] [--n1k N] [--n100k N] [--warmup N] [--rss-writes N]
 */
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createV2 } from '../src/backends/file/v2.js';
import { FifoDriver } from './driver.js';
import { fmtUs, procCpuNs, procRssKb, summarize, type Summary } from './stats.js';

/** Cold figures: the first calls of a fresh process (V8 still compiling), as after a lightningd restart. */
const COLD_CALLS = 2000;

function uptime(): string {
  return loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
}

/** bench/minimal-plugin.ts: the protocol's own cost, for comparison */
export const MINIMAL = [process.execPath, fileURLToPath(new URL('./minimal-plugin.js', import.meta.url))];

/** A db_write batch shaped like lightningd's: statements with inlined values, the data_version bump last. */
export function batch(dv: number, bytes: number): string[] {
  const bumpStmt = `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${dv - 1}`;
  const fixed = 3 * 90 + bumpStmt.length;
  const hexLen = Math.max(2, (bytes - fixed) & ~1);
  const hex = Buffer.alloc(hexLen / 2, dv & 0xff).toString('hex');
  return [
    `UPDATE vars SET intval=${dv} WHERE name='last_invoices_created_index';`,
    `INSERT INTO datastore VALUES (x'6678006b6579${(dv % 1e6).toString(16).padStart(6, '0')}', x'${hex}', 0);`,
    `UPDATE vars SET intval=${dv} WHERE name='bench_counter';`,
    bumpStmt,
  ];
}

export interface FloorResult {
  latencyUs: Summary;
  cpuUsPerOp: number;
}

/**
 * The floor: what any durable append costs on this disk, with nothing else around it. `preallocated`: the
 * same writes into space written with zeros and synced beforehand (what a format-4 backup does, see
 * docs/format-v2.md, "Preallocation"): no file-size change, so no journal commit per fdatasync.
 */
export function measureFloor(dir: string, recordBytes: number, n: number, preallocated = false): FloorResult {
  const path = join(dir, `floor-${recordBytes}${preallocated ? '-pre' : ''}.bin`);
  const fd = openSync(path, 'w');
  const buf = Buffer.alloc(recordBytes, 0x5a);
  const lat: number[] = [];
  let pos = 0;
  if (preallocated) {
    const zeros = Buffer.alloc(1 << 20);
    for (let at = 0; at < recordBytes * n; at += zeros.length) writeSync(fd, zeros, 0, zeros.length, at);
    fdatasyncSync(fd);
  }
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < n; i++) {
    const t0 = process.hrtime.bigint();
    writeSync(fd, buf, 0, buf.length, pos);
    fdatasyncSync(fd);
    lat.push(Number(process.hrtime.bigint() - t0) / 1000);
    pos += buf.length;
  }
  const cpu = process.cpuUsage(cpu0);
  closeSync(fd);
  rmSync(path);
  return { latencyUs: summarize(lat), cpuUsPerOp: (cpu.user + cpu.system) / n };
}

export interface PluginRun {
  latencyUs: Summary;
  /** steady state: after the warm-up calls */
  cpuUsPerCall: number;
  /** calls before the measured ones (the first includes nothing of start-up: that ends at getmanifest) */
  warmupCalls: number;
  /** CPU per call during the warm-up, while V8 is still compiling the hot path */
  warmupCpuUsPerCall: number;
  throughputPerSec: number;
  rssKb: number;
}

/** Makes the backup and backup.lock in a fresh network dir `nd` (default: an empty plain v2 backup). */
export type Prepare = (nd: string) => void;

function preparePlain(nd: string): void {
  createV2(join(nd, 'backup.bkp'));
  writeFileSync(join(nd, 'backup.lock'), JSON.stringify({ backend_url: `file://${join(nd, 'backup.bkp')}` }));
}

async function startPlugin(dir: string, command?: readonly string[], prepare: Prepare = preparePlain): Promise<{ d: FifoDriver; nd: string; startupMs: number }> {
  const nd = mkdtempSync(join(dir, 'nd-'));
  prepare(nd);
  const d = new FifoDriver(nd, command);
  const r = d.call(`{"jsonrpc":"2.0","id":"cln:getmanifest#1","method":"getmanifest","params":{"allow-deprecated-apis":false}}\n\n`, 'cln:getmanifest#1');
  const startupMs = Number(process.hrtime.bigint() - d.spawnedAt) / 1e6;
  if (!r.includes('db_write')) throw new Error(`bad manifest: ${r}`);
  return { d, nd, startupMs };
}

/**
 * `warmup` calls of 1 KB run first and are not counted (data_version must start at 1, so they are part of
 * the run): the plugin lives as long as the node, and V8 keeps compiling its hot path on background
 * threads for the first few thousand calls (functions that run once per call tier up late), a one-time
 * cost reported separately as warmupCpuUsPerCall. Every size takes the same code path, so 1 KB calls
 * warm it up for 100 KB ones too, without writing gigabytes first.
 */
export async function runPlugin(
  dir: string,
  bytes: number,
  n: number,
  warmup = 50,
  command?: readonly string[],
  prepare?: Prepare,
  warmupBytes = 1024,
): Promise<PluginRun> {
  if (warmup >= n) throw new Error(`warm-up (${warmup}) must be shorter than the run (${n})`);
  const { d, nd } = await startPlugin(dir, command, prepare);
  const msgs: Buffer[] = [];
  const ids: string[] = [];
  for (let dv = 1; dv <= n; dv++) {
    const size = dv <= warmup ? warmupBytes : bytes;
    ids.push(`cln:db_write#${dv + 20}`);
    msgs.push(Buffer.from(`${JSON.stringify({ jsonrpc: '2.0', id: ids[dv - 1], method: 'db_write', params: { data_version: dv, writes: batch(dv, size) } })}\n\n`));
  }
  const lat: number[] = [];
  const cpuStart = procCpuNs(d.pid);
  let cpu0 = 0;
  let t0 = 0n;
  for (let i = 0; i < n; i++) {
    if (i === warmup) {
      cpu0 = procCpuNs(d.pid);
      t0 = process.hrtime.bigint();
    }
    const s = process.hrtime.bigint();
    const reply = d.call(msgs[i]!, ids[i]!);
    if (!reply.includes('"continue"')) throw new Error(`db_write refused: ${reply}`);
    if (i >= warmup) lat.push(Number(process.hrtime.bigint() - s) / 1000);
  }
  const elapsed = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpuNs = procCpuNs(d.pid) - cpu0;
  const rssKb = procRssKb(d.pid);
  await d.close();
  rmSync(nd, { recursive: true, force: true });
  return {
    latencyUs: summarize(lat),
    cpuUsPerCall: cpuNs / 1000 / (n - warmup),
    warmupCalls: warmup,
    warmupCpuUsPerCall: (cpu0 - cpuStart) / 1000 / warmup,
    throughputPerSec: (n - warmup) / elapsed,
    rssKb,
  };
}

export async function measureStartup(dir: string, runs: number, command?: readonly string[]): Promise<Summary> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const { d, nd, startupMs } = await startPlugin(dir, command);
    times.push(startupMs);
    await d.close();
    rmSync(nd, { recursive: true, force: true });
  }
  return summarize(times);
}

export interface BatchBench {
  label: '1 KB' | '100 KB';
  /** statement bytes per db_write */
  bytes: number;
  calls: number;
  /** append + fdatasync */
  floor: FloorResult;
  /** overwrite of preallocated (zero-written, synced) space + fdatasync */
  overwriteFloor: FloorResult;
  /** the first COLD_CALLS calls of a fresh plugin process, no warm-up: what lightningd's restart sees */
  cold: PluginRun;
  run: PluginRun;
  /** bench/minimal-plugin.ts under the same driver: what any Node db_write plugin pays here */
  minimal: PluginRun;
}

export interface PluginBenchResult {
  batches: BatchBench[];
  /** 1 KB writes on tmpfs, so that RSS and CPU are the plugin's, not the disk's */
  rss: PluginRun & { writes: number };
  startupMs: Summary & { runs: number };
  /** the minimal plugin's: about what Node itself takes to start on this machine */
  minimalStartupMs: Summary;
}

export interface PluginBenchOptions {
  dir: string;
  n1k: number;
  n100k: number;
  /** uncounted 1 KB calls before each measured run (default 6000) */
  warmup?: number;
  rssWrites: number;
  shmDir: string;
  startupRuns?: number;
  /** where the human-readable lines go (default: console.log) */
  log?: (line: string) => void;
}

export async function benchPlugin(opts: PluginBenchOptions): Promise<PluginBenchResult> {
  const say = opts.log ?? ((s: string) => console.log(s));
  const batches: BatchBench[] = [];
  const warmup = opts.warmup ?? 6000;
  say(`load before: ${uptime()}`);
  for (const [label, bytes, n] of [['1 KB', 1024, opts.n1k], ['100 KB', 100 * 1024, opts.n100k]] as const) {
    const recordBytes = bytes + 40;
    const floor = measureFloor(opts.dir, recordBytes, Math.min(n, 2000));
    const overwriteFloor = measureFloor(opts.dir, recordBytes, Math.min(n, 2000), true);
    const cold = await runPlugin(opts.dir, bytes, COLD_CALLS, 0, undefined, undefined, bytes);
    const run = await runPlugin(opts.dir, bytes, warmup + n, warmup);
    const minimal = await runPlugin(opts.dir, bytes, warmup + n, warmup, MINIMAL);
    batches.push({ label, bytes, calls: n, floor, overwriteFloor, cold, run, minimal });
    say(`\n${label} batches (${n} db_write calls, disk ${opts.dir}; load ${uptime()}):`);
    say(`  floor  append+fdatasync:     p50 ${fmtUs(floor.latencyUs.p50)}  p99 ${fmtUs(floor.latencyUs.p99)}  CPU ${fmtUs(floor.cpuUsPerOp)}/op`);
    say(`  floor  overwrite+fdatasync:  p50 ${fmtUs(overwriteFloor.latencyUs.p50)}  p99 ${fmtUs(overwriteFloor.latencyUs.p99)}  (space zero-filled and synced beforehand)`);
    say(`  plugin cold (first ${COLD_CALLS} calls of a fresh process): p50 ${fmtUs(cold.latencyUs.p50)}  p99 ${fmtUs(cold.latencyUs.p99)}  max ${fmtUs(cold.latencyUs.max)}`);
    say(`  plugin round trip:      p50 ${fmtUs(run.latencyUs.p50)}  p99 ${fmtUs(run.latencyUs.p99)}  max ${fmtUs(run.latencyUs.max)}  CPU ${fmtUs(run.cpuUsPerCall)}/call  ${run.throughputPerSec.toFixed(0)} calls/s  RSS ${(run.rssKb / 1024).toFixed(1)} MB`);
    say(`  minimal Node plugin:    p50 ${fmtUs(minimal.latencyUs.p50)}  p99 ${fmtUs(minimal.latencyUs.p99)}  max ${fmtUs(minimal.latencyUs.max)}  CPU ${fmtUs(minimal.cpuUsPerCall)}/call  (bench/minimal-plugin.ts: parse, append the raw message, fdatasync, answer; no checks, no format)`);
    say(`  warm-up (${warmup} uncounted 1 KB calls while V8 compiles the hot path, once per start): CPU ${fmtUs(run.warmupCpuUsPerCall)}/call`);
    say(`  ratios to the append floor: p50 ${(run.latencyUs.p50 / floor.latencyUs.p50).toFixed(2)}x (1 KB target <= 0.85x)  p99 ${(run.latencyUs.p99 / floor.latencyUs.p99).toFixed(2)}x (target <= 2x)  CPU +${fmtUs(run.cpuUsPerCall - floor.cpuUsPerOp)}/call over the floor (target <= +40 µs)`);
    say(`  to the overwrite floor: p50 ${(run.latencyUs.p50 / overwriteFloor.latencyUs.p50).toFixed(2)}x; to the minimal plugin: p50 ${(run.latencyUs.p50 / minimal.latencyUs.p50).toFixed(2)}x (100 KB target <= 1.1x); cold/warm p50 ${(cold.latencyUs.p50 / run.latencyUs.p50).toFixed(2)}x p99 ${(cold.latencyUs.p99 / run.latencyUs.p99).toFixed(2)}x`);
  }
  const rss = await runPlugin(opts.shmDir, 1024, opts.rssWrites, Math.min(warmup, opts.rssWrites >> 1));
  say(`\nRSS after ${opts.rssWrites} 1 KB writes (tmpfs ${opts.shmDir}, so the disk does not dominate): ${(rss.rssKb / 1024).toFixed(1)} MB (target < 60 MB); CPU ${fmtUs(rss.cpuUsPerCall)}/call without a real sync`);
  const runs = opts.startupRuns ?? 15;
  // interleaved, so both see the same background load
  const st: number[] = [];
  const mst: number[] = [];
  for (let i = 0; i < runs; i++) {
    st.push((await measureStartup(opts.dir, 1)).p50);
    mst.push((await measureStartup(opts.dir, 1, MINIMAL)).p50);
  }
  const stS = summarize(st);
  const mstS = summarize(mst);
  say(`start-up to the getmanifest answer (${runs} runs): p50 ${stS.p50.toFixed(1)} ms, max ${stS.max.toFixed(1)} ms (target < 150 ms); minimal Node plugin: p50 ${mstS.p50.toFixed(1)} ms, max ${mstS.max.toFixed(1)} ms`);
  return { batches, rss: { ...rss, writes: opts.rssWrites }, startupMs: { ...stS, runs }, minimalStartupMs: mstS };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { values } = parseArgs({
    options: { dir: { type: 'string' }, n1k: { type: 'string' }, n100k: { type: 'string' }, warmup: { type: 'string' }, 'rss-writes': { type: 'string' } },
  });
  const dir = mkdtempSync(join(values.dir ?? tmpdir(), 'clnvault-bench-'));
  const shm = mkdtempSync(join('/dev/shm', 'clnvault-bench-'));
  try {
    await benchPlugin({ dir, shmDir: shm, n1k: Number(values.n1k ?? 3000), n100k: Number(values.n100k ?? 500), warmup: Number(values.warmup ?? 6000), rssWrites: Number(values['rss-writes'] ?? 100000) });
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(shm, { recursive: true, force: true });
  }
}
