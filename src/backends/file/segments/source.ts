import { closeSync, existsSync, fstatSync, openSync, readSync } from 'node:fs';
import { BackupError } from '../../../engine/entries.js';
import {
  FILE_HEADER_LEN,
  PREALLOC_VERSION,
  SEAL_RECORD_LEN,
  liveSeal,
} from '../v2.js';
import { discoverSegments, seedOfFd, segmentPath } from './layout.js';

/**
 * Reads the virtual file of a segmented backup (see the offsets rule above) for compaction, which walks
 * and copies byte ranges. New segments the writer starts meanwhile are found when a read reaches them.
 */
export class SegmentedSource {
  private fds: number[] = [];
  private bases: number[] = [];
  private ends: number[] = [];
  private closed = false;
  /** format 4: the newest segment's size includes reserved space, so its size does not say where it ends */
  private prealloc = false;
  private setId = 0;

  constructor(private readonly base: string) {
    this.refresh();
    if (this.fds.length === 0) throw new BackupError(`${base}: no segments`, base);
  }

  /** The first segment's file header. */
  header(): Buffer {
    const h = Buffer.allocUnsafe(FILE_HEADER_LEN);
    this.readAt(h, FILE_HEADER_LEN, 0);
    return h;
  }

  get segmentCount(): number {
    return this.fds.length;
  }

  private refresh(): void {
    // the writer may be starting a segment right now: a header not yet written is not a segment yet
    const set = discoverSegments(this.base, { allowTornLast: true });
    this.prealloc = set.first.version >= PREALLOC_VERSION;
    this.setId = set.first.setId;
    for (let i = this.fds.length; i < set.segments.length; i++) this.fds.push(openSync(set.segments[i]!.path, 'r'));
    // every segment but the last is final; the last may still grow. A seal is not data: the virtual file
    // (global offsets) leaves it out, as the writer and the reader do
    let base = 0;
    this.bases = [];
    this.ends = [];
    for (let i = 0; i < this.fds.length; i++) {
      // the size and the seal read together: a roll-over cuts the reserve just before it writes the seal
      const live = liveSeal(this.fds[i]!, seedOfFd(this.fds[i]!));
      let size = live.size;
      const sealed = live.seal !== null;
      if (sealed) size -= SEAL_RECORD_LEN;
      this.bases.push(base);
      this.ends.push(base + size);
      base += size - FILE_HEADER_LEN;
      // format 4, a roll-over under way: the segment's reserve is not cut yet, so where the next one starts
      // is not known; nothing in the next one is committed before the seal, so the view stops here
      if (this.prealloc && !sealed && i < this.fds.length - 1) {
        for (const fd of this.fds.splice(i + 1)) closeSync(fd);
        break;
      }
    }
  }

  /** Format 4: reading the newest known segment, whose end its size does not tell: has the writer moved on? */
  private movedOn(): boolean {
    return this.prealloc && existsSync(segmentPath(this.base, this.setId, this.fds.length + 1));
  }

  /** The first file's device and inode: which backup this source reads (compaction checks it). */
  identity(): { dev: bigint; ino: bigint } {
    const st = fstatSync(this.fds[0]!, { bigint: true });
    return { dev: st.dev, ino: st.ino };
  }

  /** The virtual file's size now (every segment, the last one as far as it is written). */
  size(): number {
    this.refresh();
    return this.ends[this.ends.length - 1]!;
  }

  readAt(buf: Buffer, n: number, pos: number): void {
    let done = 0;
    let refreshed = false;
    // one stat per read (compaction reads in large windows): a sealed, cut segment is never read from a stale view
    if (this.movedOn()) this.refresh();
    while (done < n) {
      const g = pos + done;
      let i = this.fds.length - 1;
      while (i > 0 && this.bases[i]! + FILE_HEADER_LEN > g) i--;
      const local = g - this.bases[i]!;
      // bounded for the last segment too: once the writer moves on, a seal follows its data, and new data
      // is found by refreshing (which also learns of the new segments)
      const avail = this.ends[i]! - g;
      const want = Math.min(n - done, avail);
      const r = want > 0 ? readSync(this.fds[i]!, buf, done, want, local) : 0;
      if (r <= 0) {
        if (!refreshed) {
          refreshed = true;
          this.refresh();
          continue;
        }
        throw new Error(`unexpected end of data at offset ${g} (segment ${i + 1}, local offset ${local})`);
      }
      done += r;
      refreshed = false;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of this.fds) closeSync(fd);
  }
}
