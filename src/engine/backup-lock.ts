import { closeSync, existsSync, fsyncSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fsyncDir } from '../backends/file/fsutil.js';

/**
 * `backup.lock` in the network directory says where the backup is. It is the reference plugin's file
 * (JSON `{"backend_url": "..."}`), so a user can switch between the two; clnvault only adds optional keys
 * that the reference ignores.
 */
export interface BackupLock {
  backend_url: string;
  /** snapshot the live DB at start-up when it is ahead of the backup (default true) */
  rebaseline?: boolean;
  /** v2: the largest size of one backup file; bigger backups continue in segment files (read by the plugin) */
  segment_bytes?: number;
  /**
   * Several destinations written at once (docs/destinations.md). When present, backend_url is its first
   * element (the reference plugin, which reads only backend_url, then backs up to that one).
   */
  destinations?: string[];
  /** how many destinations must hold a write before lightningd may commit it: "all" (default) or 1..n */
  ack?: 'all' | number;
  /** Prometheus metrics over HTTP on loopback, "127.0.0.1:PORT" (off when absent) */
  metrics?: string;
  /** Prometheus metrics written to this file for node_exporter's textfile collector (off when absent) */
  metrics_textfile?: string;
  /** a dead-man's switch: HTTP GET this URL every heartbeat_interval seconds while every destination is healthy */
  heartbeat_url?: string;
  heartbeat_interval?: number;
  /**
   * The backup is encrypted (docs/encryption.md) and this is where the plugin finds its key at start-up:
   * {"key": "hsm_secret"} (the node's seed, hsm_secret in the network directory), {"key_file": PATH}, or
   * {"passphrase_file": PATH} (a file holding the passphrase; scrypt with the backup's salt, docs/keys.md).
   */
  encrypt?: EncryptSetting;
}

/** Most destinations one backup.lock may list (each remote one is a worker thread and a connection). */
export const MAX_DESTINATIONS = 8;

/** The destinations of a lock, in order (one for a plain reference-style lock). */
export function destinationsOf(lock: BackupLock): string[] {
  return lock.destinations ?? [lock.backend_url];
}

/** How many destinations must acknowledge each write. */
export function ackCount(lock: BackupLock): number {
  const n = destinationsOf(lock).length;
  return lock.ack === undefined || lock.ack === 'all' ? n : lock.ack;
}

export type EncryptSetting = { key: 'hsm_secret' } | { key_file: string } | { passphrase_file: string };

export const LOCK_NAME = 'backup.lock';

export class LockFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LockFileError';
  }
}

export function lockPath(dir: string): string {
  return join(dir, LOCK_NAME);
}

export function readBackupLock(dir: string): BackupLock {
  const path = lockPath(dir);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      throw new LockFileError(
        `could not find backup.lock in the lightning-dir (${dir}): create the backup first with ` +
          `'clnvault init --lightning-dir ${dir} file:///path/to/backup.bkp'`,
      );
    }
    throw new LockFileError(`cannot read ${path}: ${(e as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new LockFileError(
      `${path} is not valid JSON (${(e as Error).message}); it must look like {"backend_url": "file:///path/to/backup.bkp"}`,
    );
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new LockFileError(`${path} must hold a JSON object like {"backend_url": "file:///path/to/backup.bkp"}`);
  }
  const obj = parsed as Record<string, unknown>;
  const dests = parseDestinations(path, obj);
  if (dests !== null && obj.backend_url === undefined) obj.backend_url = dests[0];
  if (typeof obj.backend_url !== 'string' || obj.backend_url.length === 0) {
    throw new LockFileError(`${path} has no "backend_url" string; it must look like {"backend_url": "file:///path/to/backup.bkp"}`);
  }
  if (obj.rebaseline !== undefined && typeof obj.rebaseline !== 'boolean') {
    throw new LockFileError(`${path}: "rebaseline" must be true or false`);
  }
  const lock: BackupLock = { backend_url: obj.backend_url };
  if (typeof obj.rebaseline === 'boolean') lock.rebaseline = obj.rebaseline;
  if (dests !== null) {
    if (dests[0] !== obj.backend_url) {
      throw new LockFileError(
        `${path}: "backend_url" (${obj.backend_url}) must be the first of "destinations" (${dests[0]}): the reference ` +
          `plugin reads only backend_url, so it must name a destination clnvault writes. Make them equal, or drop backend_url`,
      );
    }
    lock.destinations = dests;
  }
  if (obj.ack !== undefined) {
    const n = dests?.length ?? 1;
    const ok = obj.ack === 'all' || (typeof obj.ack === 'number' && Number.isInteger(obj.ack) && obj.ack >= 1 && obj.ack <= n);
    if (!ok) {
      throw new LockFileError(`${path}: "ack" must be "all" or a whole number from 1 to ${n} (the number of destinations), not ${JSON.stringify(obj.ack)}`);
    }
    lock.ack = obj.ack as 'all' | number;
  }
  if (obj.metrics !== undefined) {
    if (typeof obj.metrics !== 'string' || parseListen(obj.metrics) === null) {
      throw new LockFileError(`${path}: "metrics" must be "127.0.0.1:PORT" (or "[::1]:PORT"): a loopback address and a port, not ${JSON.stringify(obj.metrics)}`);
    }
    lock.metrics = obj.metrics;
  }
  if (obj.metrics_textfile !== undefined) {
    if (typeof obj.metrics_textfile !== 'string' || !obj.metrics_textfile.startsWith('/') || !obj.metrics_textfile.endsWith('.prom')) {
      throw new LockFileError(`${path}: "metrics_textfile" must be an absolute path ending in .prom (node_exporter's textfile collector reads only those), not ${JSON.stringify(obj.metrics_textfile)}`);
    }
    lock.metrics_textfile = obj.metrics_textfile;
  }
  if (obj.heartbeat_url !== undefined) {
    let ok = typeof obj.heartbeat_url === 'string';
    if (ok) {
      try {
        ok = /^https?:$/.test(new URL(obj.heartbeat_url as string).protocol);
      } catch {
        ok = false;
      }
    }
    if (!ok) throw new LockFileError(`${path}: "heartbeat_url" must be an http:// or https:// URL`);
    lock.heartbeat_url = obj.heartbeat_url as string;
  }
  if (obj.heartbeat_interval !== undefined) {
    const v = obj.heartbeat_interval;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 1 || v > 86400) {
      throw new LockFileError(`${path}: "heartbeat_interval" must be a number of seconds from 1 to 86400, not ${JSON.stringify(v)}`);
    }
    lock.heartbeat_interval = v;
  }
  if (obj.encrypt !== undefined) lock.encrypt = parseEncrypt(path, obj.encrypt);
  return lock;
}

