/**
 * What encryption costs (issue 13, docs/encryption.md): db_write round trips through the real plugin
 * with and without encryption at 1 KB and 100 KB (p50, p99, CPU per call), and restore throughput of an
 * encrypted backup against the same backup in clear. Plain and encrypted runs alternate, round by round,
 * so both see the same background load; the load average is printed beside the figures.
 *
 *   node dist/bench/encryption.js [--dir DIR] [--n1k N] [--n100k N] [--warmup N] [--rounds N] [--transactions N]
 *                                 [--ahead MODE[,MODE...]] [--only hook|restore]
 *
 * --ahead: how the encrypted restore decrypts: auto (the default: src/crypto/decrypt-ahead.ts decides),
 * always (in its worker thread), never (inline). Several modes (e.g. never,always) are run in the same
 * rounds, in turn with the plain restore, so that they see the same load: the figures that decide the gate.
 *
 * Targets: encrypted p50 within 1.1x of plain at 1 KB; restore rate at least 0.8x of plain.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { changePayloadLength, createV2, encodeChangeRecord, recordSeedOf, RECORD_HEADER_LEN, RECORD_OVERHEAD, TYPE_CHANGE } from '../src/backends/file/v2.js';
import { encodeChangePayloadAt, encodeRecordHeader, FLAG_ENCRYPTED, FLAG_PRAGMA_ONLY, writeU64 } from '../src/backends/file/v2/codec.js';
import { writeFully } from '../src/backends/file/fsutil.js';
import { openReader } from '../src/backends/open.js';
import { encOverhead, keyKindCode, prefixLen, RecordCrypt } from '../src/crypto/records.js';
import { unlockAndAuthenticate } from '../src/crypto/authenticate.js';
import { keyFromKeyFile, writeKeyFile, type BackupKey } from '../src/crypto/keys.js';
import { isPragmaOnly } from '../src/engine/versions.js';
import { restoreBackup } from '../src/restore/restore.js';
import { crc32 } from 'node:zlib';
import { MINIMAL, runPlugin, type PluginRun } from './plugin.js';
import { invoiceBatch, SCHEMA } from './restore.js';
import { fmtUs } from './stats.js';

function prepareEncrypted(nd: string): void {
  const key = writeKeyFile(join(nd, 'backup.key'));
  createV2(join(nd, 'backup.bkp'), { kind: keyKindCode(key.kind), fingerprint: Buffer.from(key.fingerprint, 'hex') });
  writeFileSync(join(nd, 'backup.lock'), JSON.stringify({ backend_url: `file://${join(nd, 'backup.bkp')}`, encrypt: { key_file: join(nd, 'backup.key') } }));
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)]!;
}

interface Pair {
  label: string;
  plain: PluginRun[];
  enc: PluginRun[];
  /** 1 KB only: bench/minimal-plugin.ts without and with `seal`, in the same rounds */
  minPlain: PluginRun[];
  minSeal: PluginRun[];
  load: number[];
}

