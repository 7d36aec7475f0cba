import type { Problem } from '../../../engine/entries.js';
import { TYPE_SNAPSHOT, TYPE_SNAPSHOT_PART } from './codec.js';
import type { RecordInfo } from './scan.js';

/** One entry as readers present it: a change record, or a snapshot made of its part records and final record. */
export interface GroupedEntry {
  offset: number;
  kind: 'change' | 'snapshot';
  version: number;
  pragmaOnly: boolean;
  /** payload bytes (the database size for a snapshot) */
  size: number;
  /** indices into the record list: first..last (one record unless a chunked snapshot) */
  first: number;
  last: number;
}

export interface Grouping {
  entries: GroupedEntry[];
  /** parts not followed by their final record, or a final record whose part count does not match */
  corrupt: Problem[];
  /** a run of parts at the very end without its final record: an unfinished snapshot (torn tail) */
  dangling: Problem | null;
}

/**
 * Presents a chunked snapshot (part records, then the final type-2 record that counts them) as one
 * entry, record by record: it holds only the current run of parts (one snapshot's, a handful), so a
 * backup of any length is grouped in bounded memory. Offsets are global for a segmented backup.
 */
export class Grouper {
  /** problems found so far: parts not followed by their final record, a final record whose part count does not match */
  readonly corrupt: Problem[] = [];
  private run: RecordInfo[] = [];
  private runSize = 0;
  private index = 0;

  /** Feeds the next valid record; returns the entry it completes, if any (`first`/`last`: record indices). */
  push(r: RecordInfo): GroupedEntry | null {
    const i = this.index++;
    const run = this.run;
    const runDesc = (): string =>
      `${run.length} snapshot part record(s) (version ${run[0]!.version}) at offsets ${run[0]!.offset}..${run[run.length - 1]!.offset}`;
    if (r.type === TYPE_SNAPSHOT_PART) {
      if (run.length > 0 && run[0]!.version !== r.version) {
        this.corrupt.push({
          kind: 'corrupt',
          offset: run[0]!.offset,
          message: `${runDesc()} are followed by a snapshot part of version ${r.version} at offset ${r.offset} instead of their final snapshot record`,
        });
        this.reset();
      }
      if (this.run.length === 0) this.runSize = 0;
      this.run.push(r);
      this.runSize += r.length;
      return null;
    }
    const n = run.length;
    if (r.type === TYPE_SNAPSHOT) {
      let e: GroupedEntry | null = null;
      if (r.parts !== n || (n > 0 && run[0]!.version !== r.version)) {
        this.corrupt.push({
          kind: 'corrupt',
          // the final record's offset: a damaged part before it is then reported first, where the damage is
          offset: r.offset,
          message:
            `the snapshot record at offset ${r.offset} (version ${r.version}) says ${r.parts} snapshot part record(s) precede it, but ` +
            (n > 0 ? `${runDesc()} do` : 'none do'),
        });
      } else {
        e = { offset: n > 0 ? run[0]!.offset : r.offset, kind: 'snapshot', version: r.version, pragmaOnly: false, size: (n > 0 ? this.runSize : 0) + r.length, first: i - n, last: i };
      }
      this.reset();
      return e;
    }
    if (n > 0) {
      this.corrupt.push({ kind: 'corrupt', offset: run[0]!.offset, message: `${runDesc()} are followed by a change record at offset ${r.offset} instead of their final snapshot record` });
      this.reset();
    }
    return { offset: r.offset, kind: 'change', version: r.version, pragmaOnly: r.pragmaOnly, size: r.length, first: i, last: i };
  }

  /** A run of parts at the very end without its final record: an unfinished snapshot (torn tail). */
  dangling(): Problem | null {
    const run = this.run;
    if (run.length === 0) return null;
    return {
      kind: 'torn-tail',
      offset: run[0]!.offset,
      message: `${run.length} snapshot part record(s) (version ${run[0]!.version}) at offsets ${run[0]!.offset}..${run[run.length - 1]!.offset} without their final snapshot record at the end: a snapshot that never completed`,
    };
  }

  private reset(): void {
    this.run = [];
    this.runSize = 0;
  }
}

/** Groups records already in memory (small sets: tests and tools). Readers group as they scan, with Grouper. */
export function groupRecords(recs: readonly RecordInfo[]): Grouping {
  const g = new Grouper();
  const entries: GroupedEntry[] = [];
  for (const r of recs) {
    const e = g.push(r);
    if (e) entries.push(e);
  }
  return { entries, corrupt: g.corrupt, dangling: g.dangling() };
}
