import { statSync } from 'node:fs';
import type { Problem } from '../../engine/entries.js';
import { listSegmentFiles } from './segments/layout.js';

/**
 * Reading a backup that its writer may be appending to right now (`clnvault status` or `verify` on a live
 * node, the server's reads): a read can meet an append half-copied into the page cache, a segment cut or
 * sealed under it, a segment not yet given its header. Each looks like a torn tail, a short read or a
 * missing file at that instant, and is gone a moment later. Such a read is taken again; what stays put is
 * reported. docs/format-v2.md, "Reading a set that is being written".
 */

/** Reads taken at most this often before what they find is reported. */
const LIVE_ATTEMPTS = 5;
/** ... and when nothing changed but a suspect tail of a file just written (a crash leaves those too). */
const TAIL_ATTEMPTS = 3;
/** A file written within this long counts as live: its torn tail may be an append in progress. */
const LIVE_MS = 2000;
/** Between two reads that saw nothing change: an append's copy into the page cache takes microseconds. */
const SETTLE_MS = 5;
const pause = new Int32Array(new SharedArrayBuffer(4));

/** The set's files, their sizes and change times: equal before and after a read, the files held still. */
function fingerprint(path: string): { text: string; newestMs: number } {
  const parts: string[] = [];
  let newestMs = 0;
  for (const f of [path, ...listSegmentFiles(path).map((x) => x.path)]) {
    try {
      const st = statSync(f, { bigint: true });
      parts.push(`${f}:${st.size}:${st.mtimeNs}:${st.ino}`);
      newestMs = Math.max(newestMs, Number(st.mtimeNs / 1_000_000n));
    } catch {
      parts.push(`${f}:gone`);
    }
  }
  return { text: parts.join('\n'), newestMs };
}

/**
 * `open()` of the backup at `path`, taken again (at most LIVE_ATTEMPTS times) when it throws or reports
 * problems while the files changed under it; or (at most TAIL_ATTEMPTS times) when its only problem is a
 * suspect torn tail (a record whole in length that fails its check, which verify takes for damage) of a
 * file written in the last LIVE_MS: an append in progress, whose mtime moved when the write started, so
 * the change need not show. A plain torn tail ("N unacknowledged bytes") is what an append in progress
 * is, and is reported as it is.
 */
export function openLive<R extends { problems(): Problem[]; close(): void }>(path: string, open: () => R): R {
  for (let attempt = 1; ; attempt++) {
    const before = fingerprint(path);
    let r: R;
    try {
      r = open();
    } catch (e) {
      if (attempt < LIVE_ATTEMPTS && fingerprint(path).text !== before.text) continue;
      throw e;
    }
    const problems = attempt < LIVE_ATTEMPTS ? r.problems() : [];
    if (problems.length > 0) {
      const after = fingerprint(path);
      const changed = after.text !== before.text;
      const suspectTail = problems.every((p) => p.kind === 'torn-tail') && problems.some((p) => p.suspect === true);
      if (changed || (suspectTail && attempt < TAIL_ATTEMPTS && Date.now() - after.newestMs < LIVE_MS)) {
        r.close();
        if (!changed) Atomics.wait(pause, 0, 0, SETTLE_MS);
        continue;
      }
    }
    return r;
  }
}
