/**
 * Restore throughput on invoice-shaped transactions (~1 KB, 4 statements each, like lightningd's
 * `invoice` batches): generates a v2 backup in a temp dir, restores it, prints the rates.
 *
 *   node dist/bench/restore.js [--transactions N] [--runs N] [--keep] [--cpu-prof DIR]
 *
 * --runs restores the same backup N times (generated once) and prints every run, then the median: on a
 * shared VM single runs vary by +-20%.
 *
 * Each restore runs in a child process of its own (this file with --child), as `clnvault restore` would:
 * its peak RSS is the restore's alone (Node, better-sqlite3, SQLite's page cache and the reader), not
 * the generator's. The target is < 100 MiB whatever the backup's size (docs/restore.md, "Memory").
 */
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createV2, encodeChangeRecord, recordSeedOf, V2Reader } from '../src/backends/file/v2.js';
import { writeFully } from '../src/backends/file/fsutil.js';
import { restoreBackup } from '../src/restore/restore.js';

export interface RestoreBenchOptions {
  /** invoice-shaped transactions after the schema entry (default 200,000) */
  transactions?: number;
  /** where to put the backup and the restored DB (default: a new temp dir, removed afterwards) */
  dir?: string;
  keep?: boolean;
  /** restores of the same backup (default 1); the figures reported are the median run's (by wall time) */
  runs?: number;
  log?: (line: string) => void;
  /** write a V8 CPU profile of each restoring process into this directory (node --cpu-prof) */
  cpuProfDir?: string;
}

/** One timed restore. */
export interface RestoreRun {
  restoreMs: number;
  restoreCpuMs: number;
  txPerSec: number;
  /** transactions per second of the restore's own CPU time (user + system): what a quiet machine's wall rate approaches */
  txPerCpuSec: number;
  /** 1-minute load average just before the run */
  load1: number;
  /** peak RSS of the restoring process (its VmHWM), MiB */
  peakRssMiB: number;
}

export interface RestoreBenchResult {
  transactions: number;
  statements: number;
  backupBytes: number;
  generateMs: number;
  restoreMs: number;
  /** user+system CPU of the restore; close to restoreMs unless other processes compete for the CPU */
  restoreCpuMs: number;
  txPerSec: number;
  /** the median run's transactions per CPU-second */
  txPerCpuSec: number;
  statementsPerSec: number;
  mbPerSec: number;
  /** the highest peak RSS of the restoring processes, MiB (generation not included: it runs in the parent) */
  peakRssMiB: number;
  /** every run, in order (one unless `runs` was given) */
  runs: RestoreRun[];
}

export const SCHEMA = [
  'CREATE TABLE vars (name TEXT, val TEXT, intval INTEGER, blobval BLOB, PRIMARY KEY (name))',
  `INSERT INTO vars (name, intval) VALUES ('data_version', 0)`,
  `INSERT INTO vars (name, intval) VALUES ('last_invoices_created_index', 0)`,
  'CREATE TABLE invoices (id INTEGER PRIMARY KEY, state INTEGER, msatoshi INTEGER, payment_hash BLOB, ' +
    'payment_key BLOB, label TEXT, expiry_time INTEGER, pay_index INTEGER, msatoshi_received INTEGER, ' +
    'paid_timestamp INTEGER, bolt11 TEXT, description TEXT, features BLOB, local_offer_id BLOB, ' +
    'updated_index INTEGER, UNIQUE (label), UNIQUE (payment_hash), UNIQUE (pay_index))',
  `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 0`,
];

function hex(n: number, bytes: number): string {
  return n.toString(16).padStart(8, '0').repeat(Math.ceil((bytes * 2) / 8)).slice(0, bytes * 2);
}

