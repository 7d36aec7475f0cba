import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createBackup, openReader } from '../backends/open.js';
import { writeBackupLock } from '../engine/backup-lock.js';
import { restoreBackup } from '../restore/restore.js';
import { FRESH_POSTINIT, FRESH_PREINIT } from '../sim/cln-startup.js';
import { SimNode } from '../sim/lightningd.js';
import { runWorkload, Workload, type WorkloadOptions } from '../sim/workload.js';
import { CliError, EXIT, out, parse, progressReporter, type Command } from './common.js';
import { compareDatabases } from './db-compare.js';
import { formatBytes } from './verify.js';

const help = `Usage: clnvault demo [--dir DIR] [--keep] [--transactions N]

Shows clnvault end to end with nothing else installed: a simulated Core Lightning
v26.06.6 node (the test harness that speaks to plugins exactly as lightningd does)
runs the real clnvault plugin through CLN's recorded start-up writes, then a
generated workload of invoices and payments, with a restart and a crash between the
db_write hook and the commit in the middle. Then it restores the backup and compares
the result with the node's database, table by table. This is what 'npm start' runs.

Options:
  --dir DIR         work in DIR (created if missing; must be empty) and keep the files
  --keep            keep the temporary directory (node dir, backup, restored database)
  --transactions N  generated transactions (default 3000)
  -h, --help        this help

Exit codes: 0 the restored database matches, 1 it does not or the demo failed, 2 bad usage.

Example:
  clnvault demo --dir /tmp/clnvault-demo
  then: clnvault inspect file:///tmp/clnvault-demo/backup.clnvault`;

/** Invoices and payments dominate, as on a real node; datastore values stay small so the demo stays quick. */
const WORKLOAD: WorkloadOptions = { mix: { datastore: 4, 'datastore-delete': 1 }, datastoreSize: [100, 8192] };
const SEED = 20260606;

export const demoCommand: Command = {
  name: 'demo',
  summary: 'run a simulated node through the real plugin, restore, and compare (npm start)',
  help,
  async run(argv) {
    const { values } = parse('demo', argv, {
      dir: { type: 'string' },
      keep: { type: 'boolean' },
      transactions: { type: 'string' },
    }, { min: 0, max: 0, names: 'no arguments' });
    if (values.help) {
      out(help);
      return EXIT.ok;
    }
    const total = values.transactions === undefined ? 3000 : Number(values.transactions);
    if (!Number.isInteger(total) || total < 2 || total > 1_000_000) {
      throw new CliError(`--transactions takes a whole number from 2 to 1000000, not ${JSON.stringify(values.transactions)}`, EXIT.usage);
    }
    let dir: string;
    if (typeof values.dir === 'string') {
      dir = resolve(values.dir);
      if (existsSync(dir) && (!statSync(dir).isDirectory() || readdirSync(dir).length > 0)) {
        throw new CliError(`--dir ${dir} exists and is not an empty directory; give a new or empty one`, EXIT.usage);
      }
      mkdirSync(dir, { recursive: true });
    } else {
      dir = mkdtempSync(join(tmpdir(), 'clnvault-demo-'));
    }
    const keep = values.keep === true || typeof values.dir === 'string';
    let ok = false;
    try {
      await demo(dir, total, keep);
      ok = true;
    } catch (e) {
      throw new CliError(`${(e as Error).message} (files left in ${dir})`);
    } finally {
      if (ok && !keep) rmSync(dir, { recursive: true, force: true });
    }
    return EXIT.ok;
  },
};

