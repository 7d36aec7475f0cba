/**
 * What a backup holds, independent of its on-disk format: a sequence of entries in file order.
 * A change is one db_write batch; a snapshot is a whole SQLite database at some data_version.
 */

export interface ChangeEntry {
  kind: 'change';
  /** data_version the node reported for this batch */
  version: number;
  /** byte offset of the entry's first byte in the backup (for error messages and inspect) */
  offset: number;
  statements: string[];
}

export interface SnapshotEntry {
  kind: 'snapshot';
  version: number;
  offset: number;
  /** size of the SQLite database in bytes */
  size: number;
  /** v2: how many records hold it (1; more for a snapshot chunked into part records) */
  parts?: number;
  /**
   * Copies the database bytes into a new file at `path` (created exclusively) and fsyncs it.
   * Streams in chunks so that memory does not grow with the snapshot.
   */
  writeTo(path: string): void;
}

export type Entry = ChangeEntry | SnapshotEntry;

/** A header-only view of an entry, enough to plan a restore without holding statements in memory. */
export interface EntryHeader {
  kind: 'change' | 'snapshot';
  version: number;
  offset: number;
  /** true when every statement is a PRAGMA (lightningd reports these without bumping data_version) */
  pragmaOnly: boolean;
}

export type BackupFormat = 'v1' | 'v2' | 'postgresql';

/** A problem found while reading a backup, always with the byte offset where it was found. */
export interface Problem {
  kind: 'torn-tail' | 'corrupt' | 'orphan';
  offset: number;
  message: string;
  /** torn-tail and orphan: how many bytes at `offset` are not part of the backup (a restore leaves them out) */
  bytes?: number;
  /**
   * torn-tail only: the last record's whole length is present and its header checksum holds, but its
   * payload's does not. An append cut by a crash can leave that, and so can a flipped byte in a backup's
   * newest record (its only one, after init): no reader can tell which, so the commands say so and stop.
   */
  suspect?: boolean;
}

export class BackupError extends Error {
  constructor(
    message: string,
    readonly path: string,
    readonly offset?: number,
  ) {
    super(message);
    this.name = 'BackupError';
  }
}
