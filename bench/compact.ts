/**
 * Online compaction of a big backup through the real plugin, while db_write calls keep arriving back to
 * back: compaction time, the plugin's peak memory, and the hook latency distribution before and during it.
 *
 *   node dist/bench/compact.js [--dir DIR] [--gib 1] [--keys 20000] [--value 1024] [--offline]
 *
 * --offline: `clnvault compact` (the CLI, a process of its own) on the same generated backup instead of the
 * plugin; its peak memory (VmHWM, polled every 20 ms until it exits) and time.
 *
 * The backup is generated directly in the v2 format (invoice-sized datastore upserts over a bounded key
 * set, so the database stays small while the backup grows: what compaction is for). It is driven over
 * FIFOs with a blocking write-then-read loop, like lightningd's pipes.
 */
import { spawn } from 'node:child_process';
import { loadavg } from 'node:os';
import { closeSync, fsyncSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createV2, encodeChangeRecord, recordSeedOf } from '../src/backends/file/v2.js';
import { FifoDriver } from './driver.js';
import { summarize, type Summary } from './stats.js';


export interface CompactBenchOptions {
  dir?: string;
  /** backup size to generate, GiB */
  gib?: number;
  /** distinct keys upserted (bounds the database size) */
  keys?: number;
  /** value bytes per write */
  value?: number;
}

export interface CompactBenchResult {
  backupBytes: number;
  records: number;
  generateSec: number;
  compactSec: number;
  before: { backupsize: number; version_count: number };
  after: { backupsize: number; version_count: number };
  /** µs, hooks answered before compaction started */
  baselineUs: Summary;
  /** µs, hooks answered while compaction ran */
  duringUs: Summary;
  hooksDuring: number;
  /** the plugin's own summary line, with how long the swap held the writer */
  doneLog: string;
  rssBeforeKb: number;
  /** peak resident memory of the plugin process over the whole run (VmHWM) */
  peakRssKb: number;
}

function statements(dv: number, keys: number, value: number): string[] {
  const key = (dv % keys).toString(16).padStart(8, '0');
  const v = Buffer.alloc(value, dv & 0xff);
  v.writeUInt32BE(dv >>> 0, 0);
  return [
    `INSERT OR REPLACE INTO datastore (key, data, generation) VALUES (x'${key}', x'${v.toString('hex')}', ${dv});`,
    `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${dv - 1}`,
  ];
}

/** Writes records straight into the file in big buffers: one fsync at the end, not one per record. */
function generate(path: string, bytes: number, keys: number, value: number): number {
  createV2(path);
  // format 4: record header CRCs are seeded with the file header's ids
  const seed = recordSeedOf(readFileSync(path));
  const fd = openSync(path, 'r+');
  let pos = statSync(path).size;
  const buf = Buffer.allocUnsafe(8 << 20);
  let used = 0;
  const flush = (): void => {
    writeSync(fd, buf, 0, used, pos);
    pos += used;
    used = 0;
  };
  const put = (rec: Buffer): void => {
    if (used + rec.length > buf.length) flush();
    rec.copy(buf, used);
    used += rec.length;
  };
  put(
    encodeChangeRecord(1, [
      'CREATE TABLE vars (name VARCHAR(32) PRIMARY KEY, val VARCHAR(255), intval INTEGER, blobval BLOB)',
      'CREATE TABLE datastore (key BLOB PRIMARY KEY, data BLOB, generation BIGINT)',
      "INSERT INTO vars (name, intval) VALUES ('data_version', 0)",
      `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 0`,
    ], undefined, seed),
  );
  let dv = 1;
  const scratch = Buffer.allocUnsafe(64 << 10);
  while (pos + used < bytes) {
    dv++;
    put(encodeChangeRecord(dv, statements(dv, keys, value), scratch, seed));
  }
  flush();
  fsyncSync(fd);
  closeSync(fd);
  return dv;
}


function procKb(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileText(`/proc/${pid}/status`));
  return m ? Number(m[1]) : NaN;
}

function readFileText(path: string): string {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(16384);
    const n = readSync(fd, b, 0, b.length, 0);
    return b.toString('utf8', 0, n);
  } finally {
    closeSync(fd);
  }
}

