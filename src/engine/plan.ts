import type { BackupReader, HeaderWalkOptions } from '../backends/backend.js';
import type { EntryHeader } from './entries.js';
import { serialDiff, u32 } from './versions.js';

/**
 * Decides which entries a restore applies, from one streaming pass over the entry headers, in memory
 * that does not grow with the backup.
 *
 * Entries are in file order. An entry is stale (never committed by the node) when a later entry has the
 * same or a lower version, unless that later entry is a PRAGMA-only batch carrying the same version
 * (lightningd sends `PRAGMA foreign_keys` with an unchanged data_version). This is how the reference's
 * rewind bug (it appends the replacement after the stale entry) and crash orphans are undone: the
 * version, not the offsets, tells which entry lost.
 *
 * Only the entries from the newest kept snapshot on matter: a snapshot supersedes all history.
 *
 * How it stays bounded: the entries kept so far form a stack whose versions never decrease (a new entry
 * pops every kept entry it supersedes, which is always a suffix of the stack). The stack is held as
 * segments of consecutive entries whose versions go up by exactly 1 (or stay equal, for PRAGMA repeats):
 * a node's history is one such run from each lightningd start, rewind or snapshot to the next, so a
 * backup of millions of entries is a handful of segments. A pop cuts a segment arithmetically. The
 * worst case (versions that jump by other amounts at every entry, which no node writes) is 25 bytes of
 * typed arrays per entry, never an object per entry. Kept snapshots are listed too (20 bytes each).
 */

/** Columns that grow by doubling; typed arrays, so a million rows are a few MiB and no objects. */
class Rows {
  first = new Float64Array(16);
  count = new Float64Array(16);
  v0 = new Float64Array(16);
  step = new Uint8Array(16);
  n = 0;

  push(first: number, count: number, v0: number, step: number): void {
    if (this.n === this.first.length) {
      const grow = <T extends Float64Array | Uint8Array>(a: T): T => {
        const b = new (a.constructor as new (n: number) => T)(a.length * 2);
        b.set(a);
        return b;
      };
      this.first = grow(this.first);
      this.count = grow(this.count);
      this.v0 = grow(this.v0);
      this.step = grow(this.step);
    }
    this.first[this.n] = first;
    this.count[this.n] = count;
    this.v0[this.n] = v0;
    this.step[this.n] = step;
    this.n++;
  }
}

export interface RestorePlan {
  /** entries walked (acknowledged entries; with beforeDamage, those before the first damaged record) */
  entries: number;
  /** index of the first entry to apply (the newest kept snapshot at or before `end`, or 0) */
  start: number;
  /** offset of that snapshot, or null when the restore starts at the first entry */
  startOffset: number | null;
  /** index just past the last entry to apply */
  end: number;
  /** version the restored database will have (0 for an empty backup) */
  head: number;
  /** number of entries that will be applied */
  applied: number;
  /** stale entries in the whole backup (not only before `end`), so a point-in-time restore reports the same figure */
  stale: number;
  /** version of the oldest kept entry: the oldest version a restore can reach (null for an empty backup) */
  oldest: number | null;
  /** answers "is entry i applied?" for increasing i, in O(1) amortized */
  cursor(): KeptCursor;
}

export class KeptCursor {
  private s = 0;

  constructor(
    private readonly segs: Rows,
    private readonly start: number,
    private readonly end: number,
  ) {}

  /** Whether entry `i` is applied; `i` must not decrease from one call to the next. */
  applies(i: number): boolean {
    if (i < this.start || i >= this.end) return false;
    const { first, count } = this.segs;
    while (this.s < this.segs.n && i >= first[this.s]! + count[this.s]!) this.s++;
    return this.s < this.segs.n && i >= first[this.s]!;
  }
}

export class Planner {
  private n = 0;
  private readonly segs = new Rows();
  /** kept snapshots: first = entry index, count = offset, v0 = version */
  private readonly snaps = new Rows();

  get entries(): number {
    return this.n;
  }

  /** Feeds the next entry in file order. */
  push(h: EntryHeader): void {
    const i = this.n++;
    const v = h.version;
    const repeat = h.pragmaOnly && h.kind === 'change';
    const s = this.segs;
    let cut = i;
    while (s.n > 0) {
      const t = s.n - 1;
      const cnt = s.count[t]!;
      const v0 = s.v0[t]!;
      const step = s.step[t]!;
      const d = serialDiff(u32(v0 + (cnt - 1) * step), v);
      if (d < 0 || (d === 0 && repeat)) break;
      // The segment's last entry goes. Its versions are v0, v0+1, ... (or all v0), so the entries that
      // stay are those below v (at most v for a PRAGMA repeat): a prefix of known length.
      let keep = 0;
      if (step === 1) {
        const dv = serialDiff(v, v0);
        keep = Math.min(cnt - 1, repeat ? dv + 1 : dv);
      }
      if (keep <= 0) {
        cut = s.first[t]!;
        s.n--;
        continue;
      }
      s.count[t] = keep;
      cut = s.first[t]! + keep;
      break;
    }
    const sn = this.snaps;
    while (sn.n > 0 && sn.first[sn.n - 1]! >= cut) sn.n--;

    let extended = false;
    if (s.n > 0) {
      const t = s.n - 1;
      const cnt = s.count[t]!;
      if (s.first[t]! + cnt === i) {
        const d = serialDiff(v, u32(s.v0[t]! + (cnt - 1) * s.step[t]!));
        if (cnt === 1 && (d === 0 || d === 1)) {
          s.step[t] = d;
          s.count[t] = 2;
          extended = true;
        } else if (cnt > 1 && d === s.step[t]) {
          s.count[t] = cnt + 1;
          extended = true;
        }
      }
    }
    if (!extended) s.push(i, 1, v, 1);
    if (h.kind === 'snapshot') sn.push(i, h.offset, v, 0);
  }