async function hookBench(dir: string, n1k: number, n100k: number, warmup: number, rounds: number, say: (s: string) => void): Promise<Pair[]> {
  const out: Pair[] = [];
  for (const [label, bytes, n] of [['1 KB', 1024, n1k], ['100 KB', 100 * 1024, n100k]] as const) {
    const pair: Pair = { label, plain: [], enc: [], minPlain: [], minSeal: [], load: [] };
    for (let r = 0; r < rounds; r++) {
      pair.load.push(loadavg()[0]!);
      // alternate which goes first, so neither always runs on a warmer disk
      const first = r % 2 === 0;
      const a = await runPlugin(dir, bytes, warmup + n, warmup, undefined, first ? undefined : prepareEncrypted);
      const b = await runPlugin(dir, bytes, warmup + n, warmup, undefined, first ? prepareEncrypted : undefined);
      pair.plain.push(first ? a : b);
      pair.enc.push(first ? b : a);
      if (bytes === 1024) {
        // the floor of the ratio: a plugin doing nothing but append and fdatasync, without and with AES-GCM
        const mode = (seal: boolean): string[] => [...MINIMAL, ...(seal ? ['seal'] : [])];
        const c = await runPlugin(dir, bytes, warmup + n, warmup, mode(!first));
        const d = await runPlugin(dir, bytes, warmup + n, warmup, mode(first));
        pair.minPlain.push(first ? c : d);
        pair.minSeal.push(first ? d : c);
      }
    }
    const p50p = median(pair.plain.map((x) => x.latencyUs.p50));
    const p50e = median(pair.enc.map((x) => x.latencyUs.p50));
    const cpup = median(pair.plain.map((x) => x.cpuUsPerCall));
    const cpue = median(pair.enc.map((x) => x.cpuUsPerCall));
    say(`\n${label} db_write (${n} calls after ${warmup} warm-up, median of ${rounds} alternating rounds; load ${pair.load.map((l) => l.toFixed(2)).join(', ')}):`);
    say(`  plain      p50 ${fmtUs(p50p)}  p99 ${fmtUs(median(pair.plain.map((x) => x.latencyUs.p99)))}  CPU ${fmtUs(cpup)}/call`);
    say(`  encrypted  p50 ${fmtUs(p50e)}  p99 ${fmtUs(median(pair.enc.map((x) => x.latencyUs.p99)))}  CPU ${fmtUs(cpue)}/call`);
    say(`  ratio      p50 ${(p50e / p50p).toFixed(3)}x${label === '1 KB' ? ' (target <= 1.1x)' : ''}  CPU +${fmtUs(cpue - cpup)}/call`);
    if (pair.minSeal.length > 0) {
      const mp = median(pair.minPlain.map((x) => x.latencyUs.p50));
      const ms = median(pair.minSeal.map((x) => x.latencyUs.p50));
      const mcp = median(pair.minPlain.map((x) => x.cpuUsPerCall));
      const mcs = median(pair.minSeal.map((x) => x.cpuUsPerCall));
      say(`  floor: bench/minimal-plugin.ts (append, fdatasync, answer) p50 ${fmtUs(mp)}; with \`seal\` (Node's AES-256-GCM per message, cipher made ahead) p50 ${fmtUs(ms)}`);
      say(`         ratio p50 ${(ms / mp).toFixed(3)}x  CPU +${fmtUs(mcs - mcp)}/call: what per-record AES-GCM costs a Node plugin here, with nothing else`);
      say(`         per round: clnvault ${pair.enc.map((x, i) => (x.latencyUs.p50 / pair.plain[i]!.latencyUs.p50).toFixed(2)).join(', ')}; minimal ${pair.minSeal.map((x, i) => (x.latencyUs.p50 / pair.minPlain[i]!.latencyUs.p50).toFixed(2)).join(', ')}`);
    }
    out.push(pair);
  }
  return out;
}

/**
 * The restore bench's invoice batches as a backup, plain or encrypted (`master`: the writer's own record
 * layout, V2Writer.encryptChange's steps), in big writes: a per-append fdatasync would only slow generation.
 */
export function generate(path: string, n: number, master: BackupKey | null): void {
  createV2(path, master ? { kind: keyKindCode(master.kind), fingerprint: Buffer.from(master.fingerprint, 'hex') } : null);
  const fd = openSync(path, 'r+');
  const header = Buffer.alloc(64);
  readSync(fd, header, 0, 64, 0);
  // the backup id is in every record's AAD
  const key = master ? new RecordCrypt(master.key, header.subarray(16, 32), master.fingerprint) : null;
  // format 4: record header CRCs are seeded with the file header's ids
  const seed = recordSeedOf(header);
  let at = statSync(path).size;
  let chunk: Buffer[] = [];
  let bytes = 0;
  const flush = (): void => {
    const b = Buffer.concat(chunk, bytes);
    writeFully(fd, b, at);
    at += b.length;
    chunk = [];
    bytes = 0;
  };
  const add = (version: number, stmts: string[]): void => {
    let rec: Buffer;
    if (key === null) rec = encodeChangeRecord(version, stmts, undefined, seed);
    else {
      const len = changePayloadLength(stmts);
      rec = Buffer.allocUnsafe(RECORD_OVERHEAD + len + encOverhead(TYPE_CHANGE));
      encodeChangePayloadAt(rec, RECORD_HEADER_LEN + prefixLen(TYPE_CHANGE), stmts, len);
      const flags = FLAG_ENCRYPTED | (isPragmaOnly(stmts) ? FLAG_PRAGMA_ONLY : 0);
      const stored = key.sealInPlace(rec, RECORD_HEADER_LEN, { type: TYPE_CHANGE, flags, version, parts: 0 }, len);
      encodeRecordHeader(rec, TYPE_CHANGE, version, stored, crc32(rec.subarray(RECORD_HEADER_LEN, RECORD_HEADER_LEN + stored)), 0, flags, seed);
      writeU64(rec, stored, RECORD_HEADER_LEN + stored);
      key.committed();
    }
    chunk.push(rec);
    bytes += rec.length;
    if (bytes >= 4 << 20) flush();
  };
  try {
    add(1, SCHEMA);
    for (let i = 1; i <= n; i++) add(i + 1, invoiceBatch(i));
    flush();
  } finally {
    closeSync(fd);
  }
}

