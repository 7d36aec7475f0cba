import type { BackupWriter } from '../backend.js';
import type { ThreadFileGate } from '../../compact/thread-gate.js';
import { compactPg } from '../postgres/compact.js';
import type { KeyLike } from '../../crypto/backup-crypt.js';

/**
 * One destination's share of `backup-compact` with several destinations, run by its lane (lane.ts).
 * Whatever the destination supports: a file (v2/v1) is compacted online, in a worker thread with a capped
 * young generation, while the lane keeps writing and acknowledging through its gate (compact/thread-gate.ts);
 * PostgreSQL compacts inside the database and a socket: server compacts its own file if it can (the
 * reference does, a clnvault server refuses), both on the lane's thread, which holds its writes back
 * meanwhile (they queue; it is not counted for acknowledgements until it replays them).
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

export async function compactDestination(
  w: BackupWriter,
  gate: ThreadFileGate | null,
  url: string,
  cwd: string,
  history: number,
  key: KeyLike | null,
  log: (level: 'info' | 'warn' | 'error', message: string) => void,
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
  const remote = w as BackupWriter & { compactRemote?: () => string };
  if (typeof remote.compactRemote === 'function') {
    let text: string;
    try {
      text = remote.compactRemote();
    } catch (e) {
      // e.g. an encrypted backup on clnvault server (no key there): compacted where the key is, by `clnvault compact`
      return { result: 'skipped', reason: `the server did not compact: ${(e as Error).message}`, elapsed_ms: Date.now() - t0 };
    }
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
  return { result: 'skipped', reason: `a ${w.format} destination has no online compaction`, elapsed_ms: Date.now() - t0 };
}

