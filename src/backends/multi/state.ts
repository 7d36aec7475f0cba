import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { fsyncDir } from '../file/fsutil.js';

/**
 * `clnvault-destinations.json` in the network directory: the version each destination was last seen to
 * hold durably. A destination found below it at the next start (or reconnection) was rolled back or
 * replaced by an older copy, and is re-seeded instead of trusted. Kept by the monitor thread every few
 * seconds and at a clean stop; a stale figure only makes the check less strict, never wrong: a
 * destination behind the others is re-seeded anyway.
 *
 * It also records each destination's backup id where its format has one (a v2 file: bytes 16..31 of
 * its header, kept by compaction), when first seen: a destination that later shows another id was
 * replaced by another backup, however far its versions go (docs/destinations.md).
 */

export const STATE_FILE = 'clnvault-destinations.json';

export function readDestState(path: string, log: (level: 'warn', message: string) => void): Record<string, number> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch {
    return {};
  }
  try {
    const obj = JSON.parse(text) as { destinations?: Record<string, { held?: unknown }> };
    const out: Record<string, number> = {};
    for (const [url, v] of Object.entries(obj.destinations ?? {})) {
      if (typeof v?.held === 'number' && Number.isInteger(v.held) && v.held >= 0 && v.held <= 0xffffffff) out[url] = v.held;
    }
    return out;
  } catch (e) {
    log('warn', `${path} is not valid JSON (${(e as Error).message}); rollback detection starts afresh`);
    return {};
  }
}

/** The backup ids recorded so far, by destination. */
export function readDestIds(path: string): Record<string, string> {
  try {
    const obj = JSON.parse(readFileSync(path, 'utf8')) as { destinations?: Record<string, { id?: unknown }> };
    const out: Record<string, string> = {};
    for (const [url, v] of Object.entries(obj.destinations ?? {})) if (typeof v?.id === 'string' && /^[0-9a-f]{32}$/.test(v.id)) out[url] = v.id;
    return out;
  } catch {
    return {};
  }
}

/** Atomically: temp file, fsync, rename, fsync of the directory. */
export function writeDestState(path: string, held: Record<string, number>, ids: Record<string, string> = {}): void {
  const body: Record<string, { held?: number; id?: string }> = {};
  for (const [url, v] of Object.entries(held)) body[url] = { held: v };
  for (const [url, id] of Object.entries(ids)) body[url] = { ...body[url], id };
  const text = `${JSON.stringify({ destinations: body }, null, 1)}\n`;
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w', 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, path);
  fsyncDir(path);
}