export async function benchCompact(opts: CompactBenchOptions = {}): Promise<CompactBenchResult> {
  const gib = opts.gib ?? 1;
  const keys = opts.keys ?? 20000;
  const value = opts.value ?? 1024;
  const nd = mkdtempSync(join(opts.dir ?? tmpdir(), 'clnvault-bench-compact-'));
  const backup = join(nd, 'backup.bkp');
  try {
    const g0 = performance.now();
    let dv = generate(backup, Math.ceil(gib * 1024 * 1024 * 1024), keys, value);
    const generateSec = (performance.now() - g0) / 1000;
    const backupBytes = statSync(backup).size;
    // no history: the bench measures compaction, and the old gigabyte need not stay on disk
    writeFileSync(join(nd, 'backup.lock'), JSON.stringify({ backend_url: `file://${backup}`, compaction: { auto: false, history: 0 } }));
    const d = new FifoDriver(nd);
    let next = 20;
    const call = (method: string, params: unknown): string => {
      const id = `cln:${method}#${next++}`;
      d.send(`${JSON.stringify({ jsonrpc: '2.0', id, method, params })}\n\n`);
      return d.wait(id);
    };
    try {
      call('getmanifest', { 'allow-deprecated-apis': false });
      const write = (): number => {
        dv++;
        const t0 = process.hrtime.bigint();
        const r = call('db_write', { data_version: dv, writes: statements(dv, keys, value) });
        const us = Number(process.hrtime.bigint() - t0) / 1000;
        if (!r.includes('"continue"')) throw new Error(`db_write refused: ${r}`);
        return us;
      };
      const baseline: number[] = [];
      for (let i = 0; i < 50; i++) write(); // warm-up: first writes after the open
      for (let i = 0; i < 1000; i++) baseline.push(write());
      const rssBeforeKb = procKb(d.pid, 'VmRSS');
      const compactId = `cln:backup-compact#${next++}`;
      const c0 = performance.now();
      d.send(`${JSON.stringify({ jsonrpc: '2.0', id: compactId, method: 'backup-compact', params: {} })}\n\n`);
      const during: number[] = [];
      let peakRssKb = 0;
      while (!d.other.has(compactId)) {
        during.push(write());
        if (during.length % 200 === 0) peakRssKb = Math.max(peakRssKb, procKb(d.pid, 'VmHWM'));
      }
      const compactSec = (performance.now() - c0) / 1000;
      peakRssKb = Math.max(peakRssKb, procKb(d.pid, 'VmHWM'));
      const reply = JSON.parse(d.other.get(compactId)!) as { result?: Pick<CompactBenchResult, 'before' | 'after'>; error?: unknown };
      if (!reply.result) throw new Error(`backup-compact failed: ${JSON.stringify(reply.error)}`);
      // writes after the swap go to the new file
      for (let i = 0; i < 100; i++) write();
      return {
        backupBytes,
        records: dv,
        generateSec,
        compactSec,
        before: reply.result.before,
        after: reply.result.after,
        baselineUs: summarize(baseline),
        duringUs: summarize(during),
        hooksDuring: during.length,
        doneLog: d.logs.map((l) => (JSON.parse(l) as { params: { message: string } }).params.message).find((m) => m.includes('compaction done')) ?? '',
        rssBeforeKb,
        peakRssKb,
      };
    } finally {
      await d.close();
    }
  } finally {
    rmSync(nd, { recursive: true, force: true });
  }
}

export interface OfflineCompactResult {
  backupBytes: number;
  records: number;
  compactSec: number;
  cpuSec: number;
  peakRssKb: number;
  result: unknown;
}

