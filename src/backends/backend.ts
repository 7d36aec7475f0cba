import type { BackupFormat, Entry, EntryHeader, Problem } from '../engine/entries.js';

/**
 * The one interface every destination implements. The plugin holds a BackupWriter for the whole run;
 * the restore engine, `inspect` and `verify` use a BackupReader.
 */

export interface BackupStats {
  format: BackupFormat;
  /** where the backup lives, as given in the URL */
  location: string;
  /** newest version held (0 for an empty backup) */
  head: number;
  /** number of entries (records) currently held */
  entries: number;
  /** bytes of valid data */
  bytes: number;
}

export interface BackupWriter {
  readonly format: BackupFormat;
  readonly location: string;
  /** newest version held; 0 when empty */
  head(): number;
  isEmpty(): boolean;
  /** true when the newest entry is a snapshot (a snapshot is committed state and is never rewound) */
  headIsSnapshot(): boolean;
  /** problems repaired when the backup was opened (a torn tail that was cut, orphan entries dropped) */
  repaired(): Problem[];
  /**
   * Appends one db_write batch. Returns only once the entry is on stable storage, with the number of
   * bytes it added (so the hot path need not ask for stats around every append).
   */
  appendChange(version: number, statements: readonly string[]): number;
  /** Appends a snapshot whose bytes are read from the SQLite file `dbPath`. Durable on return. */
  appendSnapshotFile(version: number, dbPath: string): void;
  /**
   * Removes, durably, every trailing entry whose version equals the head (the node never committed
   * them). Returns the new head.
   */
  dropHead(): number;
  stats(): BackupStats;
  close(): void;
  /**
   * Work that makes the next appends cheaper, done when no hook waits for it (a v2 file tops up its
   * reserved space, docs/format-v2.md, "Preallocation"). Optional; true when it did anything.
   */
  prepare?(): boolean;
  /**
   * The backup's id (hex) where the destination reports one over its connection (a clnvault:// server),
   * null where it gives none; used to tell the same backup from a replacement (docs/destinations.md).
   */
  backupId?(): string | null;
}

/**
 * A remote destination (socket:, clnvault://, postgresql://) driven from the plugin's own event loop: each
 * call resolves once the server acknowledged (or committed), so the hook can answer lightningd without any
 * thread hand-off (docs/remote.md, "Latency"). Same rules as BackupWriter; only the waiting differs.
 */
export interface AsyncBackupWriter {
  readonly format: BackupFormat;
  readonly location: string;
  head(): number;
  isEmpty(): boolean;
  headIsSnapshot(): boolean;
  repaired(): Problem[];
  appendChange(version: number, statements: readonly string[]): Promise<number>;
  appendSnapshotFile(version: number, dbPath: string): Promise<void>;
  dropHead(): Promise<number>;
  stats(): BackupStats;
  close(): Promise<void>;
  /** socket: only: the server compacts its own file (backup-compact); the server's answer as text */
  compactRemote?(): Promise<string>;
  /**
   * socket:/clnvault://: the same on a connection of its own, while the writes go on; null when the server
   * cannot take one (then compactRemote). Followed by refreshMetadata() between writes.
   */
  compactAside?(): Promise<string | null>;
  refreshMetadata?(): Promise<void>;
}

export interface HeaderWalkOptions {
  /**
   * On a backup with a damaged record in the middle, walk the intact entries before the first damaged
   * record instead of throwing (restore's explicit salvage mode).
   */
  beforeDamage?: boolean;
  /** start at the entry at this offset (one a walk visited) instead of the first entry */
  from?: number;
}

/**
 * What a header walk's visitor returns: false stops the walk (nothing else is read).
 */
export type HeaderVisitor = (h: EntryHeader) => boolean | void;

export interface BackupReader {
  readonly format: BackupFormat;
  readonly location: string;
  /**
   * Visits the header of every acknowledged entry, in file order, without keeping anything per entry:
   * a backup of any size is walked in bounded memory (docs/restore.md, "Memory"). Throws, before
   * visiting anything, when a record in the middle is damaged, unless `beforeDamage`. The visitor may
   * call read() on the header it is given; reading the entries of a walk in order is the fast path.
   */
  forEachHeader(visit: HeaderVisitor, opts?: HeaderWalkOptions): void;
  /** Reads the entry whose header is `h` (statements or a lazily copied snapshot). */
  read(h: EntryHeader): Entry;
  /** problems found while scanning (torn tail, orphans, corruption) */
  problems(): Problem[];
  stats(): BackupStats;
  close(): void;
  /**
   * The entries are about to be read in file order (a restore): an encrypted backup decrypts its records
   * in a worker thread ahead of the reads (src/crypto/decrypt-ahead.ts), when the process may use two CPUs
   * or `always`. Optional; nothing for a plain one.
   */
  decryptAhead?(opts?: { always?: boolean }): void;
}

/**
 * Every header in one array: one object per entry, so only for backups known to be small (tests, and
 * tools that print a few entries). Restore, verify, inspect and compaction walk instead.
 */
export function listHeaders(reader: BackupReader, opts: HeaderWalkOptions = {}): EntryHeader[] {
  const out: EntryHeader[] = [];
  reader.forEachHeader((h) => {
    out.push(h);
  }, opts);
  return out;
}