interface ChildResult {
  ms: number;
  /** every thread's (the encrypted restore's decrypting worker included) */
  cpuMs: number;
  /** the restore's own thread: what the wall-clock rate is bound by when a core is free for the worker; null off Linux */
  mainCpuMs: number | null;
  head: number;
  /** change records the decrypting worker gave (0: it did not start, e.g. --ahead never, or a single CPU) */
  ahead: number;
}

/** CPU time of this process's main thread (Linux: /proc/self/task/PID/stat, clock ticks of 10 ms), or null. */
function mainThreadCpuMs(): number | null {
  try {
    const f = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return null;
  }
}

/** In the child: open (scan), authenticate (encrypted), plan, replay, checks; as `clnvault restore` does (the same reader too). */
type AheadMode = 'auto' | 'always' | 'never';

function child(backup: string, dest: string, keyPath: string | null, mode: AheadMode): ChildResult {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  const m0 = mainThreadCpuMs();
  const reader = openReader(`file://${backup}`, '/');
  try {
    if (keyPath) {
      const a = unlockAndAuthenticate(reader, keyFromKeyFile(keyPath), 'chain');
      if (!a || a.problem) throw new Error(`authentication failed: ${a?.problem?.message}`);
    }
    const r = restoreBackup(reader, dest, { decryptAhead: mode });
    const cpu = process.cpuUsage(c0);
    const m1 = mainThreadCpuMs();
    const ahead = (reader as { decryptedAhead?: number }).decryptedAhead ?? 0;
    return { ms: performance.now() - t0, cpuMs: (cpu.user + cpu.system) / 1000, mainCpuMs: m0 === null || m1 === null ? null : m1 - m0, head: r.head, ahead };
  } finally {
    reader.close();
  }
}