/** `clnvault compact` on a generated backup, in its own process; peak RSS polled from /proc. */
export async function benchCompactOffline(opts: CompactBenchOptions = {}): Promise<OfflineCompactResult> {
  const nd = mkdtempSync(join(opts.dir ?? tmpdir(), 'clnvault-bench-compact-'));
  const backup = join(nd, 'backup.bkp');
  try {
    const records = generate(backup, Math.ceil((opts.gib ?? 1) * 1024 * 1024 * 1024), opts.keys ?? 20000, opts.value ?? 1024);
    const backupBytes = statSync(backup).size;
    const cli = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
    const t0 = performance.now();
    const child = spawn(process.execPath, [cli, 'compact', '--json', '--history', '0', `file://${backup}`], { stdio: ['ignore', 'pipe', 'inherit'] });
    let stdout = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    let peakRssKb = 0;
    let cpuSec = 0;
    const poll = setInterval(() => {
      try {
        const hwm = procKb(child.pid!, 'VmHWM');
        // a process that is exiting has no VmHWM line any more
        if (Number.isFinite(hwm)) peakRssKb = Math.max(peakRssKb, hwm);
        const f = readFileText(`/proc/${child.pid}/stat`).split(') ')[1]!.split(' ');
        const cpu = (Number(f[11]) + Number(f[12])) / 100;
        if (Number.isFinite(cpu)) cpuSec = cpu;
      } catch {
        // exited between two polls
      }
    }, 20);
    const code = await new Promise<number | null>((r) => child.on('close', r));
    clearInterval(poll);
    if (code !== 0) throw new Error(`clnvault compact exited ${code}`);
    return { backupBytes, records, compactSec: (performance.now() - t0) / 1000, cpuSec, peakRssKb, result: JSON.parse(stdout) };
  } finally {
    rmSync(nd, { recursive: true, force: true });
  }
}

export function printCompactOffline(r: OfflineCompactResult): void {
  console.log(`clnvault compact of a ${(r.backupBytes / 1048576).toFixed(0)} MiB v2 backup (${r.records} records)`);
  console.log(`  time:            ${r.compactSec.toFixed(1)} s wall, ${r.cpuSec.toFixed(1)} s CPU (last poll)`);
  console.log(`  peak RSS:        ${(r.peakRssKb / 1024).toFixed(1)} MiB (VmHWM; SQLite's page cache of the scratch database is at most 16 MiB of it)`);
  console.log(`  load average:    ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
}

function ms(us: number): string {
  return `${(us / 1000).toFixed(2)} ms`;
}

export function printCompact(r: CompactBenchResult): void {
  const mb = (n: number): string => `${(n / 1048576).toFixed(0)} MiB`;
  console.log(`compaction of a ${mb(r.backupBytes)} v2 backup (${r.records} records; generated in ${r.generateSec.toFixed(1)} s)`);
  console.log(`  time:            ${r.compactSec.toFixed(1)} s (${r.before.version_count} -> ${r.after.version_count} records, ${mb(r.before.backupsize)} -> ${mb(r.after.backupsize)})`);
  console.log(`  plugin memory:   RSS ${(r.rssBeforeKb / 1024).toFixed(0)} MiB before, peak (VmHWM) ${(r.peakRssKb / 1024).toFixed(0)} MiB`);
  console.log(`  hooks before:    p50 ${ms(r.baselineUs.p50)}, p99 ${ms(r.baselineUs.p99)}, max ${ms(r.baselineUs.max)} (1000 writes)`);
  console.log(`  plugin says:     ${r.doneLog.replace(/^clnvault: /, '')}`);
  console.log(`  hooks during:    p50 ${ms(r.duringUs.p50)}, p99 ${ms(r.duringUs.p99)}, max ${ms(r.duringUs.max)} (${r.hooksDuring} writes, back to back)`);
  console.log(`  load average:    ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const { values } = parseArgs({ options: { dir: { type: 'string' }, gib: { type: 'string' }, keys: { type: 'string' }, value: { type: 'string' }, offline: { type: 'boolean' } } });
  const opts: CompactBenchOptions = {};
  if (values.dir) opts.dir = values.dir;
  if (values.gib) opts.gib = Number(values.gib);
  if (values.keys) opts.keys = Number(values.keys);
  if (values.value) opts.value = Number(values.value);
  if (values.offline) {
    benchCompactOffline(opts).then(printCompactOffline, (e) => {
      console.error(e);
      process.exitCode = 1;
    });
  } else benchCompact(opts).then(printCompact, (e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
