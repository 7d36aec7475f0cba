import { existsSync, readdirSync, rmSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { AsyncBackupWriter, BackupWriter } from '../backends/backend.js';
import { backupPath, isRemoteUrl, openWriter } from '../backends/open.js';
import { isPostgresUrl } from '../backends/postgres/url.js';
import { remoteTimeoutMs } from '../backends/postgres/timeout.js';
import { readSegmentBytes } from '../backends/file/segments.js';
import { ackCount, parseListen, readBackupLock, type BackupLock } from '../engine/backup-lock.js';
import { MultiWriter } from '../backends/multi/writer.js';
import type { BackupKey } from '../crypto/keys.js';
import { DB_NAME, readDataVersion, snapshotDatabase } from '../engine/live-db.js';
import { serialDiff } from '../engine/versions.js';
import { isWalDatabase, type DeferredRebaseline } from './rebaseline.js';

/**
 * Everything that happens before the plugin answers getmanifest. lightningd sends db_write calls
 * before init, so the destination must be open by then. A re-baseline is only prepared here and taken in
 * the first db_write hook (src/plugin/rebaseline.ts): lightningd kills a plugin that takes over 120 s to
 * answer getmanifest and init, and a big snapshot to a slow disk can take longer.
 */

export interface StartupLog {
  level: 'info' | 'warn' | 'error';
  message: string;
}

export interface Startup {
  writer: BackupWriter | null;
  /**
   * Set instead of `writer` when the only destination is remote (socket:, clnvault://, postgresql://): it is
   * driven from the plugin's event loop (main.ts runs its async loop then).
   */
  remote: AsyncBackupWriter | null;
  /** why the backup could not be opened; every db_write is then refused with it */
  error: string | null;
  logs: StartupLog[];
  rebaselined: { from: number; to: number } | null;
  url: string | null;
  /** the node is ahead and the snapshot is taken in the first db_write hook (src/plugin/rebaseline.ts) */
  deferredRebaseline: DeferredRebaseline | null;
  /** an encrypted backup: the key's fingerprint, and the key for the compaction worker (never logged) */
  encryption: { fingerprint: string; key: BackupKey } | null;
}

/**
 * A remote destination reports reconnections while the plugin runs; until getmanifest is answered they
 * wait in `logs`, then main.ts routes them to lightningd's log through this.
 */
let remoteLog: ((level: StartupLog['level'], message: string) => void) | null = null;
export function setRemoteLog(f: (level: StartupLog['level'], message: string) => void): void {
  remoteLog = f;
}

export async function prepareBackup(cwd: string): Promise<Startup> {
  const logs: StartupLog[] = [];
  const out: Startup = { writer: null, remote: null, error: null, logs, rebaselined: null, url: null, deferredRebaseline: null, encryption: null };
  let lock;
  try {
    lock = readBackupLock(cwd);
    out.url = lock.backend_url;
    const seg = readSegmentBytes(cwd);
    if (seg.problem) logs.push({ level: 'warn', message: seg.problem });
    // one reading of "remote_timeout" for every remote destination
    const remoteTimeout = remoteTimeoutMs(cwd);
    const anyRemote = (lock.destinations ?? [lock.backend_url]).some((u) => isRemoteUrl(u));
    if (remoteTimeout.problem && anyRemote) logs.push({ level: 'warn', message: remoteTimeout.problem });
    const log = (level: StartupLog['level'], message: string): void =>
      (remoteLog ?? ((l, m) => logs.push({ level: l, message: m })))(level, message);
    // the key before the first db_write (which comes before init): without it nothing is written at all
    // the key code (node:crypto, the BIP39 word list, @noble/hashes, scrypt) is a chunk of its own
    // (scripts/postbuild.js), loaded only here: evaluating it cost every plugin start a few ms
    let key: BackupKey | null = null;
    if (lock.encrypt) {
      const { keyFromLock, lockBackupFile } = await import('../crypto/lock-key.js');
      key = keyFromLock(cwd, lock.encrypt, lockBackupFile(lock, cwd));
    }
    if (key) out.encryption = { fingerprint: key.fingerprint, key };
    const opts = { key, segmentBytes: seg.segmentBytes, remoteTimeoutMs: remoteTimeout.ms, log };
    if (lock.destinations === undefined && isRemoteUrl(lock.backend_url) && process.env.CLNVAULT_REMOTE_WORKER !== '1') {
      out.remote = await (await loadAsyncOpen()).openAsyncWriter(lock.backend_url, cwd, opts);
    }
    if (out.remote === null) {
      out.writer =
        lock.destinations !== undefined ? openMulti(lock, cwd, seg.segmentBytes, remoteTimeout.ms, log, key) : openWriter(lock.backend_url, cwd, opts);
    }
  } catch (e) {
    out.error = (e as Error).message;
    logs.push({ level: 'error', message: `cannot start the backup: ${out.error}` });
    return out;
  }
  const writer: BackupWriter | AsyncBackupWriter = out.remote ?? out.writer!;
  for (const p of writer.repaired()) logs.push({ level: 'warn', message: `repaired the backup on open: ${p.message}` });
  logs.push({
    level: 'info',
    message: `backing up to ${writer.location} (format ${writer.format}${out.encryption ? `, encrypted, key ${out.encryption.fingerprint}` : ''}, head version ${writer.head()})`,
  });

  // Re-baseline temp files are named after the backup so that only this backup's leftovers are removed:
  // the writer lock we hold means any such file belongs to a start-up killed mid-snapshot, and each would
  // otherwise stay forever (a full copy of the database, on what is often a small backup disk).
  // A PostgreSQL backup has no directory of its own: its re-baseline scratch file goes in the network directory.
  const file = lock.destinations !== undefined
    ? join(cwd, 'clnvault-destinations')
    : isPostgresUrl(lock.backend_url)
    ? join(cwd, 'clnvault-postgresql')
    : isRemoteUrl(lock.backend_url)
      ? join(cwd, 'clnvault-remote')
      : backupPath(lock.backend_url, cwd);
  const prefix = `.${basename(file)}.rebaseline-`;
  removeLeftovers(dirname(file), prefix);

  const dbPath = join(cwd, DB_NAME);
  if (!existsSync(dbPath)) return out;
  let node: number;
  try {
    node = readDataVersion(dbPath);
  } catch (e) {
    // Not fatal here: the first db_write still tells where the node stands and is checked then.
    logs.push({ level: 'warn', message: `could not read ${dbPath} at start-up (${(e as Error).message})` });
    return out;
  }
  const head = writer.head();
  const ahead = writer.isEmpty() ? node > 0 : serialDiff(node, head) > 0;
  if (!ahead) return out;
  if (lock.rebaseline === false) {
    logs.push({
      level: 'warn',
      message:
        `the node's database (version ${node}) is ahead of the backup (version ${head}) and re-baselining is ` +
        `disabled in backup.lock: the first database write will be refused`,
    });
    return out;
  }
  // lightningd kills a plugin that takes over 120 s to answer getmanifest and init, and a snapshot of a big
  // database to a slow disk can take longer: it is taken in the first db_write hook, which has no timer
  // (rollback-journal databases, lightningd's default; a WAL database is snapshotted here, as before)
  let wal = true;
  try {
    wal = isWalDatabase(dbPath);
  } catch {
    // unreadable header: the snapshot below says what is wrong
  }
  if (!wal) {
    out.deferredRebaseline = { dbPath, from: head, node };
    logs.push({
      level: 'warn',
      message:
        `the node's database (version ${node}) is ahead of the backup (version ${head}) (writes committed after plugins ` +
        `stopped, or the node ran without clnvault): re-baselining at the first database write`,
    });
    return out;
  }
  const tmp = join(dirname(file), `${prefix}${process.pid}.sqlite3`);
  try {
    const version = await snapshotDatabase(dbPath, tmp);
    await writer.appendSnapshotFile(version, tmp);
    out.rebaselined = { from: head, to: version };
    logs.push({
      level: 'warn',
      message:
        `re-baselined: the node's database was at version ${version} but the backup only at ${head} ` +
        `(writes committed after plugins stopped, or the node ran without clnvault); stored a snapshot of the ` +
        `live database so the backup is complete again`,
    });
  } catch (e) {
    logs.push({
      level: 'error',
      message: `could not snapshot ${dbPath} into the backup: ${(e as Error).message}; the first database write will be refused`,
    });
  } finally {
    rmSync(tmp, { force: true });
    rmSync(`${tmp}-journal`, { force: true });
  }
  return out;
}

/**
 * The event-loop writers (src/backends/async-open.ts), loaded by path: the plugin's bundle (scripts/postbuild.js)
 * stays free of the network code a file destination never runs. This file and the bundle both live in dist/src/plugin/.
 */
async function loadAsyncOpen(): Promise<typeof import('../backends/async-open.js')> {
  return (await import(new URL('../backends/async-open.js', import.meta.url).href)) as typeof import('../backends/async-open.js');
}

/** Several destinations (backup.lock "destinations"): src/backends/multi/. */
function openMulti(
  lock: BackupLock,
  cwd: string,
  segmentBytes: number | undefined,
  remoteTimeoutMs: number,
  log: (level: StartupLog['level'], message: string) => void,
  key: BackupKey | null,
): MultiWriter {
  // snapshot copies a killed plugin left behind (each a full copy of the database)
  removeLeftovers(cwd, '.clnvault-destinations-');
  const m = MultiWriter.open(lock.destinations!, {
    cwd,
    k: ackCount(lock),
    remoteTimeoutMs,
    ...(segmentBytes !== undefined ? { segmentBytes } : {}),
    log,
    dbPath: join(cwd, DB_NAME),
    key,
    monitor: {
      ...(lock.metrics !== undefined ? { metrics: parseListen(lock.metrics)! } : {}),
      ...(lock.metrics_textfile !== undefined ? { textfile: lock.metrics_textfile } : {}),
      ...(lock.heartbeat_url !== undefined ? { heartbeatUrl: lock.heartbeat_url } : {}),
      ...(lock.heartbeat_interval !== undefined ? { heartbeatIntervalS: lock.heartbeat_interval } : {}),
    },
  });
  log('info', `${lock.destinations!.length} destinations, each write acknowledged once ${ackCount(lock)} of them hold it`);
  return m;
}

function removeLeftovers(dir: string, prefix: string): void {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) if (n.startsWith(prefix)) rmSync(join(dir, n), { force: true });
}

