/**
 * End-to-end bench against a real lightningd (CLNVAULT_LIGHTNINGD; skipped with one line when unset):
 * `invoice` and `datastore` calls timed through lightningd's JSON-RPC socket, with
 *   none      no db_write plugin
 *   minimal   bench/minimal-plugin.ts (parse, append, fdatasync, answer)
 *   clnvault  the built plugin, its backup made by `clnvault init`
 *   encrypted the same with `clnvault init --encrypt --key-file` (docs/encryption.md): what encryption
 *             costs a node's calls, beside issue 13's hook-level figure (bench/encryption.ts)
 * All nodes run at once; each run times every configuration in turn (order rotated per run), so load
 * changes on the machine hit them alike. Medians of the per-run p50/p99, and ratios to `none`.
 *
 *   node dist/bench/e2e.js [--calls N] [--runs R] [--warmup W] [--backup-dir DIR] [--json PATH]
 *
 * --backup-dir: where the plugins write (default: beside the node's database, the common case); e.g.
 * /dev/shm puts the backup on tmpfs, which leaves the protocol's cost without the disk's.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { initChain, mine } from '../test/e2e/chain.js';
import { LightningNode } from '../test/e2e/node.js';
import { fmtUs, summarize } from './stats.js';

const LIGHTNINGD = process.env.CLNVAULT_LIGHTNINGD;
if (!LIGHTNINGD) {
  console.log('bench/e2e: skipped: CLNVAULT_LIGHTNINGD is not set (path of a lightningd binary; see docs/e2e-lightningd.md)');
  process.exit(0);
}

const { values } = parseArgs({
  options: {
    calls: { type: 'string', default: '300' },
    runs: { type: 'string', default: '5' },
    warmup: { type: 'string', default: '200' },
    'backup-dir': { type: 'string' },
    json: { type: 'string' },
  },
});
const CALLS = Number(values.calls);
const RUNS = Number(values.runs);
const WARMUP = Number(values.warmup);
for (const [k, v] of [['calls', CALLS], ['runs', RUNS], ['warmup', WARMUP]] as const) {
  if (!Number.isSafeInteger(v) || v < 0 || (k !== 'warmup' && v < 1)) {
    console.error(`bench/e2e: --${k} must be a positive integer`);
    process.exit(2);
  }
}

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const MINIMAL = fileURLToPath(new URL('./minimal-plugin.js', import.meta.url));
const CONFIGS = ['none', 'minimal', 'clnvault', 'encrypted'] as const;
type Config = (typeof CONFIGS)[number];
const METHODS = ['invoice', 'datastore'] as const;
type Method = (typeof METHODS)[number];

const root = mkdtempSync(join(tmpdir(), 'clnvault-bench-e2e-'));
const backupRoot = values['backup-dir'] ? mkdtempSync(join(values['backup-dir'], 'clnvault-bench-e2e-')) : null;
const nodes = new Map<Config, LightningNode>();

async function main(): Promise<void> {
  const chain = join(root, 'chain');
  initChain(chain);
  mine(chain, 1);
  for (const c of CONFIGS) {
    const dir = join(root, c);
    const netDir = join(dir, 'regtest');
    mkdirSync(netDir, { recursive: true });
    const where = backupRoot === null ? netDir : join(backupRoot, c);
    mkdirSync(where, { recursive: true });
    let plugin: string | null = null;
    if (c === 'clnvault') {
      execFileSync(process.execPath, [CLI, 'init', '--lightning-dir', netDir, pathToFileURL(join(where, 'clnvault.bkp')).href], { stdio: 'ignore' });
    } else if (c === 'encrypted') {
      const key = join(dir, 'backup.key');
      execFileSync(process.execPath, [CLI, 'keygen', key], { stdio: 'ignore' });
      execFileSync(process.execPath, [CLI, 'init', '--encrypt', '--key-file', key, '--lightning-dir', netDir, pathToFileURL(join(where, 'clnvault.bkp')).href], { stdio: 'ignore' });
    } else if (c === 'minimal') {
      // lightningd executes the plugin file itself: a wrapper gives it a run bit and its output directory
      plugin = join(dir, 'minimal-plugin.sh');
      writeFileSync(plugin, `#!/bin/sh\ncd '${where}' && exec '${process.execPath}' '${MINIMAL}'\n`);
      chmodSync(plugin, 0o755);
    }
    const node = new LightningNode({
      name: c,
      dir,
      chainDir: chain,
      lightningd: LIGHTNINGD!,
      importantPlugin: c === 'clnvault' || c === 'encrypted' ? undefined : plugin,
      // the same background work for all, and little of it: no block polling every second
      args: ['--dev-bitcoind-poll=30', '--log-level=info'],
    });
    nodes.set(c, node);
  }
  await Promise.all([...nodes.values()].map((n) => n.start()));

  let seq = 0;
  const call = async (node: LightningNode, m: Method): Promise<number> => {
    const i = ++seq;
    const params =
      m === 'invoice'
        ? { amount_msat: 1000 + i, label: `bench-${i}`, description: 'bench e2e' }
        : { key: ['bench', String(i)], string: 'v'.repeat(256), mode: 'must-create' };
    const t0 = process.hrtime.bigint();
    await node.rpc(m, params);
    return Number(process.hrtime.bigint() - t0) / 1000;
  };

  for (const c of CONFIGS) for (const m of METHODS) for (let i = 0; i < WARMUP; i++) await call(nodes.get(c)!, m);

  const perRun = new Map<string, { p50: number; p99: number }[]>();
  const loads: number[] = [];
  for (let r = 0; r < RUNS; r++) {
    loads.push(loadavg()[0]!);
    const order = CONFIGS.map((_, k) => CONFIGS[(k + r) % CONFIGS.length]!);
    for (const m of METHODS) {
      for (const c of order) {
        const samples: number[] = [];
        for (let i = 0; i < CALLS; i++) samples.push(await call(nodes.get(c)!, m));
        const s = summarize(samples);
        const key = `${c}/${m}`;
        perRun.set(key, [...(perRun.get(key) ?? []), { p50: s.p50, p99: s.p99 }]);
      }
    }
  }
  loads.push(loadavg()[0]!);

  const median = (xs: number[]): number => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
  };
  const result: Record<string, { p50: number; p99: number; p50Ratio: number; p99Ratio: number }> = {};
  console.log(
    `bench/e2e: ${LIGHTNINGD}, ${RUNS} runs x ${CALLS} calls per configuration and method (${WARMUP} warm-up calls each), ` +
      `backup ${backupRoot === null ? 'beside the database' : `in ${values['backup-dir']}`}; 1-min load ${loads.map((l) => l.toFixed(1)).join(' -> ')}`,
  );
  console.log('method     config     p50 (median of runs)  p99 (median of runs)  p50 / none  p99 / none');
  for (const m of METHODS) {
    const base = perRun.get(`none/${m}`)!;
    const b50 = median(base.map((x) => x.p50));
    const b99 = median(base.map((x) => x.p99));
    for (const c of CONFIGS) {
      const rs = perRun.get(`${c}/${m}`)!;
      const p50 = median(rs.map((x) => x.p50));
      const p99 = median(rs.map((x) => x.p99));
      result[`${c}/${m}`] = { p50, p99, p50Ratio: p50 / b50, p99Ratio: p99 / b99 };
      console.log(
        `${m.padEnd(10)} ${c.padEnd(10)} ${fmtUs(p50).padStart(20)}  ${fmtUs(p99).padStart(20)}  ${(p50 / b50).toFixed(2).padStart(9)}x  ${(p99 / b99).toFixed(2).padStart(9)}x`,
      );
    }
  }
  const inv = (c: Config): number => result[`${c}/invoice`]!.p50 - result['none/invoice']!.p50;
  console.log(
    `invoice p50 overhead over no plugin: minimal ${fmtUs(inv('minimal'))}, clnvault ${fmtUs(inv('clnvault'))} ` +
      `(target: clnvault at most the minimal plugin's: ${inv('clnvault') <= inv('minimal') ? 'met' : 'NOT met'})`,
  );
  for (const m of METHODS) {
    const plain = result[`clnvault/${m}`]!.p50;
    const enc = result[`encrypted/${m}`]!.p50;
    console.log(`${m} p50 encrypted / clnvault: ${(enc / plain).toFixed(3)}x (${enc >= plain ? '+' : '-'}${fmtUs(Math.abs(enc - plain))})`);
  }
  if (values.json) writeFileSync(values.json, JSON.stringify({ lightningd: LIGHTNINGD, runs: RUNS, calls: CALLS, loads, result }) + '\n');
}

async function cleanup(): Promise<void> {
  // every node is stopped or killed whatever happens to the others: none may outlive the bench
  for (const n of nodes.values()) {
    try {
      await n.stop();
    } catch {
      await n.kill().catch(() => n.proc?.kill('SIGKILL'));
    }
  }
  rmSync(root, { recursive: true, force: true });
  if (backupRoot !== null) rmSync(backupRoot, { recursive: true, force: true });
}

main()
  .then(cleanup)
  .catch(async (e) => {
    console.error(`bench/e2e: ${(e as Error).stack ?? String(e)}`);
    await cleanup().catch(() => undefined);
    process.exit(1);
  });