function restoreBench(dir: string, n: number, rounds: number, modes: AheadMode[], say: (s: string) => void): void {
  const keyPath = join(dir, 'restore.key');
  const key = writeKeyFile(keyPath);
  const plainPath = join(dir, 'plain.bkp');
  const encPath = join(dir, 'enc.bkp');
  generate(plainPath, n, null);
  generate(encPath, n, key);
  // per kind (plain, or the encrypted restore in one mode): tx/s wall, per CPU-second (all threads), per
  // main-thread CPU-second; on a loaded machine the wall-clock rate mostly measures the other processes
  interface Runs {
    wall: number[];
    cpu: number[];
    main: number[];
    ahead: number[];
  }
  const kinds = ['plain', ...modes] as const;
  const runs = new Map<string, Runs>(kinds.map((k) => [k, { wall: [], cpu: [], main: [], ahead: [] }]));
  const load: number[] = [];
  for (let r = 0; r < rounds; r++) {
    load.push(loadavg()[0]!);
    // each kind goes first in turn, so that none always runs on a warmer disk or a quieter minute
    const order = kinds.map((_, i) => kinds[(i + r) % kinds.length]!);
    for (const which of order) {
      const dest = join(dir, `restored-${which}.sqlite3`);
      rmSync(dest, { force: true });
      const args = [fileURLToPath(import.meta.url), '--child', which === 'plain' ? plainPath : encPath, dest, which === 'plain' ? '' : keyPath, which === 'plain' ? 'never' : which];
      const c = spawnSync(process.execPath, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
      if (c.status !== 0) throw new Error(`restore child failed (${c.status})`);
      const res = JSON.parse(c.stdout) as ChildResult;
      if (res.head !== n + 1) throw new Error(`restored to ${res.head}, expected ${n + 1}`);
      const k = runs.get(which)!;
      k.wall.push(n / (res.ms / 1000));
      k.cpu.push(n / (res.cpuMs / 1000));
      if (res.mainCpuMs !== null) k.main.push(n / (res.mainCpuMs / 1000));
      k.ahead.push(res.ahead);
      rmSync(dest, { force: true });
    }
  }
  const fmt = (x: number): string => Math.round(x).toLocaleString('en-US');
  const p = runs.get('plain')!;
  say(`\nrestore of ${n} invoice-shaped transactions (${(statSync(plainPath).size / 1e6).toFixed(1)} MB plain, ${(statSync(encPath).size / 1e6).toFixed(1)} MB encrypted), median of ${rounds} rounds, kinds in turn; load ${load.map((l) => l.toFixed(2)).join(', ')}:`);
  say(`  plain             ${fmt(median(p.wall))} tx/s   (runs: ${p.wall.map(fmt).join(', ')})`);
  for (const m of modes) {
    const e = runs.get(m)!;
    say(`  encrypted ${m.padEnd(7)} ${fmt(median(e.wall))} tx/s   (runs: ${e.wall.map(fmt).join(', ')}; records decrypted by the worker thread: ${e.ahead.join(', ')})`);
    say(`    ratio           ${(median(e.wall) / median(p.wall)).toFixed(3)}x wall-clock (target >= 0.8x); per round: ${e.wall.map((x, i) => (x / p.wall[i]!).toFixed(2)).join(', ')}`);
    say(`    per CPU-second: plain ${fmt(median(p.cpu))} tx, encrypted ${fmt(median(e.cpu))} tx: ${(median(e.cpu) / median(p.cpu)).toFixed(3)}x`);
    if (p.main.length > 0 && e.main.length > 0) {
      // with a core free for the worker thread, the restore's own thread bounds the wall clock
      say(`    per main-thread CPU-second: plain ${fmt(median(p.main))} tx, encrypted ${fmt(median(e.main))} tx: ${(median(e.main) / median(p.main)).toFixed(3)}x`);
    }
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href && process.argv[2] === '--child') {
  process.stdout.write(JSON.stringify(child(process.argv[3]!, process.argv[4]!, process.argv[5] || null, (process.argv[6] ?? 'auto') as AheadMode)));
} else if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: { dir: { type: 'string' }, n1k: { type: 'string' }, n100k: { type: 'string' }, warmup: { type: 'string' }, rounds: { type: 'string' }, transactions: { type: 'string' }, ahead: { type: 'string', default: 'auto' }, only: { type: 'string' } },
  });
  const dir = mkdtempSync(join(values.dir ?? tmpdir(), 'clnvault-bench-enc-'));
  const say = (s: string): void => console.log(s);
  try {
    say(`bench/encryption.ts on ${dir} (uptime: ${spawnSync('uptime', { encoding: 'utf8' }).stdout.trim()})`);
    const rounds = Number(values.rounds ?? 3);
    const modes = values.ahead.split(',') as AheadMode[];
    if (modes.length === 0 || modes.some((m) => m !== 'auto' && m !== 'always' && m !== 'never')) throw new Error('--ahead takes auto, always or never, or several of them separated by commas');
    if (values.only !== 'restore') await hookBench(dir, Number(values.n1k ?? 2000), Number(values.n100k ?? 300), Number(values.warmup ?? 3000), rounds, say);
    if (values.only !== 'hook') restoreBench(dir, Number(values.transactions ?? 50_000), rounds, modes, say);
    say(`\n(uptime after: ${spawnSync('uptime', { encoding: 'utf8' }).stdout.trim()})`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
