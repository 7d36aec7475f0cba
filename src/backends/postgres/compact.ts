import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BackupReader } from '../backend.js';
import type { EntryHeader } from '../../engine/entries.js';
import { planRestore } from '../../engine/plan.js';
import { restoreBackup } from '../../restore/restore.js';
import { PgBridge } from './bridge.js';
import { PgReader } from './reader.js';
import { remoteTimeoutMs } from './timeout.js';
import { parsePgUrl } from './url.js';

/**
 * Compaction inside the database, safe while the plugin writes: it never takes the writer lock.
 *
 * 1. In one consistent view (the reader's REPEATABLE READ transaction), every entry before the trailing
 *    entries of the head version is restored into a scratch SQLite file. The head version stays as it is,
 *    so that the plugin can still rewind it.
 * 2. That database is stored as a snapshot row, in chunks, committed in its own transaction. It takes the
 *    seq of the last entry it covers and sorts right after it, so the backup restores to the same state
 *    whether or not step 3 has run yet.
 * 3. One transaction deletes the entries the snapshot covers (their chunks go by cascade).
 *
 * The plugin's appends only ever add seqs above the covered ones, and its rewind only removes entries
 * of the head version, which are never covered: the two do not touch the same rows.
 */

export interface PgCompactStats {
  compacted: boolean;
  before: { entries: number; bytes: number; head: number };
  after: { entries: number; bytes: number; head: number };
  snapshotVersion: number | null;
  deleted: number;
}

export function compactPg(url: string, opts: { tmpDir?: string; netDir?: string | null; log?: (msg: string) => void } = {}): PgCompactStats {
  const target = parsePgUrl(url);
  const timeout = remoteTimeoutMs(opts.netDir ?? null).ms;
  const control = new PgBridge(target, timeout, `clnvault compact ${target.backup}`);
  let reader: PgReader | null = null;
  const scratch = mkdtempSync(join(opts.tmpDir ?? tmpdir(), 'clnvault-pgcompact-'));
  try {
    if (!control.call<boolean>({ op: 'tryCompactLock' })) {
      throw new Error(`another compaction of backup ${JSON.stringify(target.backup)} is running; try again when it is done`);
    }
    reader = PgReader.open(target, timeout);
    const before = reader.stats();
    const headers = reader.headers();
    const result: PgCompactStats = {
      compacted: false,
      before: { entries: before.entries, bytes: before.bytes, head: before.head },
      after: { entries: before.entries, bytes: before.bytes, head: before.head },
      snapshotVersion: null,
      deleted: 0,
    };
    const cut = coveredPrefix(headers);
    // nothing to gain: no entries, or the prefix is a single snapshot already
    if (cut < 0 || (cut === 0 && headers[0]!.kind === 'snapshot')) return result;
    const covered = headers.slice(0, cut + 1);
    const prefixReader: BackupReader = {
      format: reader.format,
      location: reader.location,
      headers: () => covered,
      read: (h) => reader!.read(h),
      problems: () => [],
      stats: () => before,
      close: () => undefined,
    };
    const last = covered[covered.length - 1]!;
    if (last.kind === 'snapshot') {
      // a newer snapshot (a re-baseline) already supersedes what precedes it: only the deletion is left
      result.deleted = control.call<number>({ op: 'deleteSuperseded', seq: last.offset }, null);
      result.compacted = result.deleted > 0;
      result.snapshotVersion = last.version;
    } else {
      result.snapshotVersion = storeCoveringSnapshot(control, prefixReader, join(scratch, 'snapshot.sqlite3'), last, opts.log);
      result.deleted = control.call<number>({ op: 'deleteSuperseded', seq: last.offset }, null);
      result.compacted = true;
    }
    reader.close();
    reader = PgReader.open(target, timeout);
    const after = reader.stats();
    result.after = { entries: after.entries, bytes: after.bytes, head: after.head };
    return result;
  } finally {
    reader?.close();
    control.close();
    rmSync(scratch, { recursive: true, force: true });
  }
}

function storeCoveringSnapshot(control: PgBridge, prefix: BackupReader, db: string, last: EntryHeader, log?: (msg: string) => void): number {
  const restored = restoreBackup(prefix, db);
  log?.(`restored the history up to entry ${last.offset} (version ${restored.head}) into a scratch database`);
  control.call({ op: 'snapshot', version: restored.head, path: db, seq: last.offset }, null);
  return restored.head;
}

/**
 * Index of the last entry the snapshot may cover: everything before the trailing run of entries of the
 * head version (the plugin may still rewind those). -1 when there is nothing before it.
 */
export function coveredPrefix(headers: readonly EntryHeader[]): number {
  if (headers.length === 0) return -1;
  const head = planRestore(headers).head;
  let i = headers.length - 1;
  while (i >= 0 && headers[i]!.version === head) i--;
  return i;
}
