import { fdatasyncSync } from 'node:fs';
import { writeFully } from '../fsutil.js';

/**
 * Reserved space of preallocated (format 4) files: zeros written ahead of the writer, so that an append
 * overwrites allocated blocks and its fdatasync has no file-size change to commit (docs/format-v2.md,
 * "Preallocation").
 */

/** The reserve is topped up to hold this many of the recent biggest records... */
export const RESERVE_RECORDS = 64;
/** ...but at least this much... */
export const RESERVE_MIN = 1 << 20;
/** ...and at most this much: the fast open searches the reserve backwards for the data's end. */
export const RESERVE_MAX = 16 << 20;

const ZERO_CHUNK = 256 << 10;

/** Writes zeros over [from, to) (no sync). The zero buffer lives only for the call. */
export function zeroRange(fd: number, from: number, to: number): void {
  if (to <= from) return;
  const zeros = Buffer.alloc(Math.min(ZERO_CHUNK, to - from));
  for (let at = from; at < to; ) {
    const n = Math.min(zeros.length, to - at);
    writeFully(fd, n === zeros.length ? zeros : zeros.subarray(0, n), at);
    at += n;
  }
}

/**
 * Clears the records starting at `starts` (file order; the last ends at `end`), newest first, each made
 * durable before the one before it is touched: a crash leaves the older records valid followed by zeros
 * (or by a half-cleared record, a torn tail), never a valid record after a cleared one.
 */
export function clearRecordsBackwards(fd: number, starts: readonly number[], end: number): void {
  let upTo = end;
  for (let i = starts.length - 1; i >= 0; i--) {
    zeroRange(fd, starts[i]!, upTo);
    fdatasyncSync(fd);
    upTo = starts[i]!;
  }
}