/** Transaction `i` (data_version i+1): the shape of a CLN `invoice` batch, about 1 KB. */
export function invoiceBatch(i: number): string[] {
  const bolt11 = `lnbcrt${i}n1pj${hex(i * 2654435761, 122)}`;
  return [
    `UPDATE vars SET intval=${i} WHERE name='last_invoices_created_index';`,
    `INSERT INTO invoices (id, state, msatoshi, payment_hash, payment_key, label, expiry_time, pay_index, ` +
      `msatoshi_received, paid_timestamp, bolt11, description, features, local_offer_id, updated_index) VALUES ` +
      `(${i}, 0, ${i * 1000}, x'${hex(i, 32)}', x'${hex(i ^ 0x5a5a5a5a, 32)}', 'bench-${i}', ${1_800_000_000 + i}, ` +
      `NULL, NULL, NULL, '${bolt11}', 'benchmark invoice ${i}', x'02000000024100', NULL, ${i});`,
    `UPDATE invoices SET updated_index=${i} WHERE id=${i};`,
    `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${i}`,
  ];
}

/**
 * Writes the records with the format's own encoder in large sequential writes: the writer's per-append
 * fdatasync would make generating 200,000 entries take minutes and measures nothing about restore.
 */
function generate(path: string, n: number): number {
  createV2(path);
  // format 4: record header CRCs are seeded with the file header's ids
  const seed = recordSeedOf(readFileSync(path));
  const fd = openSync(path, 'r+');
  let at = statSync(path).size;
  let chunk: Buffer[] = [];
  let chunkBytes = 0;
  let statements = 0;
  const flush = (): void => {
    const buf = Buffer.concat(chunk, chunkBytes);
    writeFully(fd, buf, at);
    at += buf.length;
    chunk = [];
    chunkBytes = 0;
  };
  try {
    const add = (version: number, stmts: string[]): void => {
      const rec = encodeChangeRecord(version, stmts, undefined, seed);
      chunk.push(rec);
      chunkBytes += rec.length;
      statements += stmts.length;
      if (chunkBytes >= 4 << 20) flush();
    };
    add(1, SCHEMA);
    for (let i = 1; i <= n; i++) add(i + 1, invoiceBatch(i));
    flush();
  } finally {
    closeSync(fd);
  }
  return statements;
}

export async function benchRestore(opts: RestoreBenchOptions = {}): Promise<RestoreBenchResult> {
  const n = opts.transactions ?? 200_000;
  const log = opts.log ?? (() => {});
  const ownDir = opts.dir === undefined;
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'clnvault-bench-restore-'));
  const backup = join(dir, 'bench.v2');
  const dest = join(dir, 'lightningd.sqlite3');
  try {
    rmSync(backup, { force: true });
    rmSync(dest, { force: true });
    const g0 = performance.now();
    const statements = generate(backup, n);
    const generateMs = performance.now() - g0;
    const backupBytes = statSync(backup).size;
    log(`generated ${n + 1} entries, ${statements} statements, ${(backupBytes / 1e6).toFixed(1)} MB in ${(generateMs / 1000).toFixed(1)} s`);

    const runs: RestoreRun[] = [];
    for (let i = 0; i < (opts.runs ?? 1); i++) {
      rmSync(dest, { force: true });
      const load1 = loadavg()[0]!;
      const prof = opts.cpuProfDir !== undefined ? ['--cpu-prof', `--cpu-prof-dir=${opts.cpuProfDir}`] : [];
      const child = spawnSync(process.execPath, [...prof, fileURLToPath(import.meta.url), '--child', backup, dest], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
      if (child.status !== 0) throw new Error(`the restore process failed (exit ${child.status}, signal ${child.signal})`);
      const c = JSON.parse(child.stdout) as ChildResult;
      if (c.head !== n + 1 || c.statements !== statements) {
        throw new Error(`restore applied ${c.statements} statements up to ${c.head}, expected ${statements} up to ${n + 1}`);
      }
      const run = { restoreMs: c.restoreMs, restoreCpuMs: c.cpuMs, txPerSec: n / (c.restoreMs / 1000), txPerCpuSec: n / (c.cpuMs / 1000), load1, peakRssMiB: c.maxRssKb / 1024 };
      runs.push(run);
      if (opts.runs !== undefined && opts.runs > 1) log(`run ${i + 1}: ${formatRun(run)}`);
    }
    const median = [...runs].sort((a, b) => a.restoreMs - b.restoreMs)[Math.floor((runs.length - 1) / 2)]!;
    const secs = median.restoreMs / 1000;
    return {
      transactions: n,
      statements,
      backupBytes,
      generateMs,
      restoreMs: median.restoreMs,
      restoreCpuMs: median.restoreCpuMs,
      txPerSec: median.txPerSec,
      txPerCpuSec: median.txPerCpuSec,
      statementsPerSec: statements / secs,
      mbPerSec: backupBytes / 1e6 / secs,
      peakRssMiB: Math.max(...runs.map((r) => r.peakRssMiB)),
      runs,
    };
  } finally {
    if (ownDir && !opts.keep) rmSync(dir, { recursive: true, force: true });
  }
}

