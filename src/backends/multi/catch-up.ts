import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { BackupReader, BackupWriter } from '../backend.js';
import { openReader } from '../open.js';
import { headersInBatches } from '../walk.js';
import { unlockAndAuthenticate } from '../../crypto/authenticate.js';
import type { KeyLike } from '../../crypto/backup-crypt.js';
import { serialDiff } from '../../engine/versions.js';
import { applyChange, applySnapshot } from './apply.js';

/**
 * Catch-up from another destination's records (docs/destinations.md): a destination found behind (it
 * missed writes while the plugin was stopped) gets the versions it lacks replayed, in order, from a
 * healthy file destination of the set that holds them, instead of a snapshot of the whole database.
 * The peer is read with a reader of its own (its writer goes on), one batch of headers at a time: memory
 * holds one entry, a snapshot goes through a scratch file. Encrypted backups are read with the set's key
 * and written through the lagging destination's writer, which seals each record for its own chain.
 *
 * Nothing is trusted that does not line up: the lagging destination's newest entry (version H) may be
 * a write the node never committed (refused in an earlier run), so the peer's entry at H replaces it
 * (a snapshot at H, or later, covers it anyway); a peer that does not hold H (compacted past it without a
 * snapshot after it, or another history) is not used. Any failure or misfit: false, and the caller
 * re-seeds with a snapshot as before.
 */

export interface Peer {
  url: string;
  /** the version the peer is known to hold (shared memory); a peer below the target is not asked */
  head: number;
}

export interface CatchUpResult {
  /** the peer the versions came from, null when none could give them */
  from: string | null;
  /** entries replayed */
  entries: number;
  /** why no peer served (each peer's reason), for the log */
  why: string[];
}

/**
 * Brings `w` from its head up to `target` (the version the next write builds on) from the first peer
 * that can. `scratchDir`: where a snapshot entry is written out on its way.
 */
export function catchUpFromPeers(w: BackupWriter, peers: Peer[], target: number, cwd: string, key: KeyLike | null, scratchDir: string): CatchUpResult {
  const why: string[] = [];
  if (w.isEmpty()) return { from: null, entries: 0, why: ['it is empty (a snapshot is what it needs)'] };
  for (const p of peers) {
    if (serialDiff(p.head, target) < 0) {
      why.push(`${p.url} holds only up to version ${p.head}`);
      continue;
    }
    let reader: BackupReader;
    try {
      reader = openReader(p.url, cwd);
    } catch (e) {
      why.push(`${p.url} cannot be read (${(e as Error).message})`);
      continue;
    }
    try {
      unlockAndAuthenticate(reader, key, 'chain');
      const n = replay(w, reader, target, scratchDir);
      if (typeof n === 'number') return { from: p.url, entries: n, why };
      why.push(`${p.url}: ${n.misfit}`);
    } catch (e) {
      why.push(`${p.url}: ${(e as Error).message}`);
    } finally {
      reader.close();
    }
    // a replay that failed half-way left `w` further on, on entries that are the node's: the next peer
    // (or the snapshot) goes on from there
    if (w.isEmpty() || serialDiff(w.head(), target) > 0) break;
  }
  return { from: null, entries: 0, why };
}

/** Replays `reader`'s entries after w's head up to `target` onto `w`; the count, or why it does not fit. */
function replay(w: BackupWriter, reader: BackupReader, target: number, scratchDir: string): number | { misfit: string } {
  const start = w.head();
  // a snapshot is committed state: what the peer holds at that version is the same, and only what follows counts
  const startIsSnapshot = w.headIsSnapshot();
  let anchored = startIsSnapshot;
  let n = 0;
  for (const h of headersInBatches(reader)) {
    const d = serialDiff(h.version, start);
    if (d < 0 || (d === 0 && startIsSnapshot)) continue;
    if (serialDiff(h.version, target) > 0) break;
    if (!anchored) {
      // the first entry from `start` on must be a change at `start` (the peer's replaces ours, which the
      // node may never have committed) or a snapshot (complete state, whatever came before)
      if (h.kind === 'change') {
        if (d > 0) return { misfit: `it holds no entry at version ${start}, where this destination is` };
        // a PRAGMA-only batch is not the change at `start` (that one went into a snapshot): nothing to replace ours with
        if (h.pragmaOnly) return { misfit: `its first entry at version ${start} is PRAGMA-only` };
        w.dropHead();
      }
      anchored = true;
    }
    const e = reader.read(h);
    if (e.kind === 'change') {
      applyChange(w, e.version, e.statements, !w.isEmpty() && w.head() === e.version);
    } else {
      const tmp = join(scratchDir, `.clnvault-catch-up-${process.pid}-${n}.sqlite3`);
      rmSync(tmp, { force: true });
      try {
        e.writeTo(tmp);
        applySnapshot(w, e.version, tmp);
      } finally {
        rmSync(tmp, { force: true });
      }
    }
    n++;
  }
  if (w.head() !== target) return { misfit: `its entries up to version ${target} leave this destination at ${w.head()}` };
  return n;
}
