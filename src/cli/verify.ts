import Database from '../engine/sqlite.js';
import { accessSync, constants, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import type { BackupReader } from '../backends/backend.js';
import { backupPath, isRemoteUrl, missingFirstFile, openReader } from '../backends/open.js';
import { redact } from '../backends/postgres/url.js';
import type { Problem } from '../engine/entries.js';
import { DB_NAME, readDataVersion } from '../engine/live-db.js';
import { nodeRunning } from '../engine/node-running.js';
import { serialDiff } from '../engine/versions.js';
import { restoreBackup, type RestoreResult } from '../restore/restore.js';
import { CliError, COMMON_OPTIONS_HELP, EXIT, info, out, parse, printJson, progressReporter, type Command } from './common.js';
import { compareDatabases, type Comparison } from './db-compare.js';
import { pathToFileURL } from 'node:url';
import { destinationsOf, readBackupLock } from '../engine/backup-lock.js';
import { resolveNetworkDir } from './lightning-dir.js';
import { KEY_OPTIONS, KEY_OPTIONS_HELP, keyFromOptions } from './key-options.js';
import { authJson, newestLine, unlockAndAuthenticate, type AuthResult } from '../crypto/authenticate.js';

const help = `Usage: clnvault verify [--against PATH] [--json] [--keep] [--tmp-dir DIR] [--quiet|--progress]
                       [--hsm-secret PATH | --mnemonic-file PATH | --key-file PATH] URL
       clnvault verify --lightning-dir DIR [--json] [--keep] [--tmp-dir DIR] [--quiet|--progress]

A restore drill: restores the backup at URL into a temporary directory, runs the
checks a real restore runs (every record readable and its checksum right for v2,
PRAGMA integrity_check, foreign_key_check, data_version == the backup's head), and
with --against compares the result with the node's database table by table (schema,
row counts, SHA-256 of each table's rows).

The node's database is never written: verify reads a consistent copy of it through
SQLite's online backup API (a read-only connection), so it is safe to run while
lightningd runs. The backup may legitimately be ahead of the node (a transaction is
backed up before lightningd commits it): verify then also restores the backup at the
node's data_version and compares that.

With --lightning-dir instead of URL, every destination in DIR/backup.lock is drilled
in turn against DIR's database (several destinations, docs/destinations.md); it
passes only when each one does (a destination that is behind the node fails: it would
restore an older database).

Options:
  --lightning-dir DIR  drill each of DIR/backup.lock's destinations against DIR
  --against PATH   the node's lightningd.sqlite3, or its network directory
  --json           print the result as JSON on stdout
  --keep           keep the temporary directory (restored copies) and print where it is
  --tmp-dir DIR    where to make the temporary directory (default: the system's tmp dir);
                   needs room for about twice the database
${KEY_OPTIONS_HELP}
                   An encrypted backup needs its key: every record is decrypted and
                   authenticated, with the chain between them; the newest authenticated
                   version and its time are shown
${COMMON_OPTIONS_HELP}
  -h, --help       this help

Exit codes: 0 pass, 1 mismatch or damaged backup (the drill ran and failed),
2 could not run (bad usage, backup or database missing or unreadable).

URL is a file: URL (file:///mnt/usb/clnvault.bkp) or a plain path (/mnt/usb/clnvault.bkp).

Example (a daily drill from cron: silent on PASS, so cron mails only a failure):
  clnvault verify --quiet file:///mnt/usb/clnvault.bkp --against ~/.lightning/bitcoin`;

/** The drill could not run; distinct from a drill that ran and failed. */
class CouldNotRun extends CliError {
  constructor(message: string) {
    super(message, EXIT.usage);
  }
}

interface Against {
  path: string;
  dataVersion: number;
  /** how many versions the backup's head is ahead of the node (negative: the node is ahead) */
  backupAhead: number;
  comparedAtVersion: number | null;
  nodeRunning: string | null;
  comparison: Comparison | null;
}

interface VerifyReport {
  result: 'pass' | 'mismatch' | 'error';
  ok: boolean;
  url: string;
  message: string;
  backup: { format: string; location: string; head: number; entries: number; bytes: number; problems: Problem[] } | null;
  /** an encrypted backup: what its key authenticated */
  authenticated?: Record<string, unknown>;
  restore: Omit<RestoreResult, 'path'> | null;
  against: Against | null;
  kept: string | null;
}

/** What to say about a last record that is whole but fails its checksum (Problem.suspect). */
export function suspectAdvice(p: { offset: number; message: string }): string {
  return (
    `the backup's last record, at offset ${p.offset}, is complete in length but fails its checksum (${p.message}). ` +
    `If lightningd or its plugin crashed while writing it, that write was never acknowledged and leaving it out is right ` +
    `('clnvault restore --stop-at-damage' does); otherwise the backup is damaged and a restore would silently be older than it should`
  );
}

export const verifyCommand: Command = {
  name: 'verify',
  summary: 'restore drill: restore to a temp dir, check, compare with the live database',
  help,
  async run(argv) {
    const { values, positionals } = parse('verify', argv, {
      against: { type: 'string' },
      json: { type: 'boolean' },
      keep: { type: 'boolean' },
      'tmp-dir': { type: 'string' },
      'lightning-dir': { type: 'string' },
      ...KEY_OPTIONS,
    }, { min: 0, max: 1, names: 'one backup URL (or --lightning-dir)' });
    if (values.help) {
      out(help);
      return EXIT.ok;
    }
    if (typeof values['lightning-dir'] === 'string') {
      if (positionals.length > 0 || values.against !== undefined) {
        throw new CliError('--lightning-dir drills the destinations of its backup.lock against its database: give no URL and no --against', EXIT.usage);
      }
      return verifyEach(values, async (url, v, report, scratch) => drill(url, v, report, scratch));
    }
    if (positionals.length !== 1) throw new CliError("expected one backup URL; see 'clnvault verify --help'", EXIT.usage);
    const url = positionals[0]!;
    const json = values.json === true;
    const report: VerifyReport = { result: 'error', ok: false, url, message: '', backup: null, restore: null, against: null, kept: null };
    const scratch: { dir: string | null } = { dir: null };
    try {
      await drill(url, values, report, scratch);
    } catch (e) {
      if (!(e instanceof CouldNotRun)) throw e;
      report.result = 'error';
      report.message = e.message;
      // printed by the dispatcher, in the shape every command's --json failure has
      e.json = { ...report };
      throw e;
    } finally {
      if (scratch.dir !== null) {
        if (values.keep) report.kept = scratch.dir;
        else rmSync(scratch.dir, { recursive: true, force: true });
      }
    }
    if (json) printJson(report);
    else {
      if (report.kept) out(`restored copies kept in ${report.kept}`);
      if (report.ok) info(`PASS: ${report.message}`);
      else out(`FAIL: ${report.message}`);
    }
    return report.ok ? EXIT.ok : EXIT.failed;
  },
};

type Drill = (url: string, values: Record<string, string | boolean | undefined>, report: VerifyReport, scratch: { dir: string | null }) => Promise<void>;

/** --lightning-dir: one drill per destination of backup.lock, each against the node's database. */
async function verifyEach(values: Record<string, string | boolean | undefined>, run: Drill): Promise<number> {
  const netDir = resolveNetworkDir(String(values['lightning-dir'])).dir;
  const lock = readBackupLock(netDir);
  const reports: VerifyReport[] = [];
  const urls = destinationsOf(lock);
  for (const [i, raw] of urls.entries()) {
    const url = isRemoteUrl(raw) ? raw : pathToFileURL(backupPath(raw, netDir)).href;
    const report: VerifyReport = { result: 'error', ok: false, url: redact(raw), message: '', backup: null, restore: null, against: null, kept: null };
    const scratch: { dir: string | null } = { dir: null };
    if (values.json !== true) info(`[${i}] ${redact(raw)}`);
    try {
      await run(url, { ...values, against: netDir }, report, scratch);
    } catch (e) {
      if (!(e instanceof CliError)) throw e;
      report.result = 'error';
      report.message = e.message;
    } finally {
      if (scratch.dir !== null) {
        if (values.keep) report.kept = scratch.dir;
        else rmSync(scratch.dir, { recursive: true, force: true });
      }
    }
    reports.push(report);
    if (values.json !== true) {
      if (report.ok) info(`[${i}] PASS: ${report.message}`);
      else out(`[${i}] ${redact(raw)}: FAIL: ${report.message}`);
    }
  }
  const ok = reports.every((r) => r.ok);
  if (values.json === true) printJson({ ok, destinations: reports });
  else if (ok) info(`PASS: all ${reports.length} destinations`);
  else out(`FAIL: ${reports.filter((r) => !r.ok).length} of ${reports.length} destinations failed the drill`);
  return ok ? EXIT.ok : reports.some((r) => r.result === 'mismatch') ? EXIT.failed : EXIT.usage;
}

async function drill(
  url: string,
  values: Record<string, string | boolean | undefined>,
  report: VerifyReport,
  scratch: { dir: string | null },
): Promise<void> {
  const json = values.json === true;
  const say = (line: string): void => {
    if (!json) info(line);
  };
  const fail = (message: string): void => {
    report.result = 'mismatch';
    report.ok = false;
    report.message = message;
  };

  let path: string;
  // no local file to check: a PostgreSQL or socket:/clnvault:// backup
  const pg = isRemoteUrl(url);
  try {
    path = pg ? redact(url) : backupPath(url, process.cwd());
  } catch (e) {
    throw new CouldNotRun((e as Error).message);
  }
  // segment files without their first file: the drill ran and the backup is damaged (exit 1)
  const missingFirst = pg ? null : missingFirstFile(path);
  if (missingFirst !== null) {
    say(missingFirst);
    fail(`the backup cannot be read: ${missingFirst}`);
    return;
  }
  if (!pg && !existsSync(path)) throw new CouldNotRun(`backup file ${path} does not exist (is the backup disk mounted?); check the URL`);
  try {
    if (!pg) accessSync(path, constants.R_OK);
  } catch (e) {
    throw new CouldNotRun(`cannot read the backup ${path}: ${(e as Error).message}; run verify as a user who can read it`);
  }
  const key = keyFromOptions(values, process.env, pg ? null : path);
  let livePath: string | null = null;
  if (typeof values.against === 'string') {
    livePath = resolve(values.against);
    if (existsSync(livePath) && statSync(livePath).isDirectory()) livePath = join(livePath, DB_NAME);
    if (!existsSync(livePath)) throw new CouldNotRun(`--against ${livePath} does not exist; give the node's lightningd.sqlite3 or its network directory`);
  }
  const base = typeof values['tmp-dir'] === 'string' ? resolve(values['tmp-dir']) : tmpdir();
  let tmp: string;
  try {
    tmp = mkdtempSync(join(base, 'clnvault-verify-'));
  } catch (e) {
    throw new CouldNotRun(`cannot create a temporary directory in ${base}: ${(e as Error).message}; pass --tmp-dir DIR`);
  }
  scratch.dir = tmp;

  // The live copy is taken before the backup is opened: the backup can then only be ahead of it (every
  // transaction reaches the backup before lightningd commits it), never behind for a healthy node.
  let liveVersion = 0;
  let liveCopy = '';
  if (livePath !== null) {
    liveCopy = join(tmp, 'live.sqlite3');
    try {
      liveVersion = await snapshotReadOnly(livePath, liveCopy);
    } catch (e) {
      throw new CouldNotRun(
        `cannot read a consistent copy of ${livePath}: ${(e as Error).message}` +
          (existsSync(`${livePath}-journal`) ? ` (a -journal file is present: lightningd crashed mid-transaction; start it once, or stop it cleanly, then verify again)` : ''),
      );
    }
  }

  let reader: BackupReader;
  try {
    reader = openReader(url, process.cwd());
  } catch (e) {
    fail(`the backup cannot be read: ${(e as Error).message}`);
    return;
  }
  try {
    const st = reader.stats();
    const problems = reader.problems();
    report.backup = { format: st.format, location: st.location, head: st.head, entries: st.entries, bytes: st.bytes, problems };
    say(`backup ${st.location}: format ${st.format}, ${st.entries} entries, head version ${st.head}, ${formatBytes(st.bytes)}`);
    for (const p of problems) say(`  ${p.kind} at offset ${p.offset}: ${p.message}`);
    let auth: AuthResult | null;
    try {
      auth = unlockAndAuthenticate(reader, key);
    } catch (e) {
      fail(`the backup cannot be read: ${(e as Error).message}`);
      return;
    }
    if (auth) {
      report.authenticated = authJson(auth);
      say(`encrypted: ${auth.records} records authenticated; ${newestLine(auth)}`);
      if (auth.problem) {
        problems.push(auth.problem);
        say(`  corrupt at offset ${auth.problem.offset}: ${auth.problem.message}`);
      }
    }
    const corrupt = problems.filter((p) => p.kind === 'corrupt');
    if (corrupt.length > 0) {
      fail(`the backup is damaged (${corrupt.length} corrupt record(s), first at offset ${corrupt[0]!.offset}); restore from another copy and re-create this backup`);
      return;
    }
    const suspect = problems.find((p) => p.suspect === true);
    if (suspect !== undefined) {
      fail(`${suspectAdvice(suspect)}; if the node is running, the plugin has already cut such an append when it started and this is damage: re-create the backup with 'clnvault init' (lightningd stopped)`);
      return;
    }

    const restored = join(tmp, 'restored.sqlite3');
    const r = restoreInto(reader, restored, undefined, json);
    if (typeof r === 'string') {
      fail(r);
      return;
    }
    const { path: _p, ...rest } = r;
    report.restore = rest;
    say(
      `restore drill: ${r.applied} entries applied` +
        (r.dropped > 0 ? ` (${r.dropped} stale skipped)` : '') +
        ` in ${(r.elapsedMs / 1000).toFixed(1)}s; integrity_check ok, no foreign key violations, data_version ${r.head}`,
    );
    if (livePath === null) {
      report.result = 'pass';
      report.ok = true;
      report.message = `the backup restores cleanly to data_version ${r.head} (no --against: not compared with a live database)`;
      return;
    }

    const ahead = serialDiff(r.head, liveVersion);
    const running = await nodeRunning(dirname(livePath), livePath);
    const against: Against = { path: livePath, dataVersion: liveVersion, backupAhead: ahead, comparedAtVersion: null, nodeRunning: running, comparison: null };
    report.against = against;
    if (ahead < 0) {
      fail(
        `${livePath} is at data_version ${liveVersion}, ahead of the backup (${r.head}): ${-ahead} transaction(s) were ` +
          `committed without being backed up (a clean stop, or the node ran without the plugin). The plugin ` +
          `re-baselines at the next start; run verify again after that`,
      );
      return;
    }
    if (ahead > 1 && running === null) {
      fail(
        `the backup (version ${r.head}) is ${ahead} versions ahead of ${livePath} (${liveVersion}) and lightningd is not ` +
          `running: that database lost committed state. Do not start lightningd on it; move it aside and run ` +
          `'clnvault restore ${url} ${livePath}'`,
      );
      return;
    }
    let comparePath = restored;
    if (ahead > 0) {
      say(
        `the backup is ${ahead} transaction(s) ahead of the node (${ahead === 1 && running === null ? 'lightningd stopped between backing up and committing it; the plugin drops it at the next start' : 'lightningd is committing'}): ` +
          `restoring it at the node's version ${liveVersion} too`,
      );
      comparePath = join(tmp, `restored-at-${liveVersion}.sqlite3`);
      const at = restoreInto(reader, comparePath, liveVersion, json);
      if (typeof at === 'string') {
        fail(`the backup is ahead of the node and cannot be restored at the node's version ${liveVersion}: ${at}`);
        return;
      }
    }
    against.comparedAtVersion = liveVersion;
    const c = compareDatabases(comparePath, liveCopy);
    against.comparison = c;
    const ntables = c.tables.length;
    if (c.equal) {
      say(`compared with ${livePath} (data_version ${liveVersion}): ${ntables} tables, ${c.totalRows} rows, schema and content identical`);
      report.result = 'pass';
      report.ok = true;
      report.message =
        `the backup restores to exactly the node's database at data_version ${liveVersion}` +
        (ahead > 0 ? ` (and holds ${ahead} newer transaction(s))` : '');
      return;
    }
    const bad = c.tables.filter((t) => !t.equal);
    say(`compared with ${livePath} (data_version ${liveVersion}): ${bad.length} of ${ntables} tables differ`);
    for (const d of c.schemaDifferences) say(`  schema: ${d}`);
    for (const t of bad.slice(0, 10)) {
      say(
        `  table ${t.table}: backup ${t.rows ?? 'missing'} rows, live ${t.otherRows ?? 'missing'} rows` +
          (t.rows !== null && t.otherRows !== null ? `, content hashes ${t.hash!.slice(0, 12)} vs ${t.otherHash!.slice(0, 12)}` : '') +
          (t.firstDifference ? `; first difference at ${t.firstDifference}` : ''),
      );
    }
    const names = bad.map((t) => t.table);
    fail(
      `the restored backup differs from ${livePath} at data_version ${liveVersion}` +
        (names.length > 0 ? ` in table(s) ${names.slice(0, 5).join(', ')}${names.length > 5 ? ', …' : ''}` : ' in its schema') +
        `; keep the node's database, and re-create the backup ('clnvault init' with the node stopped) after finding the cause`,
    );
    return;
  } finally {
    reader.close();
  }
}

function restoreInto(reader: BackupReader, dest: string, toVersion: number | undefined, quiet: boolean): RestoreResult | string {
  const progress = quiet ? null : progressReporter('restore drill', 'entries');
  try {
    return restoreBackup(reader, dest, {
      ...(toVersion !== undefined ? { toVersion } : {}),
      ...(progress ? { onProgress: (p: { applied: number; total: number }) => progress.update(p.applied, p.total) } : {}),
    });
  } catch (e) {
    return (e as Error).message;
  } finally {
    progress?.finish();
  }
}

/** Like engine/live-db's snapshot, but through a read-only connection: verify must never write the node's database. */
async function snapshotReadOnly(src: string, dest: string): Promise<number> {
  const db = new Database(src, { readonly: true, fileMustExist: true, timeout: 5000 });
  try {
    await db.backup(dest);
  } finally {
    db.close();
  }
  return readDataVersion(dest);
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} bytes`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}
