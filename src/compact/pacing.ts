import { closeSync, fstatSync, ftruncateSync, openSync, rmSync, unlinkSync } from 'node:fs';

/**
 * Freeing a big file's blocks all at once (the last close of an unlinked 1 GiB backup after a swap, an
 * `rm` of old history) stalls the writer: measured on ext4 (mounted with `discard`) the close took ~300 ms,
 * and the journal commit that carried the freed extents made the writer's next fdatasyncs take 50-75 ms,
 * or the writer paid the whole close itself when its reopen dropped the last reference. Shrinking the file
 * a slice at a time, with a pause between slices, spreads that work over many small journal commits, so a
 * hook's fdatasync only ever waits for one slice.
 */

/** Bytes freed per step. */
export const RELEASE_STEP = 8 << 20;
/** Pause after each step, so the writer's commits interleave with ours. */
export const RELEASE_PAUSE_MS = 10;

const sleeper = new Int32Array(new SharedArrayBuffer(4));

function pause(ms: number): void {
  // synchronous on purpose: compaction runs in a worker (or the offline CLI) with nothing else to do
  Atomics.wait(sleeper, 0, 0, ms);
}

/**
 * Frees the blocks of the open file `fd` gradually when no name refers to it any more, then closes it.
 * A file that still has a name (a history link, a hard link we did not make) is only closed: its bytes
 * are someone's backup. The writer may still hold its own descriptor on the old file until its next
 * append reopens; it never reads or writes through it after the swap, and its close is cheap once ours
 * has shrunk the file.
 */
export function releaseGently(fd: number): void {
  try {
    const st = fstatSync(fd);
    let size = st.nlink === 0 ? st.size : 0;
    while (size > 0) {
      size = Math.max(0, size - RELEASE_STEP);
      ftruncateSync(fd, size);
      pause(RELEASE_PAUSE_MS);
    }
  } finally {
    closeSync(fd);
  }
}

/** `rm -f`, freeing a big file's blocks gradually (see releaseGently). */
export function removeGently(path: string): void {
  let fd: number;
  try {
    fd = openSync(path, 'r+');
  } catch {
    // absent, or not writable by us (so not shrinkable): a plain removal, as before
    rmSync(path, { force: true });
    return;
  }
  try {
    unlinkSync(path);
  } catch (e) {
    closeSync(fd);
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  releaseGently(fd);
}

