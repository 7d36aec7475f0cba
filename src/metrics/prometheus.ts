import { G, gSlot, reportOf, type SharedBlock } from '../backends/multi/shared.js';

/**
 * The destinations' figures in Prometheus' text exposition format (version 0.0.4), for an HTTP scrape
 * or node_exporter's textfile collector. Built from shared memory by the monitor thread: nothing of it
 * runs in the db_write hook.
 */

function label(v: string): string {
  return v.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

export function prometheusText(s: SharedBlock, shown: string[]): string {
  const reports = shown.map((u, i) => reportOf(s, i, u, null));
  const out: string[] = [];
  const metric = (name: string, type: 'gauge' | 'counter', help: string, values: Array<[string, number | null]>): void => {
    out.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, v] of values) if (v !== null) out.push(`${name}${labels} ${v}`);
  };
  const per = (f: (r: (typeof reports)[number]) => number | null, extra = ''): Array<[string, number | null]> =>
    reports.map((r) => [`{destination="${label(r.url)}",index="${r.index}"${extra}}`, f(r)]);
  metric('clnvault_acked_version', 'gauge', 'data_version of the newest write acknowledged to lightningd', [['', s.f[gSlot(s.n, G.HEAD)]!]]);
  metric('clnvault_ack_required', 'gauge', 'destinations that must hold a write before lightningd commits it (k)', [['', s.f[gSlot(s.n, G.K)]!]]);
  metric('clnvault_destinations', 'gauge', 'destinations configured (n)', [['', s.n]]);
  metric('clnvault_writes_refused_total', 'counter', 'writes refused because fewer than k destinations held them in time', [
    ['', s.f[gSlot(s.n, G.REFUSED)]!],
  ]);
  metric('clnvault_destination_healthy', 'gauge', '1 when the destination holds every acknowledged write and takes new ones', per((r) => (r.healthy ? 1 : 0)));
  metric('clnvault_destination_up', 'gauge', '1 when the destination is reachable (live or catching up)', per((r) => (r.state === 'live' || r.state === 'catching-up' ? 1 : 0)));
  metric('clnvault_destination_version', 'gauge', 'newest data_version the destination holds durably', per((r) => r.acked_version));
  metric('clnvault_destination_lag_versions', 'gauge', 'acknowledged writes the destination does not hold yet', per((r) => r.lag_versions));
  metric('clnvault_destination_lag_seconds', 'gauge', 'age of the oldest acknowledged write the destination does not hold yet', per((r) => r.lag_seconds));
  metric('clnvault_destination_ack_latency_seconds', 'gauge', 'time from the hook handing a write over to the destination holding it durably, since start', [
    ...per((r) => (r.ack_latency_p50_us === null ? null : r.ack_latency_p50_us / 1e6), ',quantile="0.5"'),
    ...per((r) => (r.ack_latency_p99_us === null ? null : r.ack_latency_p99_us / 1e6), ',quantile="0.99"'),
  ]);
  metric('clnvault_destination_bytes_total', 'counter', 'bytes sent to the destination since start', per((r) => r.bytes));
  metric('clnvault_destination_writes_total', 'counter', 'writes the destination stored since start', per((r) => r.writes));
  metric('clnvault_destination_errors_total', 'counter', 'failed writes and reconnection attempts since start', per((r) => r.errors));
  metric('clnvault_destination_queued', 'gauge', 'writes waiting in memory for the destination', per((r) => r.queued));
  return `${out.join('\n')}\n`;
}
