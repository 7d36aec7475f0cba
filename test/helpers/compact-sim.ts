/** Shared by the compaction suites: RPC calls through the simulator and a continuous writer. */
import type { JsonRpcMessage } from '../../src/sim/framing.js';
import type { SimNode } from '../../src/sim/lightningd.js';
import { Workload } from '../../src/sim/workload.js';

/** SimNode sends lightningd's own requests; an RPC passthrough (lightning-cli backup-compact) goes the same way. */
export function rpc(node: SimNode, method: string, params: unknown = {}, timeoutMs = 600_000): Promise<JsonRpcMessage> {
  return (node as unknown as { call(m: string, p: unknown, t: number): Promise<JsonRpcMessage> }).call(method, params, timeoutMs);
}

export interface Writer {
  /** resolves when stopped; rejects if a write was not answered continue */
  done: Promise<void>;
  stop(): void;
  /** round-trip time of every hook answered, ms, with its start time */
  latencies: Array<{ at: number; ms: number }>;
  transactions: number;
  failure: string | null;
}

/**
 * Sends workload items back to back, as a busy node does, timing each hook round trip. `tolerateDeath`:
 * a killed plugin ends the loop quietly (crash tests).
 */
export function startWriter(node: SimNode, seed: number, opts: { tolerateDeath?: boolean; datastoreSize?: [number, number] } = {}): Writer {
  const wl = Workload.fromDb(node.dbPath, seed, { datastoreSize: opts.datastoreSize ?? [100, 4096], datastoreKeys: 500 });
  let stopped = false;
  const w: Writer = {
    done: Promise.resolve(),
    stop: () => {
      stopped = true;
    },
    latencies: [],
    transactions: 0,
    failure: null,
  };
  w.done = (async () => {
    while (!stopped) {
      const item = wl.next();
      for (const b of item.batches) {
        const t0 = performance.now();
        const r = b.kind === 'pragma' ? await node.pragma(b.statement) : await node.transaction(b.statements);
        const t1 = performance.now();
        if (r.answered !== 'continue') {
          w.failure = r.answered === 'error' ? r.detail : r.answered;
          if (opts.tolerateDeath) return;
          throw new Error(`write not answered continue: ${w.failure}`);
        }
        w.latencies.push({ at: t0, ms: t1 - t0 });
        w.transactions++;
      }
    }
  })();
  return w;
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}
