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
}

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
  if (typeof obj.backend_url !== 'string' || obj.backend_url.length === 0) {
    throw new LockFileError(`${path} has no "backend_url" string; it must look like {"backend_url": "file:///path/to/backup.bkp"}`);
  }
  if (obj.rebaseline !== undefined && typeof obj.rebaseline !== 'boolean') {
    throw new LockFileError(`${path}: "rebaseline" must be true or false`);
  }
  const lock: BackupLock = { backend_url: obj.backend_url };
  if (typeof obj.rebaseline === 'boolean') lock.rebaseline = obj.rebaseline;
  return lock;
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
