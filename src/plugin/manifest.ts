import type { DbWriteHandler } from './db-write.js';
import type { Startup } from './startup.js';
import { MultiWriter } from '../backends/multi/writer.js';

/** Sent when a destination falls behind or recovers (several destinations, docs/destinations.md). */
export const DESTINATION_NOTIFICATION = 'clnvault_destination';

/** What the plugin registers. `dynamic: false`: started later, it would miss every earlier write. */
export function manifest(): unknown {
  return {
    options: [
      {
        name: 'backup-destination',
        type: 'string',
        description: 'UNUSED. Kept for backward compatibility only. Please update your configuration to remove this option.',
      },
    ],
    rpcmethods: [
      {
        name: 'clnvault-status',
        usage: '',
        description:
          'Show the state of the clnvault backup: destination(s), format, head version, writes, latency; with several destinations, each one\'s acknowledged version, lag, ack latency p50/p99, bytes, errors and last error.',
      },
      {
        name: 'backup-compact',
        usage: '',
        description:
          'Compact the backup in the background (snapshot + newest changes) without pausing database writes; returns {before, after} sizes when done.',
      },
    ],
    subscriptions: [],
    notifications: [{ method: DESTINATION_NOTIFICATION }],
    hooks: [{ name: 'db_write' }],
    dynamic: false,
  };
}

export function statusResult(startup: Startup, handler: DbWriteHandler): unknown {
  const w = startup.writer ?? startup.remote;
  const s = w?.stats();
  return {
    ok: w !== null && startup.error === null,
    destination: startup.url,
    location: w?.location ?? null,
    format: w?.format ?? null,
    encrypted: startup.encryption !== null,
    key_fingerprint: startup.encryption?.fingerprint ?? null,
    head_version: s?.head ?? null,
    entries: s?.entries ?? null,
    backup_bytes: s?.bytes ?? null,
    writes_this_run: handler.stats.writes,
    bytes_written_this_run: handler.stats.bytesWritten,
    last_write_version: handler.stats.lastVersion,
    last_write_latency_us: Math.round(handler.stats.lastLatencyUs),
    rewinds_this_run: handler.stats.rewinds,
    rebaselined: startup.rebaselined,
    error: startup.error,
    ...(w instanceof MultiWriter ? { ack_required: w.k, destinations: w.reports(), monitor_error: w.monitorProblem() } : {}),
  };
}