function parseDestinations(path: string, obj: Record<string, unknown>): string[] | null {
  const d = obj.destinations;
  if (d === undefined) return null;
  if (!Array.isArray(d) || d.length === 0 || !d.every((u) => typeof u === 'string' && u.length > 0)) {
    throw new LockFileError(`${path}: "destinations" must be a non-empty list of backup URLs, like ["file:///mnt/usb/node.bkp", "socket:backup.example:8700"]`);
  }
  if (d.length > MAX_DESTINATIONS) {
    throw new LockFileError(`${path}: "destinations" lists ${d.length} URLs; at most ${MAX_DESTINATIONS} are supported`);
  }
  const seen = new Set<string>();
  for (const u of d as string[]) {
    if (seen.has(u)) throw new LockFileError(`${path}: "destinations" lists ${u} twice`);
    seen.add(u);
  }
  return d as string[];
}

/** "127.0.0.1:PORT", "localhost:PORT" or "[::1]:PORT": the metrics listener is never exposed beyond the machine. */
export function parseListen(s: string): { host: string; port: number } | null {
  const m = /^(?:\[(::1)\]|(127\.0\.0\.1|localhost)):(\d{1,5})$/.exec(s);
  if (!m) return null;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return null;
  return { host: m[1] ?? m[2]!, port };
}

/** A bad "encrypt" stops the plugin: guessing could mean writing plaintext to an encrypted backup, or no key. */
function parseEncrypt(path: string, v: unknown): EncryptSetting {
  const o = v as Record<string, unknown>;
  if (typeof v === 'object' && v !== null && !Array.isArray(v)) {
    const keys = Object.keys(o);
    if (keys.length === 1 && o.key === 'hsm_secret') return { key: 'hsm_secret' };
    if (keys.length === 1 && typeof o.key_file === 'string' && o.key_file.length > 0) return { key_file: o.key_file };
    if (keys.length === 1 && typeof o.passphrase_file === 'string' && o.passphrase_file.length > 0) return { passphrase_file: o.passphrase_file };
  }
  throw new LockFileError(
    `${path}: "encrypt" must be {"key": "hsm_secret"}, {"key_file": "/path/to/key"} or {"passphrase_file": "/path/to/passphrase"}, not ${JSON.stringify(v)}`,
  );
}

/** Written the way Python's json.dumps writes it, atomically (temp file, fsync, rename, fsync dir). */
export function writeBackupLock(dir: string, lock: BackupLock, opts: { overwrite?: boolean } = {}): void {
  const path = lockPath(dir);
  if (!opts.overwrite && existsSync(path)) {
    throw new LockFileError(`${path} already exists; remove it first if you really mean to point the node at a new backup`);
  }
  const parts = [`"backend_url": ${JSON.stringify(lock.backend_url)}`];
  if (lock.rebaseline !== undefined) parts.push(`"rebaseline": ${lock.rebaseline}`);
  if (lock.segment_bytes !== undefined) parts.push(`"segment_bytes": ${lock.segment_bytes}`);
  if (lock.destinations !== undefined) parts.push(`"destinations": [${lock.destinations.map((u) => JSON.stringify(u)).join(', ')}]`);
  if (lock.ack !== undefined) parts.push(`"ack": ${JSON.stringify(lock.ack)}`);
  if (lock.encrypt !== undefined) parts.push(`"encrypt": ${JSON.stringify(lock.encrypt).replace(/":/g, '": ')}`);
  const text = `{${parts.join(', ')}}`;
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    unlinkSync(tmp);
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, path);
  fsyncDir(path);
}
