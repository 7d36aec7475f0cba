import { readdirSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { removeGently } from './pacing.js';
import { listSegmentFiles, readSegmentHeader } from '../backends/file/segments.js';

/**
 * Names of the files compaction puts beside a backup `<b>`:
 *   <b>.compacting                 the new backup while it is built; renamed over <b> at the end
 *   <b>.compact-scratch.sqlite3    the database the snapshot is built in
 *   <b>.hist-<unix ms>             a backup as it was just before a compaction replaced it (history)
 * All in the backup's directory, so the final rename never crosses filesystems and no space is needed
 * on another disk.
 */

export function compactingPath(backup: string): string {
  return `${backup}.compacting`;
}

export function scratchPath(backup: string): string {
  return `${backup}.compact-scratch.sqlite3`;
}

export function historyPath(backup: string, ms: number): string {
  return `${backup}.hist-${String(ms).padStart(13, '0')}`;
}

/** History files of `backup`, newest first. */
export function listHistory(backup: string): { path: string; ms: number }[] {
  const prefix = `${basename(backup)}.hist-`;
  let names: string[];
  try {
    names = readdirSync(dirname(backup));
  } catch {
    return [];
  }
  const out: { path: string; ms: number }[] = [];
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    const rest = n.slice(prefix.length);
    if (!/^\d+$/.test(rest)) continue;
    out.push({ path: join(dirname(backup), n), ms: Number(rest) });
  }
  return out.sort((a, b) => b.ms - a.ms);
}

/**
 * What a crashed compaction can leave: the half-built file, the scratch database, and a history link made
 * just before a rename that never happened (it is then a second name of the live backup itself, growing
 * with it, so it is not history). Removing them is always safe: none of them is the backup.
 */
export function removeDebris(backup: string): string[] {
  const removed: string[] = [];
  const rm = (p: string): void => {
    try {
      statSync(p);
    } catch {
      return;
    }
    removeGently(p);
    removed.push(p);
  };
  rm(compactingPath(backup));
  rm(scratchPath(backup));
  rm(`${scratchPath(backup)}-journal`);
  // segments of another set: the old set of a compaction that crashed after its rename
  try {
    const set = readSegmentHeader(backup).setId;
    for (const f of listSegmentFiles(backup)) if (f.setId !== set) rm(f.path);
  } catch {
    // not a v2 file: it has no segments
  }
  let live: { ino: number; dev: number } | null = null;
  try {
    live = statSync(backup);
  } catch {
    live = null;
  }
  if (live) {
    for (const h of listHistory(backup)) {
      try {
        const st = statSync(h.path);
        if (st.ino === live.ino && st.dev === live.dev) {
          rm(h.path);
          for (const f of listSegmentFiles(h.path)) rm(f.path);
        }
      } catch {
        // gone already
      }
    }
  }
  return removed;
}

/** Keeps the newest `keep` history files. */
export function pruneHistory(backup: string, keep: number): string[] {
  const removed: string[] = [];
  for (const h of listHistory(backup).slice(keep)) {
    removeGently(h.path);
    for (const f of listSegmentFiles(h.path)) removeGently(f.path);
    removed.push(h.path);
  }
  return removed;
}
