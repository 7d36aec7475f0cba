import { readdirSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { CompactionConfig } from '../../compact/config.js';
import type { BackupWriter } from '../backend.js';
import { backupPath, isRemoteUrl } from '../open.js';
import type { SetCompactionData, SetCompactionStep } from './compact-set.js';
import { compactRunningSlot, compactTidSlot, type LaneOp } from './shared.js';
import type { ThreadMarks } from './thread-shell.js';
import { dropThread, startThread, threadGone, workerFile, wt, type WatchedThread } from './threads.js';

/** how often, at most, the automatic compaction looks at the file destinations' sizes (a few stats) */
const AUTO_CHECK_MS = 5000;
/** after an automatic compaction, a destination must grow this much more before it triggers another */
const AUTO_STEP = 16 * 1024 * 1024;

/** Writes the compaction thread's answer to fd 1 under the mutex in `sab`; `abandoned`: the thread died. */
export type CompactionStdout = (sab: SharedArrayBuffer, abandoned: () => boolean) => void;

/** What the compaction of a set needs to know of a destination (the writer's Dest has more). */
export interface CompactableDest {
  readonly url: string;
  readonly shown: string;
  local: BackupWriter | null;
  lane: WatchedThread | null;
  lastError: string | null;
}

/** The set's side of a compaction (MultiWriter). */
export interface CompactionHost {
  readonly dests: readonly CompactableDest[];
  readonly ints: Int32Array;
  readonly n: number;
  readonly cwd: string;
  readonly dbPath: string;
  log(level: 'info' | 'warn' | 'error', message: string): void;
  /** a local file written on the main thread becomes a lane's, which holds its writes back while it is compacted */
  handOver(i: number): void;
  state(i: number): string;
  marks(tidSlot: number): ThreadMarks;
  probeDue(): boolean;
}

/**
 * backup-compact over a set of destinations (docs/destinations.md), by request or automatically past
 * the configured size: each destination in turn, in a thread (compact-set.ts) that answers the request
 * itself when done, since the main thread's event loop does not run. One at a time, across the set.
 */
export class SetCompactor {
  /** the thread of the running compaction, and the request it answers */
  private running: { thread: WatchedThread; id: string | number | null } | null = null;
  /** shared with the compaction thread, which writes its answer to fd 1 itself: [stdout mutex] */
  private stdoutShared: SharedArrayBuffer | null = null;
  private auto: {
    config: CompactionConfig;
    stdout: CompactionStdout;
    nextAt: number;
    /** per destination: the size below which it does not trigger (after a compaction that left it large) */
    floor: number[];
  } | null = null;

  constructor(private readonly host: CompactionHost) {}

  /** Starts a compaction answering `id` (null: automatic, logs only). Returns why it cannot start, or null. */
  start(id: string | number | null, history: number, stdout: CompactionStdout): string | null {
    const h = this.host;
    const runSlot = compactRunningSlot(h.n);
    if (Atomics.compareExchange(h.ints, runSlot, 0, 1) !== 0) return 'a compaction of the destinations is already running; wait for it to finish (progress is in the log)';
    const steps: SetCompactionStep[] = [];
    const ports: import('node:worker_threads').MessagePort[] = [];
    try {
      for (let i = 0; i < h.dests.length; i++) {
        const d = h.dests[i]!;
        if (d.local !== null) h.handOver(i);
        if (d.lane === null) {
          steps.push({ index: i, url: d.shown, skip: `it is ${h.state(i)}${d.lastError !== null ? ` (${d.lastError})` : ''}` });
          continue;
        }
        const { port1, port2 } = new (wt().MessageChannel)();
        d.lane.port.postMessage({ t: 'compact', port: port2, history } satisfies LaneOp, [port2]);
        steps.push({ index: i, url: d.shown, port: port1 });
        ports.push(port1);
      }
      if (this.stdoutShared === null) {
        this.stdoutShared = new SharedArrayBuffer(4);
        stdout(this.stdoutShared, () => this.running === null || threadGone(this.running.thread, true) !== null);
      }
      const data: Omit<SetCompactionData, 'port'> = {
        id,
        steps,
        stdout: { sab: this.stdoutShared, slot: 0 },
        running: { sab: h.ints.buffer as SharedArrayBuffer, slot: runSlot },
      };
      const thread = startThread(workerFile(['./compact-set.js', '../backends/multi/compact-set.js']), { ...data }, h.marks(compactTidSlot(h.n)), ports);
      this.running = { thread, id };
    } catch (e) {
      Atomics.store(h.ints, runSlot, 0);
      for (const p of ports) p.close();
      return `cannot start the compaction of the destinations: ${(e as Error).message}`;
    }
    return null;
  }

  /**
   * At each message: the compaction thread died before answering (whoever clears "running" answers).
   * Returns the request to answer with an error, if any.
   */
  poll(): { id: string | number | null; message: string } | null {
    const c = this.running;
    if (c === null) return null;
    const why = threadGone(c.thread, this.host.probeDue());
    if (why === null) return null;
    this.running = null;
    dropThread(c.thread);
    if (Atomics.compareExchange(this.host.ints, compactRunningSlot(this.host.n), 1, 0) !== 1) return null;
    const message = `the compaction of the destinations stopped (${why}); each destination is whole (see the log for which were compacted); run backup-compact again`;
    this.host.log('error', message);
    return { id: c.id, message };
  }

  /** From lightningd's init on (as with one destination): compactions start by themselves past the threshold. */
  enableAuto(config: CompactionConfig, stdout: CompactionStdout): void {
    this.auto = { config, stdout, nextAt: 0, floor: this.host.dests.map(() => 0) };
  }

  /**
   * Between hooks: when a file destination has outgrown max(min_bytes, factor x the database), the set is
   * compacted in the background as by backup-compact (no one to answer; the log says what was done).
   */
  autoCompact(): void {
    const a = this.auto;
    const h = this.host;
    if (a === null || !a.config.auto || Date.now() < a.nextAt) return;
    a.nextAt = Date.now() + AUTO_CHECK_MS;
    if (Atomics.load(h.ints, compactRunningSlot(h.n)) !== 0) return;
    let dbSize = 0;
    try {
      dbSize = statSync(h.dbPath).size;
    } catch {
      dbSize = 0;
    }
    const threshold = Math.max(a.config.minBytes, a.config.factor * dbSize);
    const sizes = h.dests.map((d) => (isRemoteUrl(d.url) ? 0 : fileSetSize(backupPath(d.url, h.cwd))));
    const over = sizes.findIndex((sz, i) => sz >= threshold && sz >= a.floor[i]!);
    if (over < 0) return;
    for (let i = 0; i < sizes.length; i++) a.floor[i] = sizes[i]! + AUTO_STEP;
    h.log(
      'info',
      `destination ${h.dests[over]!.shown} is ${sizes[over]} bytes (threshold ${threshold}: max(min_bytes, ${a.config.factor} x the database)); compacting the destinations in the background`,
    );
    const why = this.start(null, a.config.history, a.stdout);
    if (why !== null) h.log('warn', `automatic compaction not started: ${why}`);
  }
}

/** A file backup's size on disk: the file and its segment files (<file>.seg-*); 0 if it cannot be read. */
function fileSetSize(path: string): number {
  let total = 0;
  try {
    total = statSync(path).size;
    const base = `${basename(path)}.seg-`;
    for (const n of readdirSync(dirname(path))) if (n.startsWith(base)) total += statSync(join(dirname(path), n)).size;
  } catch {
    // gone or unreadable: its next write says why
  }
  return total;
}
