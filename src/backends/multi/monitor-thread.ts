import type { ThreadMarks } from './thread-shell.js';
import { dropThread, RESTART_FIRST_MS, RESTART_MAX_MS, startThread, threadGone, workerFile, wt, type WatchedThread } from './threads.js';
import { STATE_FILE } from './state.js';

export interface MonitorConfig {
  metrics?: { host: string; port: number };
  textfile?: string;
  heartbeatUrl?: string;
  heartbeatIntervalS?: number;
}

type Log = (level: 'info' | 'warn' | 'error', message: string) => void;

/**
 * The monitor thread of a set of destinations (src/metrics/monitor.ts: metrics, heartbeat, the state
 * file), watched as the lanes are: a death is logged and the thread started again after a delay that
 * doubles. Its loss never touches a write, so it has no say in acknowledgements.
 */
export class MonitorThread {
  private thread: WatchedThread | null = null;
  /** why the thread is not running (null: it is) */
  private error: string | null = null;
  private restartAt: number | null = null;
  private restartDelayMs = RESTART_FIRST_MS;

  /** `data`: the thread's workerData at each start (it carries the ids known then) */
  constructor(
    private readonly data: () => Record<string, unknown>,
    private readonly marks: ThreadMarks,
    private readonly log: Log,
  ) {}

  start(): void {
    try {
      this.thread = startThread(workerFile(['../../metrics/monitor.js', '../metrics/monitor.js']), this.data(), this.marks);
      this.error = null;
    } catch (e) {
      this.error = `could not be started: ${(e as Error).message}`;
      this.log('warn', `could not start the monitor thread (metrics, heartbeat, progress file): ${(e as Error).message}`);
    }
  }

  /** null while the thread runs, else why it does not (for status) */
  problem(): string | null {
    return this.error;
  }

  /** Relays what the thread logged (the main thread's event loop does not run, so nothing arrives otherwise). */
  drain(): void {
    const { receiveMessageOnPort } = wt();
    for (let m; this.thread !== null && (m = receiveMessageOnPort(this.thread.port)) !== undefined; ) {
      const l = m.message as { level: 'info' | 'warn' | 'error'; message: string };
      this.log(l.level, l.message);
    }
  }

  /** Notices a thread that ended; `probe`: look in /proc too (rate-limited by the caller). */
  check(probe: boolean): void {
    if (this.thread === null) return;
    const why = threadGone(this.thread, probe);
    if (why === null) return;
    this.drain();
    dropThread(this.thread);
    this.thread = null;
    this.error = why;
    this.restartAt = Date.now() + this.restartDelayMs;
    this.log(
      'error',
      `the monitor thread DIED (${why}): metrics, the heartbeat and ${STATE_FILE} stop until it is restarted in ` +
        `${Math.round(this.restartDelayMs / 1000)} s`,
    );
    this.restartDelayMs = Math.min(this.restartDelayMs * 2, RESTART_MAX_MS);
  }

  restartIfDue(now: number): void {
    if (this.restartAt === null || now < this.restartAt) return;
    this.restartAt = null;
    this.log('info', 'restarting the monitor thread');
    this.start();
  }

  /** Hands the thread a message; false when it is not running (the caller then does the work itself). */
  post(message: unknown): boolean {
    if (this.thread === null) return false;
    this.thread.port.postMessage(message);
    return true;
  }

  terminate(): void {
    if (this.thread !== null) void this.thread.worker.terminate();
  }
}
