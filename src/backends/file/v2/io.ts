import { readSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { BackupError } from '../../../engine/entries.js';

/** Reads exactly `n` bytes at `pos`, or throws: a short read of a backup is never silently a smaller record. */
export function readFully(fd: number, buf: Buffer, n: number, pos: number): void {
  let done = 0;
  while (done < n) {
    const r = readSync(fd, buf, done, n - done, pos + done);
    if (r <= 0) throw new Error(`unexpected end of file at offset ${pos + done}`);
    done += r;
  }
}

/**
 * A read buffer over [0, size) of a file. Records are mostly small, so one read fills the window with
 * many of them; `ahead` reads forward (scans), `behind` reads backward (walking trailers from the end).
 * A returned view is valid until the next call.
 */
export class FileWindow {
  private readonly buf: Buffer;
  private start = 0;
  private len = 0;

  constructor(
    private readonly fd: number,
    readonly size: number,
    capacity: number,
  ) {
    this.buf = Buffer.allocUnsafe(capacity);
  }

  get capacity(): number {
    return this.buf.length;
  }

  /** Forgets what was read: the next access reads the file again (it may have been written since). */
  invalidate(): void {
    this.len = 0;
  }

  ahead(off: number, n: number): Buffer {
    const i = this.aheadIndex(off, n);
    return this.buf.subarray(i, i + n);
  }

  /** ahead() without the view (the scan's path): bytes [off, off + n) are at [i, i + n) of `bytes` for the returned i, until the next call. */
  aheadIndex(off: number, n: number): number {
    if (!this.has(off, n)) this.fill(off, Math.min(this.buf.length, this.size - off), n);
    return off - this.start;
  }

  get bytes(): Buffer {
    return this.buf;
  }

  behind(off: number, n: number): Buffer {
    if (!this.has(off, n)) {
      const from = Math.max(0, off + n - this.buf.length);
      this.fill(from, off + n - from, n);
    }
    return this.buf.subarray(off - this.start, off - this.start + n);
  }

  private has(off: number, n: number): boolean {
    return off >= this.start && off + n <= this.start + this.len;
  }

  private fill(from: number, len: number, need: number): void {
    if (need > this.buf.length || from < 0 || from + len > this.size) {
      throw new Error(`internal: window read of ${need} bytes at ${from} outside [0, ${this.size})`);
    }
    readFully(this.fd, this.buf, len, from);
    this.start = from;
    this.len = len;
  }
}

export function crcOfRange(win: FileWindow, off: number, len: number): number {
  let c = 0;
  while (len > 0) {
    const n = Math.min(len, win.capacity);
    c = crc32(win.ahead(off, n), c);
    off += n;
    len -= n;
  }
  return c;
}

export function asBackupError(e: unknown, path: string, what: string): BackupError {
  if (e instanceof BackupError) return e;
  return new BackupError(`${path}: ${what}: ${(e as Error).message}`, path);
}

