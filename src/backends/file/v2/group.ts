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
 * entry. `recs` is every valid record in file order (global offsets for a segmented backup).
 */
export function groupRecords(recs: readonly RecordInfo[]): Grouping {
  const entries: GroupedEntry[] = [];
  const corrupt: Problem[] = [];
  let run = -1;
  let runSize = 0;
  const runDesc = (to: number): string => {
    const n = to - run;
    return `${n} snapshot part record(s) (version ${recs[run]!.version}) at offsets ${recs[run]!.offset}..${recs[to - 1]!.offset}`;
  };
  for (let i = 0; i < recs.length; i++) {
    const r = recs[i]!;
    if (r.type === TYPE_SNAPSHOT_PART) {
      if (run >= 0 && recs[run]!.version !== r.version) {
        corrupt.push({
          kind: 'corrupt',
          offset: recs[run]!.offset,
          message: `${runDesc(i)} are followed by a snapshot part of version ${r.version} at offset ${r.offset} instead of their final snapshot record`,
        });
        run = -1;
      }
      if (run < 0) {
        run = i;
        runSize = 0;
      }
      runSize += r.length;
      continue;
    }
    const n = run < 0 ? 0 : i - run;
    if (r.type === TYPE_SNAPSHOT) {
      if (r.parts !== n || (n > 0 && recs[run]!.version !== r.version)) {
        corrupt.push({
          kind: 'corrupt',
          // the final record's offset: a damaged part before it is then reported first, where the damage is
          offset: r.offset,
          message:
            `the snapshot record at offset ${r.offset} (version ${r.version}) says ${r.parts} snapshot part record(s) precede it, but ` +
            (n > 0 ? `${runDesc(i)} do` : 'none do'),
        });
      } else {
        entries.push({ offset: n > 0 ? recs[run]!.offset : r.offset, kind: 'snapshot', version: r.version, pragmaOnly: false, size: (n > 0 ? runSize : 0) + r.length, first: n > 0 ? run : i, last: i });
      }
      run = -1;
      continue;
    }
    if (n > 0) {
      corrupt.push({ kind: 'corrupt', offset: recs[run]!.offset, message: `${runDesc(i)} are followed by a change record at offset ${r.offset} instead of their final snapshot record` });
      run = -1;
    }
    entries.push({ offset: r.offset, kind: 'change', version: r.version, pragmaOnly: r.pragmaOnly, size: r.length, first: i, last: i });
  }
  const dangling: Problem | null =
    run < 0
      ? null
      : {
          kind: 'torn-tail',
          offset: recs[run]!.offset,
          message: `${runDesc(recs.length)} without their final snapshot record at the end: a snapshot that never completed`,
        };
  return { entries, corrupt, dangling };
}

