import type { EntryHeader } from '../engine/entries.js';
import type { BackupReader } from './backend.js';

const WALK_BATCH = 64;

/**
 * The entries' headers in file order, a few at a time: a header walk is synchronous and must not be
 * re-entered, so the walk stops after a batch, the caller reads (and sends, or applies) those entries,
 * and the walk resumes where it left. Memory holds one batch of headers, whatever the backup's length.
 */
export function* headersInBatches(reader: BackupReader): Generator<EntryHeader> {
  let from: number | undefined;
  for (;;) {
    const batch: EntryHeader[] = [];
    let skip = from !== undefined; // a resumed walk starts at the last entry already given
    reader.forEachHeader((h) => {
      if (skip) {
        skip = false;
        return true;
      }
      batch.push(h);
      return batch.length < WALK_BATCH;
    }, from === undefined ? {} : { from });
    for (const h of batch) yield h;
    if (batch.length < WALK_BATCH) return;
    from = batch[batch.length - 1]!.offset;
  }
}
