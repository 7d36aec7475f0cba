import type { MessagePort } from 'node:worker_threads';
import type { DestCompaction } from './compact-dest.js';
/**
 * Memory shared between the plugin's main thread, the destination lanes (lane.ts) and the monitor
 * (src/metrics/worker.ts). The main thread blocks in read(2) between hooks and never runs its event
 * loop, so everything that must be seen across threads without a message lives here: acknowledgements
 * (Int32, for Atomics.wait) and per-destination figures (Float64, read without locks: a figure torn
 * across two updates is at worst one write stale).
 */

export const DestState = {
  /** holds every acknowledged write and takes new ones */
  Live: 0,
  /** its last write failed; retrying, new writes are queued */
  Down: 1,
  /** reachable again and replaying its queue */
  CatchingUp: 2,
  /** too far behind, rolled back, or replaced: waits for a snapshot of the node's database */
  NeedsSnapshot: 3,
  /** refused what it was sent (a replaced backup that is ahead, a version rule): never trusted again in this run */
  Refused: 4,
  /** not opened yet (start-up) */
  Opening: 5,
  /** its thread died (thread-shell.ts): holds nothing new until the plugin restarts it and re-seeds it */
  Error: 6,
  /** being compacted (backup-compact): holds its writes back, not counted for acknowledgements until it replayed them */
  Compacting: 7,
} as const;
export type DestState = (typeof DestState)[keyof typeof DestState];

export const STATE_NAMES = ['live', 'down', 'catching-up', 'needs-snapshot', 'refused', 'opening', 'error', 'compacting'] as const;

/** Float64 slots per destination */
export const F = {
  STATE: 0,
  /** newest version the destination holds durably */
  HEAD: 1,
  /** bytes sent this run */
  BYTES: 2,
  ERRORS: 3,
  /** writes acknowledged this run */
  WRITES: 4,
  /** when the write it last took was handed to it (ms since the epoch); lag in seconds is measured from it */
  LAST_OP_AT: 5,
  /** writes waiting in its queue */
  QUEUED: 6,
  /** 1 when the newest entry is a snapshot */
  HEAD_SNAPSHOT: 7,
  /** 1 when it was ever rolled back / replaced this run (kept for status) */
  UNTRUSTED_SEEN: 8,
  HIST: 16,
} as const;
/** latency histogram: bucket b holds latencies in [2^(b/4), 2^((b+1)/4)) microseconds */
export const HIST_BUCKETS = 128;
export const PER_DEST = F.HIST + HIST_BUCKETS;

/** Float64 slots of the whole set, after the per-destination blocks */
export const G = {
  /** version of the newest write acknowledged to lightningd (k destinations hold it) */
  HEAD: 0,
  /** when it was acknowledged (ms since the epoch) */
  HEAD_AT: 1,
  K: 2,
  N: 3,
  /** writes refused because fewer than k destinations held them in time */
  REFUSED: 4,
} as const;
const GLOBALS = 8;

/**
 * Int32 slots: ack[i] (sequence number of the newest op destination i holds), needSnapshot[i], the bell,
 * then tid[i] (OS thread id of destination i's lane, 0: none; negated once it was found gone) and the
 * monitor's tid
 */
export interface SharedBlock {
  n: number;
  ints: Int32Array;
  f: Float64Array;
}

export function allocShared(n: number): { ints: SharedArrayBuffer; f: SharedArrayBuffer } {
  return {
    ints: new SharedArrayBuffer(4 * (3 * n + 4)),
    f: new SharedArrayBuffer(8 * (n * PER_DEST + GLOBALS)),
  };
}

export function attachShared(n: number, buf: { ints: SharedArrayBuffer; f: SharedArrayBuffer }): SharedBlock {
  return { n, ints: new Int32Array(buf.ints), f: new Float64Array(buf.f) };
}

export const ackSlot = (i: number): number => i;
export const snapSlot = (n: number, i: number): number => n + i;
export const bellSlot = (n: number): number => 2 * n;
export const tidSlot = (n: number, i: number): number => 2 * n + 1 + i;
export const monitorTidSlot = (n: number): number => 3 * n + 1;
/** the thread of a running backup-compact over the set (compact-set.ts) */
export const compactTidSlot = (n: number): number => 3 * n + 2;
/** 1 while a backup-compact over the set runs; whoever clears it answers the request */
export const compactRunningSlot = (n: number): number => 3 * n + 3;
export const fSlot = (i: number, k: number): number => i * PER_DEST + k;
export const gSlot = (n: number, k: number): number => n * PER_DEST + k;