const k = (x: number): string => Math.round(x).toLocaleString('en-US');

function formatRun(r: RestoreRun): string {
  return `${k(r.txPerSec)} tx/s, ${(r.restoreMs / 1000).toFixed(2)} s wall, ${(r.restoreCpuMs / 1000).toFixed(2)} s CPU (${k(r.txPerCpuSec)} tx per CPU-second), peak RSS ${r.peakRssMiB.toFixed(1)} MiB, load ${r.load1.toFixed(2)}`;
}

interface ChildResult {
  restoreMs: number;
  cpuMs: number;
  maxRssKb: number;
  head: number;
  statements: number;
}

/** The timed part, in the child: open (the full scan), plan, replay, checks, fsync and rename. */
function childRestore(backup: string, dest: string): ChildResult {
  const r0 = performance.now();
  const c0 = process.cpuUsage();
  const reader = V2Reader.open(backup);
  let result;
  try {
    result = restoreBackup(reader, dest);
  } finally {
    reader.close();
  }
  const cpu = process.cpuUsage(c0);
  return {
    restoreMs: performance.now() - r0,
    cpuMs: (cpu.user + cpu.system) / 1000,
    maxRssKb: process.resourceUsage().maxRSS,
    head: result.head,
    statements: result.statements,
  };
}

function format(r: RestoreBenchResult): string {
  return [
    `restore: ${k(r.transactions)} invoice-shaped transactions, ${k(r.statements)} statements, ${(r.backupBytes / 1e6).toFixed(1)} MB` +
      (r.runs.length > 1 ? ` (median of ${r.runs.length} runs)` : ''),
    `  time           ${(r.restoreMs / 1000).toFixed(2)} s (CPU ${(r.restoreCpuMs / 1000).toFixed(2)} s)`,
    `  transactions/s ${k(r.txPerSec)} (wall; target >= 75,000)`,
    `  per CPU-second ${k(r.txPerCpuSec)} transactions (user + system time of the restoring process; wall approaches it on a quiet machine)`,
    `  statements/s   ${k(r.statementsPerSec)}`,
    `  MB/s           ${r.mbPerSec.toFixed(1)}`,
    `  peak RSS       ${r.peakRssMiB.toFixed(1)} MiB (the restoring process; target < 100 MiB at any size)`,
    `  load average   ${r.runs.map((x) => x.load1.toFixed(2)).join(', ')} (1 min, before each run)`,
  ].join('\n');
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href && process.argv[2] === '--child') {
  process.stdout.write(JSON.stringify(childRestore(process.argv[3]!, process.argv[4]!)));
} else if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const args = process.argv.slice(2);
  const num = (flag: string): number | undefined => {
    const i = args.indexOf(flag);
    return i >= 0 ? Number(args[i + 1]) : undefined;
  };
  const transactions = num('--transactions');
  const p = args.indexOf('--cpu-prof');
  const cpuProfDir = p >= 0 ? args[p + 1] : undefined;
  const runs = num('--runs');
  if ([transactions, runs].some((x) => x !== undefined && !(Number.isInteger(x) && x > 0))) {
    console.error('usage: node dist/bench/restore.js [--transactions N] [--runs N] [--keep] [--cpu-prof DIR]');
    process.exit(2);
  }
  const r = await benchRestore({ transactions, runs, keep: args.includes('--keep'), log: (l) => console.log(l), ...(cpuProfDir !== undefined ? { cpuProfDir } : {}) });
  console.log(format(r));
}
