import type { MessagePort } from 'node:worker_threads';
/**
 * Messages between the synchronous side (the plugin's hook, the CLI's readers) and the worker thread
 * that owns the PostgreSQL connection. Every request gets exactly one reply, tagged with its id.
 */

/** flag values (Int32 [0] of `sab`) */
export const PG_REPLY_NONE = 0;
export const PG_REPLY_ON_PORT = 1;
/**
 * a success whose value is a number (an append's byte count), in `fast` as [id, value]: no message, so
 * the worker does not wake the synchronous side's idle event loop on each db_write, only its futex
 */
export const PG_REPLY_IN_SAB = 2;

export interface PgWorkerData {
  sab: SharedArrayBuffer;
  /** Float64 [request id, value] of a REPLY_IN_SAB answer */
  fast: SharedArrayBuffer;
  port: MessagePort;
  connectionString: string;
  backup: string;
  /** shown in pg_stat_activity */
  applicationName: string;
  /** reconnect budget per operation (backup.lock's "remote_timeout") */
  timeoutMs: number;
}

export interface HeadInfo {
  empty: boolean;
  head: number;
  headIsSnapshot: boolean;
  nextSeq: number;
}

export interface HeaderRow {
  seq: number;
  kind: 0 | 1;
  version: number;
  pragmaOnly: boolean;
  /** snapshot: database size; change: bytes of its statements */
  bytes: number;
  chunks: number;
}

export type PgRequest =
  | { op: 'create' }
  | { op: 'migrate' }
  | { op: 'drop' }
  | { op: 'openWriter' }
  | { op: 'append'; version: number; statements: readonly string[]; pragmaOnly: boolean }
  | { op: 'dropHead' }
  | { op: 'snapshot'; version: number; path: string; seq?: number }
  | { op: 'openReader' }
  | { op: 'headers'; from: number; limit: number }
  | { op: 'stats' }
  | { op: 'entryRow'; seq: number; kind: 0 | 1 }
  | { op: 'changes'; fromSeq: number; limit: number }
  | { op: 'snapshotTo'; seq: number; chunks: number; path: string }
  | { op: 'tryCompactLock' }
  | { op: 'deleteSuperseded'; seq: number }
  | { op: 'close' };

export type PgReply = { id: number; ok: true; value: unknown } | { id: number; ok: false; message: string; code?: string };
