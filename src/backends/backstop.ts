/**
 * The last bound on a remote writer's operation in flight (its own deadlines, e.g. remote_timeout, come
 * first): past it the operation is failed with the error `expire` makes, and the writer is expected to
 * take nothing more from that connection, since a late result could be mistaken for the next one's.
 *
 * One timer for the writer's life, checked when it fires: deadlines only move forward, so it is re-armed
 * about once per bound, not made and cleared per db_write (a setTimeout/clearTimeout pair and a
 * Promise.race per call were several microseconds of the hook's path). It keeps the process alive only
 * while an operation is in flight.
 */
export class Backstop {
  private inFlight: { at: number; ms: number; fail: (e: Error) => void } | null = null;
  private timer: NodeJS.Timeout | null = null;
  private timerAt = Infinity;

  constructor(private readonly expire: (ms: number) => Error) {}

  /** `op`'s result, or the expiry error if it has not settled within `ms`. One operation at a time. */
  run<T>(op: () => Promise<T>, ms: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const mine = { at: Date.now() + ms, ms, fail: reject };
      this.inFlight = mine;
      this.arm(mine.at);
      this.timer!.ref();
      const settled = (): void => {
        if (this.inFlight !== mine) return;
        this.inFlight = null;
        this.timer?.unref();
      };
      let p: Promise<T>;
      try {
        p = op();
      } catch (e) {
        settled();
        reject(e);
        return;
      }
      p.then(
        (v) => {
          settled();
          resolve(v);
        },
        (e: unknown) => {
          settled();
          reject(e);
        },
      );
    });
  }

  close(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.timerAt = Infinity;
    this.inFlight = null;
  }

  /** Makes sure the timer fires no later than `at`. */
  private arm(at: number): void {
    if (this.timer !== null && this.timerAt <= at) return;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timerAt = at;
    this.timer = setTimeout(() => this.onTimer(), Math.max(1, at - Date.now()));
  }

  private onTimer(): void {
    this.timer = null;
    this.timerAt = Infinity;
    const op = this.inFlight;
    if (op === null) return;
    if (Date.now() < op.at) {
      this.arm(op.at);
      return;
    }
    this.inFlight = null;
    op.fail(this.expire(op.ms));
  }
}
