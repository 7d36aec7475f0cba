import { readFileSync } from 'node:fs';
import { lockPath } from '../engine/backup-lock.js';

/**
 * Compaction settings, from an optional `"compaction"` object in backup.lock (the reference ignores keys
 * it does not know). backup.lock rather than plugin options: lightningd sends db_write calls before
 * `init`, and the size check runs on those writes too.
 *
 *   "compaction": {"auto": true, "min_bytes": 67108864, "factor": 4, "history": 1}
 */
export interface CompactionConfig {
  /** compact in the background when the backup outgrows the threshold */
  auto: boolean;
  /** never compact automatically below this many bytes */
  minBytes: number;
  /** ... nor while the backup is smaller than factor x the size of lightningd.sqlite3 */
  factor: number;
  /** how many pre-compaction backups to keep beside the backup for point-in-time restores */
  history: number;
}

export const DEFAULT_COMPACTION: Readonly<CompactionConfig> = Object.freeze({
  auto: true,
  minBytes: 64 * 1024 * 1024,
  factor: 4,
  history: 1,
});

/**
 * The settings from `dir/backup.lock`, defaults for whatever is absent. A bad value is reported in
 * `problems` and replaced by its default: a typo in an optional setting must not stop the node.
 */
export function readCompactionConfig(dir: string): { config: CompactionConfig; problems: string[] } {
  const config: CompactionConfig = { ...DEFAULT_COMPACTION };
  const problems: string[] = [];
  let raw: unknown;
  try {
    raw = (JSON.parse(readFileSync(lockPath(dir), 'utf8')) as Record<string, unknown>).compaction;
  } catch {
    return { config, problems }; // readBackupLock reports an unreadable backup.lock
  }
  if (raw === undefined) return { config, problems };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    problems.push('backup.lock: "compaction" must be an object like {"auto": true}; using the defaults');
    return { config, problems };
  }
  const o = raw as Record<string, unknown>;
  if (o.auto !== undefined) {
    if (typeof o.auto === 'boolean') config.auto = o.auto;
    else problems.push('backup.lock: compaction.auto must be true or false');
  }
  const num = (key: string, min: number, integer: boolean): number | undefined => {
    const v = o[key];
    if (v === undefined) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < min || (integer && !Number.isInteger(v))) {
      problems.push(`backup.lock: compaction.${key} must be ${integer ? 'an integer' : 'a number'} >= ${min}; using the default`);
      return undefined;
    }
    return v;
  };
  config.minBytes = num('min_bytes', 0, true) ?? config.minBytes;
  config.factor = num('factor', 1, false) ?? config.factor;
  config.history = num('history', 0, true) ?? config.history;
  return { config, problems };
}