  /** An independent copy (v1 keeps the plan as of its acknowledged head while it scans orphans after it). */
  clone(): Planner {
    const c = new Planner();
    c.n = this.n;
    for (const [from, to] of [[this.segs, c.segs], [this.snaps, c.snaps]] as const) {
      for (let t = 0; t < from.n; t++) to.push(from.first[t]!, from.count[t]!, from.v0[t]!, from.step[t]!);
    }
    return c;
  }

  /** Which of the entries in [start, end) are kept (not stale), for increasing indices. */
  kept(start: number, end: number): KeptCursor {
    return new KeptCursor(this.segs, start, end);
  }

  /** The plan for a full restore, or for a point-in-time one up to (and including) version `stopAt`. */
  plan(stopAt?: number): RestorePlan {
    const s = this.segs;
    let kept = 0;
    for (let t = 0; t < s.n; t++) kept += s.count[t]!;
    const lastOf = (t: number): number => u32(s.v0[t]! + (s.count[t]! - 1) * s.step[t]!);
    let end = this.n;
    let head = s.n > 0 ? lastOf(s.n - 1) : 0;
    if (stopAt !== undefined) {
      // kept versions never decrease: the kept entries up to stopAt are a prefix of the stack
      end = 0;
      head = 0;
      for (let t = 0; t < s.n; t++) {
        if (serialDiff(s.v0[t]!, stopAt) > 0) break;
        const cnt = s.count[t]!;
        const k = s.step[t] === 0 ? cnt - 1 : Math.min(cnt - 1, serialDiff(stopAt, s.v0[t]!));
        end = s.first[t]! + k + 1;
        head = u32(s.v0[t]! + k * s.step[t]!);
        if (k < cnt - 1) break;
      }
    }
    let start = 0;
    let startOffset: number | null = null;
    const sn = this.snaps;
    for (let k = sn.n - 1; k >= 0; k--) {
      if (sn.first[k]! < end) {
        start = sn.first[k]!;
        startOffset = sn.count[k]!;
        break;
      }
    }
    let applied = 0;
    for (let t = 0; t < s.n; t++) {
      const a = Math.max(start, s.first[t]!);
      const b = Math.min(end, s.first[t]! + s.count[t]!);
      if (b > a) applied += b - a;
    }
    return {
      entries: this.n,
      start,
      startOffset,
      end,
      head,
      applied,
      stale: this.n - kept,
      oldest: s.n > 0 ? s.v0[0]! : null,
      cursor: () => this.kept(start, end),
    };
  }
}

/** A reader that planned during its open scan (v1, v2, segmented v2): one walk over the file saved. */
interface PlansAtOpen {
  plannedAtOpen(opts: { beforeDamage?: boolean }): Planner;
}

/**
 * Plans from the reader's headers in one streaming pass, or takes the plan its open scan made. Throws
 * what the reader's walk throws (a damaged record, unless `beforeDamage`).
 */
export function planBackup(reader: BackupReader, opts: HeaderWalkOptions = {}): Planner {
  const at = (reader as Partial<PlansAtOpen>).plannedAtOpen;
  if (typeof at === 'function') return at.call(reader, { beforeDamage: opts.beforeDamage === true });
  return walkPlan(reader, opts);
}

/** The plan from a walk of the headers (readers without a plan of their own; tests compare both). */
export function walkPlan(reader: BackupReader, opts: HeaderWalkOptions = {}): Planner {
  const p = new Planner();
  reader.forEachHeader((h) => p.push(h), { beforeDamage: opts.beforeDamage === true });
  return p;
}

/**
 * The plan of headers already in memory, with a per-entry `dropped` array (1 = not applied): for tests
 * and small tools. A restore plans with planBackup.
 */
export function planRestore(
  headers: readonly EntryHeader[],
  stopAt?: number,
): { start: number; dropped: Uint8Array; head: number; applied: number } {
  const p = new Planner();
  for (const h of headers) p.push(h);
  const plan = p.plan(stopAt);
  const dropped = new Uint8Array(headers.length);
  // entries before the start are superseded by the snapshot, yet only the stale ones count as dropped
  const keptAll = p.kept(0, plan.end);
  for (let i = 0; i < headers.length; i++) dropped[i] = keptAll.applies(i) ? 0 : 1;
  return { start: plan.start, dropped, head: plan.head, applied: plan.applied };
}
