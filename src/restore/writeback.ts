import { close, closeSync, fdatasync, fsyncSync, openSync } from 'node:fs';

/**
 * Replayed bytes (statement text) between two writebacks. The database grows by about half as much as
 * the text replayed, so each writeback finds a few MiB dirty.
 */
export const WRITEBACK_EVERY_CHARS = 8 << 20;

/**
 * Gets the scratch database written out while the replay goes on, so that the fsync before the rename
 * finds little left to write. The kernel starts writing dirty pages on its own only past
 * `dirty_background_ratio` of RAM or after 30 s, so a restore of a few hundred MB used to write all of
 * its database in that last fsync (~240 ms at 800k invoices, ~20 ms at 50k, bench/README.md).
 *
 * An fdatasync on a descriptor of its own runs in libuv's thread pool while the main thread keeps
 * replaying (the restore is synchronous, so nothing waits for it or reads its result). It proves nothing:
 * `syncAndClose` fsyncs through a second descriptor, opened before any writeback started, and that is
 * what the rename waits for. Why a second one: Linux reports a writeback error once per open file
 * (errseq), so a write error the background fdatasync saw would not be reported again to it, nor to a
 * descriptor opened after it; the earlier descriptor still gets it.
 */
export class Writeback {
  /** background writebacks started in this process (tests check that a large restore starts some) */
  static started = 0;
  /** fsynced (synchronously) before the rename */
  private finalFd: number;
  /** used by the background fdatasyncs only; closed once the last of them has returned */
  private bgFd: number;
  private inFlight = 0;
  private done = false;
  private sinceLast = 0;

  constructor(
    path: string,
    private readonly everyChars = WRITEBACK_EVERY_CHARS,
  ) {
    this.finalFd = openSync(path, 'r');
    try {
      this.bgFd = openSync(path, 'r');
    } catch (e) {
      closeSync(this.finalFd);
      throw e;
    }
  }

  /** `chars` more statement text was replayed; starts a writeback every `everyChars`. */
  replayed(chars: number): void {
    this.sinceLast += chars;
    if (this.sinceLast >= this.everyChars) this.start();
  }

  /** Starts writing out what is dirty now (after the last commit, while the final checks read). */
  start(): void {
    if (this.done) return;
    this.sinceLast = 0;
    this.inFlight++;
    Writeback.started++;
    // an error here is reported by syncAndClose's fsync (see above); this one only gets the bytes moving
    fdatasync(this.bgFd, () => {
      this.inFlight--;
      this.closeBackground();
    });
  }

  /** The durable step: fsync through the descriptor opened first, then close it. Throws what fsync throws. */
  syncAndClose(): void {
    this.done = true;
    try {
      fsyncSync(this.finalFd);
    } finally {
      closeSync(this.finalFd);
      this.finalFd = -1;
      this.closeBackground();
    }
  }

  /** Stops starting writebacks (a failed restore, a snapshot that replaces the file); no fsync. */
  abandon(): void {
    this.done = true;
    if (this.finalFd >= 0) {
      closeSync(this.finalFd);
      this.finalFd = -1;
    }
    this.closeBackground();
  }

  /**
   * The background descriptor is closed only when no fdatasync is queued on it: a queued one would
   * otherwise run on whatever file reused the number.
   */
  private closeBackground(): void {
    if (!this.done || this.inFlight > 0 || this.bgFd < 0) return;
    const fd = this.bgFd;
    this.bgFd = -1;
    close(fd, () => {});
  }
}
