import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { threadId } from 'node:worker_threads';
import type { BackupWriter } from '../backend.js';
import { copyAtHead, DB_NAME, type CatchUp } from '../../engine/live-db.js';
import type { ThreadFileGate } from '../../compact/thread-gate.js';
import { compactPg } from '../postgres/compact.js';
import type { KeyLike } from '../../crypto/backup-crypt.js';

/**
 * One destination's share of `backup-compact` with several destinations, run by its lane (lane.ts).
 * Whatever the destination supports: a file (v2/v1) is compacted online, in a worker thread with a capped
 * young generation, while the lane keeps writing and acknowledging through its gate (compact/thread-gate.ts);
 * PostgreSQL compacts inside the database and a socket: server compacts its own file if it can (the
 * reference does, a clnvault server too), all on the lane's thread, which holds its writes back
 * meanwhile (they queue; it is not counted for acknowledgements until it replays them). An encrypted
 * clnvault:// backup, which its server has no key for, is compacted by the node (compactSealed below).
 */

export type CompactResultKind = 'compacted' | 'nothing-to-gain' | 'nothing-to-compact' | 'skipped' | 'failed';

export interface DestCompaction {
  index: number;
  url: string;
  result: CompactResultKind;
  before?: { bytes: number; entries: number };
  after?: { bytes: number; entries: number };
  /** why it was skipped or failed, or what the server answered */
  reason?: string;
  elapsed_ms?: number;
  /** when it ended (ms since the epoch) */
  at: number;
}

export type Outcome = Omit<DestCompaction, 'index' | 'url' | 'at'>;

type SealedWriter = BackupWriter & { encrypted: boolean; compactSealed(version: number, path: string): string };

/** how long an encrypted destination's compaction waits for a copy of the database at a version it can reach */
const SEALED_WAIT_MS = 30_000;

export async function compactDestination(
  w: BackupWriter,
  gate: ThreadFileGate | null,
  url: string,
  cwd: string,
  history: number,
  key: KeyLike | null,
  log: (level: 'info' | 'warn' | 'error', message: string) => void,
  catchUp?: CatchUp,
): Promise<Outcome> {
  const t0 = Date.now();
  if (gate !== null) {
    const outcome = await gate.compact({
      format: w.format as 'v1' | 'v2',
      history,
      onlyIfSmaller: true,
      key,
      ...(gate.segmentBytes !== undefined ? { segmentBytes: gate.segmentBytes } : {}),
    });
    const s = outcome.stats;
    return {
      result: outcome.compacted ? 'compacted' : outcome.noGain ? 'nothing-to-gain' : 'nothing-to-compact',
      before: { bytes: s.before.backupsize, entries: s.before.version_count },
      after: { bytes: s.after.backupsize, entries: s.after.version_count },
      elapsed_ms: Date.now() - t0,
      ...(outcome.historyFile ? { reason: `the previous backup is kept as ${outcome.historyFile}` } : {}),
    };
  }
  if (w.format === 'postgresql') {
    const r = compactPg(url, { netDir: cwd, log: (m) => log('info', m), key });
    return {
      result: r.compacted ? 'compacted' : 'nothing-to-compact',
      before: { bytes: r.before.bytes, entries: r.before.entries },
      after: { bytes: r.after.bytes, entries: r.after.entries },
      elapsed_ms: Date.now() - t0,
    };
  }
  const sealed = w as Partial<SealedWriter>;
  if (sealed.encrypted === true && typeof sealed.compactSealed === 'function' && catchUp !== undefined) {
    return compactSealed(sealed as SealedWriter, cwd, catchUp, log, t0);
  }
  const remote = w as BackupWriter & { compactRemote?: () => string };
  if (typeof remote.compactRemote === 'function') {
    let text: string;
    try {
      text = remote.compactRemote();
    } catch (e) {
      return { result: 'skipped', reason: `the server did not compact: ${(e as Error).message}`, elapsed_ms: Date.now() - t0 };
    }
    return serverOutcome(text, t0);
  }
  return { result: 'skipped', reason: `a ${w.format} destination has no online compaction`, elapsed_ms: Date.now() - t0 };
}

/** A server's COMPACT_RES (the reference's statistics JSON) as this destination's outcome. */
function serverOutcome(text: string, t0: number): Outcome {
  let stats: { before?: { backupsize?: number; version_count?: number }; after?: { backupsize?: number; version_count?: number } } = {};
  try {
    stats = JSON.parse(text) as typeof stats;
  } catch {
    // not JSON: passed on as the server sent it
  }
  const pick = (x: { backupsize?: number; version_count?: number } | undefined): { bytes: number; entries: number } | undefined =>
    x && typeof x.backupsize === 'number' && typeof x.version_count === 'number' ? { bytes: x.backupsize, entries: x.version_count } : undefined;
  const before = pick(stats.before);
  const after = pick(stats.after);
  // clnvault server leaves a backup that would not shrink as it is, and says so with unchanged figures
  const same = before !== undefined && after !== undefined && before.bytes === after.bytes && before.entries === after.entries;
  return {
    result: same ? 'nothing-to-gain' : 'compacted',
    ...(before ? { before } : {}),
    ...(after ? { after } : {}),
    ...(before === undefined ? { reason: `the server answered: ${text.slice(0, 200)}` } : {}),
    elapsed_ms: Date.now() - t0,
  };
}

/**
 * An encrypted clnvault:// destination: its server has no key, so the node sends a copy of its database at
 * the destination's head, sealed as the start of the chain, to be the whole backup (socket/writer.ts
 * compactSealed; the server checks it without the key). The database runs ahead of a destination being
 * compacted (the others acknowledge meanwhile, its writes queue), so the copy comes first and the
 * destination is brought up to the copy's version from its queue (copyAtHead).
 */
async function compactSealed(w: SealedWriter, cwd: string, catchUp: CatchUp, log: (level: 'info' | 'warn' | 'error', message: string) => void, t0: number): Promise<Outcome> {
  const tmp = join(cwd, `.clnvault-compact-${process.pid}-${threadId}.sqlite3`);
  const from = w.head();
  try {
    const copy = await copyAtHead(join(cwd, DB_NAME), tmp, () => w.head(), SEALED_WAIT_MS, catchUp);
    if (!('version' in copy)) {
      if (copy.failed) return { result: 'failed', reason: copy.why, elapsed_ms: Date.now() - t0 };
      return { result: 'skipped', reason: `${copy.why} within ${SEALED_WAIT_MS / 1000} s: not compacted (try again)`, elapsed_ms: Date.now() - t0 };
    }
    const { version } = copy;
    const caught = version === from ? '' : ` (its queued writes from version ${from} up to it written first)`;
    log('info', `compacting the encrypted backup: sending a snapshot of version ${version} (${statSync(tmp).size} bytes) that replaces it on the server${caught}`);
    return serverOutcome(w.compactSealed(version, tmp), t0);
  } finally {
    rmSync(tmp, { force: true });
  }
}
