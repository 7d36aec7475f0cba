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
  /**
   * an encrypted backup: the chain link (hex) of the newest entry, which the next record names as its prev
   * (docs/encryption.md, "The chain"); null for an empty or plaintext backup
   */
  link?: string | null;
}

/** What the backups row says about encryption (readable without the key); null for a plaintext backup. */
export interface PgEncryption {
  /** hex of the 16-byte id every record's authentication covers */
  uid: string;
  /** 1 node seed, 2 key file, 3 passphrase (as a v2 file header) */
  kind: number;
  /** hex of the key's 8-byte fingerprint */
  fingerprint: string;
}

export interface HeaderRow {
  seq: number;
  kind: 0 | 1;
  version: number;
  pragmaOnly: boolean;
  /** snapshot: database size; change: bytes of its statements */
  bytes: number;
  chunks: number;
  /**
   * an encrypted entry: the first 64 bytes of its stored record (a change's 48-byte prefix and the start of
   * its ciphertext; a snapshot's whole 64-byte prefix) and its last 16 (the GCM tag), for the chain check
   * without fetching whole records; null for a plaintext entry
   */
  head?: Uint8Array | null;
  tag?: Uint8Array | null;
  /** the stored record's length (null: plaintext) */
  recordBytes?: number | null;
}

export type PgRequest =
  | { op: 'create'; enc?: { kind: number; fingerprint: string } | null }
  | { op: 'migrate' }
  | { op: 'drop' }
  | { op: 'openWriter' }
  | { op: 'append'; version: number; statements: readonly string[]; pragmaOnly: boolean; record?: Uint8Array }
  | { op: 'dropHead' }
  | { op: 'snapshot'; version: number; path: string; seq?: number; envelope?: Uint8Array }
  | { op: 'openReader' }
  | { op: 'headers'; from: number; limit: number }
  | { op: 'stats' }
  | { op: 'entryRow'; seq: number; kind: 0 | 1 }
  | { op: 'changes'; fromSeq: number; limit: number }
  | { op: 'snapshotTo'; seq: number; chunks: number; path: string }
  | { op: 'tryCompactLock' }
  | { op: 'deleteSuperseded'; seq: number }
  | { op: 'close' };

/** Something an operation met on the way that the operator should see (a lost connection, its return). */
export interface PgNote {
  level: 'warn' | 'info';
  message: string;
}

export type PgReply = ({ id: number; ok: true; value: unknown } | { id: number; ok: false; message: string; code?: string }) & { notes?: PgNote[] };
