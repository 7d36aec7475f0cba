import { createRequire } from 'node:module';

/**
 * How much a compaction worker's V8 old generation may grow past what its last full collection kept, in %.
 *
 * A compaction's replay keeps little (6-8 MiB of live heap on a 1 GiB backup) but drops a few KB per entry,
 * and some of it reaches the old generation. With V8's default growing factor (up to 4x the live size) the
 * old generation sat at ~24 MiB of mostly garbage before each full collection; at 20% it stays near 15 MiB
 * for the same CPU time (bench/compact.ts, `--offline` and online: docs/compaction.md, "Memory").
 *
 * V8 reads the factor at each collection, and the flag is process-wide: it also applies to the thread that
 * sets it. Both callers' main threads keep a small, short-lived heap (the plugin's: one message at a time),
 * so a full collection there stays short.
 */
const HEAP_GROWING_PERCENT = 20;

let done = false;

/** Called just before a compaction worker is created. */
export function leanCompactionHeap(): void {
  if (done) return;
  done = true;
  // loaded on first use: node:v8 adds to the plugin's start-up, and most starts never compact
  const v8 = createRequire(import.meta.url)('node:v8') as typeof import('node:v8');
  v8.setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
}