/**
 * lightningd sets LIGHTNINGD_PLUGIN=1 in its environment before starting plugins (plugins_init in
 * lightningd/plugin.c), so every plugin it runs inherits it. Without it the file was run by hand: taking
 * the writer lock or re-baselining then would act on a node that is not asking for it, so say what this
 * is and touch nothing.
 */
export function startedByLightningd(env: NodeJS.ProcessEnv = process.env): boolean {
  return env.LIGHTNINGD_PLUGIN === '1';
}

export function runByHandText(self: string): string {
  return [
    'clnvault-plugin: this is the clnvault plugin for Core Lightning; lightningd runs it, not you.',
    'It was started without LIGHTNINGD_PLUGIN=1 (which lightningd sets for its plugins), so it did nothing:',
    'no backup.lock was read, no lock taken, no snapshot made.',
    '',
    'To load it, add this line to the lightningd config (e.g. ~/.lightning/config) and restart lightningd:',
    `  important-plugin=${self}`,
    "Set the backup up first, with lightningd stopped: 'clnvault init --lightning-dir ~/.lightning/bitcoin file:///mnt/usb/clnvault.bkp'.",
    "To check a backup by hand, use 'clnvault status', 'clnvault inspect' or 'clnvault verify'.",
  ].join('\n');
}
