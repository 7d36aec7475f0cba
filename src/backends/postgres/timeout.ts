import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * How long a remote destination may take to come back before the write is refused: backup.lock's
 * "remote_timeout" in seconds (default 60). Read here, beside the lock's other keys, because only remote
 * destinations use it; a missing or unreadable lock (the CLI run elsewhere) means the default.
 */
export const DEFAULT_REMOTE_TIMEOUT_MS = 60_000;

export function remoteTimeoutMs(netDir: string | null): { ms: number; problem: string | null } {
  if (netDir === null) return { ms: DEFAULT_REMOTE_TIMEOUT_MS, problem: null };
  let obj: unknown;
  try {
    obj = JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8'));
  } catch {
    return { ms: DEFAULT_REMOTE_TIMEOUT_MS, problem: null };
  }
  const v = (obj as Record<string, unknown> | null)?.remote_timeout;
  if (v === undefined) return { ms: DEFAULT_REMOTE_TIMEOUT_MS, problem: null };
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0 || v > 3600) {
    return {
      ms: DEFAULT_REMOTE_TIMEOUT_MS,
      problem: `backup.lock: "remote_timeout" must be a number of seconds from 0 to 3600, not ${JSON.stringify(v)}; using 60`,
    };
  }
  return { ms: Math.round(v * 1000), problem: null };
}