/** Wakes the main thread waiting for acknowledgements. */
export function ring(s: SharedBlock): void {
  Atomics.add(s.ints, bellSlot(s.n), 1);
  Atomics.notify(s.ints, bellSlot(s.n));
}

export function recordLatency(s: SharedBlock, i: number, us: number): void {
  const b = us < 1 ? 0 : Math.min(HIST_BUCKETS - 1, Math.floor(4 * Math.log2(us)));
  s.f[fSlot(i, F.HIST + b)]! += 1;
}

/** The q-quantile (0..1) of destination i's acknowledgement latency in microseconds (upper bucket edge), null with no sample. */
export function latencyQuantile(s: SharedBlock, i: number, q: number): number | null {
  let total = 0;
  for (let b = 0; b < HIST_BUCKETS; b++) total += s.f[fSlot(i, F.HIST + b)]!;
  if (total === 0) return null;
  const want = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (let b = 0; b < HIST_BUCKETS; b++) {
    seen += s.f[fSlot(i, F.HIST + b)]!;
    if (seen >= want) return Math.round(2 ** ((b + 1) / 4));
  }
  return null;
}

export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

/** What status, metrics and notifications say about one destination. */
export interface DestReport {
  index: number;
  url: string;
  state: (typeof STATE_NAMES)[number];
  healthy: boolean;
  acked_version: number;
  lag_versions: number;
  lag_seconds: number;
  ack_latency_p50_us: number | null;
  ack_latency_p99_us: number | null;
  bytes: number;
  writes: number;
  errors: number;
  queued: number;
  last_error: string | null;
  /** the last backup-compact's outcome for it (this run), null if none */
  compaction?: DestCompaction | null;
}

/**
 * Live: its last write succeeded and it takes each new one as it comes (a remote one may be a write or
 * two behind for the time of its round trip, which is not a reason to alarm anyone). Cheap enough for
 * every message the plugin handles.
 */
export function isHealthy(s: SharedBlock, i: number): boolean {
  return s.f[fSlot(i, F.STATE)] === DestState.Live;
}

export function reportOf(s: SharedBlock, i: number, url: string, lastError: string | null): DestReport {
  const f = s.f;
  const state = f[fSlot(i, F.STATE)]! as DestState;
  const head = f[fSlot(i, F.HEAD)]!;
  const g = f[gSlot(s.n, G.HEAD)]!;
  const lag = Math.max(0, g - head);
  const lagSeconds = lag === 0 ? 0 : Math.max(0, (f[gSlot(s.n, G.HEAD_AT)]! - f[fSlot(i, F.LAST_OP_AT)]!) / 1000);
  return {
    index: i,
    url,
    state: STATE_NAMES[state] ?? 'opening',
    healthy: isHealthy(s, i),
    acked_version: head,
    lag_versions: lag,
    lag_seconds: Math.round(lagSeconds * 1000) / 1000,
    ack_latency_p50_us: latencyQuantile(s, i, 0.5),
    ack_latency_p99_us: latencyQuantile(s, i, 0.99),
    bytes: f[fSlot(i, F.BYTES)]!,
    writes: f[fSlot(i, F.WRITES)]!,
    errors: f[fSlot(i, F.ERRORS)]!,
    queued: f[fSlot(i, F.QUEUED)]!,
    last_error: lastError,
  };
}

/** Messages on a destination lane's port. */
export type LaneOp =
  | { t: 'change'; seq: number; version: number; statements: readonly string[]; repeat: boolean; at: number }
  | { t: 'snapshot'; seq: number; version: number; path: string; at: number }
  | { t: 'compact'; port: MessagePort; history: number }
  | { t: 'close' };

export type LaneNote =
  | { t: 'opened'; head: number; empty: boolean; headIsSnapshot: boolean; format: string; trusted: boolean }
  | { t: 'open-failed'; error: string; keyRefused?: boolean }
  | { t: 'log'; level: 'info' | 'warn' | 'error'; message: string; error?: string }
  | { t: 'compacted'; outcome: DestCompaction }
  /** the destination's backup id (a v2 file), at each opening */
  | { t: 'identity'; id: string }
  | { t: 'closed' };
