/**
 * One timer for a run of deadlines that only move forward (one operation's, then the next one's): armed for
 * the earliest, left alone by a later one, and handed back to its owner when it fires, which re-arms it
 * for a deadline not yet due. A timer made and cleared per db_write cost the hook's path a timer-list
 * insertion and removal each time (socket/conn.ts's reads, backstop.ts).
 */
export class LazyTimer {
  private timer: NodeJS.Timeout | null = null;
  private at = Infinity;

  constructor(private readonly fire: () => void) {}

  /** Makes sure the timer fires no later than `at`; `keepAlive`: whether it holds the process up. */
  arm(at: number, keepAlive: boolean): void {
    if (this.timer !== null && this.at <= at) {
      this.hold(keepAlive);
      return;
    }
    if (this.timer !== null) clearTimeout(this.timer);
    this.at = at;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.at = Infinity;
      this.fire();
    }, Math.max(1, at - Date.now()));
    this.hold(keepAlive);
  }

  /** Whether the armed timer holds the process up (an operation in flight) or not (nothing waits on it). */
  hold(keepAlive: boolean): void {
    if (keepAlive) this.timer?.ref();
    else this.timer?.unref();
  }

  clear(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.at = Infinity;
  }
}