async function demo(dir: string, total: number, keep: boolean): Promise<void> {
  const netDir = join(dir, 'regtest');
  mkdirSync(netDir, { recursive: true });
  const backup = join(dir, 'backup.clnvault');
  const url = pathToFileURL(backup).href;
  // what 'clnvault init --lightning-dir' does for a new node
  createBackup(url, dir, 'v2');
  writeBackupLock(netDir, { backend_url: url });

  out('clnvault demo: a simulated Core Lightning v26.06.6 node running the real clnvault plugin');
  out(`  node dir  ${netDir}   backup  ${backup}`);
  const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000, exitGraceMs: 5_000 });
  const logsSince = (mark: number, re: RegExp): boolean => node.logs.slice(mark).some((l) => re.test(l.message));
  try {
    await node.boot();
    out(
      `1. started: the recorded CLN start-up (schema, migrations, node identity), ${FRESH_PREINIT.length + FRESH_POSTINIT.length} ` +
        `db_write calls, each backed up and fdatasynced before lightningd commits it; data_version ${node.dataVersion()}`,
    );

    const first = Math.floor(total / 2);
    const a = await generate(node, SEED, first);
    out(`2. ${a.line}`);

    let mark = node.logs.length;
    await node.restart();
    await node.boot();
    if (!logsSince(mark, /versions match up/)) throw new Error('after the restart the plugin did not report "versions match up"');
    out(`3. restarted lightningd: the plugin found the backup and the database at the same version ("versions match up")`);

    const lost = Workload.fromDb(node.dbPath, SEED + 1, WORKLOAD).invoice().batches[0]!;
    if (lost.kind !== 'tx') throw new Error('internal: an invoice is one transaction');
    const crash = await node.crashBeforeCommit(lost.statements);
    if (crash.answered !== 'continue' || !node.crashed) throw new Error(`the crash step did not go as planned: ${JSON.stringify(crash)}`);
    const crashedAt = crash.dataVersion;
    mark = node.logs.length;
    await node.boot();
    if (!logsSince(mark, /never committed/)) throw new Error(`after the crash the plugin did not remove version ${crashedAt} from the backup`);
    out(
      `4. crashed lightningd after the plugin backed up version ${crashedAt} but before the commit (a power cut): at the ` +
        `restart lightningd re-sent version ${crashedAt} with different content, and the plugin removed the uncommitted ` +
        `entry from the backup (truncate + fdatasync) before storing the new one`,
    );

    const b = await generate(node, SEED + 2, total - first);
    out(`5. ${b.line}`);
    await node.stop();
    const head = node.dataVersion();

    const reader = openReader(url, dir);
    const st = reader.stats();
    out(`6. stopped lightningd at data_version ${head}; the backup holds ${st.entries} entries, ${formatBytes(st.bytes)}, head version ${st.head}`);
    const restoredDir = join(dir, 'restored');
    mkdirSync(restoredDir);
    const progress = progressReporter('restoring', 'entries');
    let r;
    try {
      r = restoreBackup(reader, restoredDir, { onProgress: (p) => progress.update(p.applied, p.total) });
    } finally {
      progress.finish();
      reader.close();
    }
    out(
      `7. restored ${r.path} in ${(r.elapsedMs / 1000).toFixed(1)}s: ${r.applied} entries` +
        (r.dropped > 0 ? ` (${r.dropped} stale skipped)` : '') +
        `, integrity_check ok, no foreign key violations, data_version ${r.head}`,
    );
    const c = compareDatabases(r.path, node.dbPath);
    if (!c.equal) {
      const bad = c.tables.filter((t) => !t.equal).map((t) => t.table);
      throw new Error(`the restored database differs from the node's in ${bad.join(', ') || 'its schema'}`);
    }
    out(`8. compared with the node's database table by table: ${c.tables.length} tables, ${c.totalRows} rows, identical schema and content`);
    out(
      keep
        ? `Files kept in ${dir}; try: clnvault inspect ${url}  |  clnvault status --lightning-dir ${netDir}`
        : `Files were in ${dir} (removed; run 'clnvault demo --keep' to look at them)`,
    );
    out(`The restored database matches the node's database at data_version ${head}: every committed transaction was in the backup.`);
  } finally {
    await node.stop().catch(() => undefined);
  }
}

async function generate(node: SimNode, seed: number, items: number): Promise<{ line: string }> {
  const wl = Workload.fromDb(node.dbPath, seed, WORKLOAD);
  const kinds = new Map<string, number>();
  const progress = progressReporter('transactions', 'items');
  const t0 = performance.now();
  let run;
  try {
    run = await runWorkload(node, wl, items, (item, i) => {
      kinds.set(item.kind, (kinds.get(item.kind) ?? 0) + 1);
      progress.update(i, items);
    });
    progress.update(items, items);
  } finally {
    progress.finish();
  }
  if (run.failure) throw new Error(`the plugin refused item ${run.failure.item}: ${run.failure.detail}`);
  const secs = (performance.now() - t0) / 1000;
  const calls = run.transactions + run.pragmas;
  const invoices = (kinds.get('invoice') ?? 0) + (kinds.get('invoice-paid') ?? 0);
  const payments = (kinds.get('payment') ?? 0) + (kinds.get('payment-complete') ?? 0);
  return {
    line:
      `${run.transactions} transactions (${invoices} invoice and ${payments} payment updates, the rest datastore and ` +
      `table rebuilds), ${formatBytes(run.bytes)} of SQL, in ${secs.toFixed(1)}s: ${((secs * 1000) / Math.max(1, calls)).toFixed(2)} ms ` +
      `per db_write round trip including the plugin's fdatasync; data_version now ${node.dataVersion()}`,
  };
}
