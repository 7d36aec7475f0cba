import type { EntryHeader } from './entries.js';
import { serialDiff } from './versions.js';

/**
 * Decides which entries a restore applies.
 *
 * Entries are in file order. An entry is stale (never committed by the node) when a later entry has the
 * same or a lower version, unless that later entry is a PRAGMA-only batch carrying the same version
 * (lightningd sends `PRAGMA foreign_keys` with an unchanged data_version). This is how the reference's
 * rewind bug (it appends the replacement after the stale entry) and crash orphans are undone: the
 * version, not the offsets, tells which entry lost.
 *
 * Only the entries from the newest kept snapshot on matter: a snapshot supersedes all history.
 */
export interface RestorePlan {
  /** index of the first entry to apply (the newest kept snapshot, or 0) */
  start: number;
  /** dropped[i] = 1 when entry i is stale */
  dropped: Uint8Array;
  /** version the restored database will have (0 for an empty backup) */
  head: number;
  /** number of entries that will be applied */
  applied: number;
}

export function planRestore(headers: readonly EntryHeader[], stopAt?: number): RestorePlan {
  const n = headers.length;
  const dropped = new Uint8Array(n);
  const stack: number[] = [];
  for (let i = 0; i < n; i++) {
    const e = headers[i]!;
    while (stack.length > 0) {
      const top = headers[stack[stack.length - 1]!]!;
      const d = serialDiff(top.version, e.version);
      if (d < 0) break;
      if (d === 0 && e.pragmaOnly && e.kind === 'change') break;
      dropped[stack.pop()!] = 1;
    }
    stack.push(i);
  }
  // A point-in-time restore keeps only kept entries up to (and including) version `stopAt`.
  let end = n;
  if (stopAt !== undefined) {
    end = 0;
    for (let i = 0; i < n; i++) {
      if (!dropped[i] && serialDiff(headers[i]!.version, stopAt) <= 0) end = i + 1;
      if (!dropped[i] && serialDiff(headers[i]!.version, stopAt) > 0) break;
    }
    for (let i = end; i < n; i++) dropped[i] = 1;
  }
  let start = 0;
  for (let i = end - 1; i >= 0; i--) {
    if (!dropped[i] && headers[i]!.kind === 'snapshot') {
      start = i;
      break;
    }
  }
  let head = 0;
  let applied = 0;
  for (let i = start; i < end; i++) {
    if (dropped[i]) continue;
    applied++;
    head = headers[i]!.version;
  }
  return { start, dropped, head, applied };
}
