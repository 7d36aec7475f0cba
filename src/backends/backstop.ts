import { LazyTimer } from './lazy-timer.js';

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
  private readonly timer = new LazyTimer(() => this.onTimer());

  constructor(private readonly expire: (ms: number) => Error) {}

  /** `op`'s result, or the expiry error if it has not settled within `ms`. One operation at a time. */
  run<T>(op: () => Promise<T>, ms: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const mine = { at: Date.now() + ms, ms, fail: reject };
      this.inFlight = mine;
      this.timer.arm(mine.at, true);
      const settled = (): void => {
        if (this.inFlight !== mine) return;
        this.inFlight = null;
        this.timer.hold(false);
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
    this.timer.clear();
    this.inFlight = null;
  }

  private onTimer(): void {
    const op = this.inFlight;
    if (op === null) return;
    if (Date.now() < op.at) {
      this.timer.arm(op.at, true);
      return;
    }
    this.inFlight = null;
    op.fail(this.expire(op.ms));
  }
}
