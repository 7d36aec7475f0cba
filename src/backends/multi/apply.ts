import { rmSync } from 'node:fs';
import type { BackupWriter } from '../backend.js';
import { serialDiff } from '../../engine/versions.js';

/**
 * The version rules one destination of a set applies to each write it is handed, whether it is written
 * on the main thread (a local file) or in a lane (lane.ts). Each destination is checked against its own
 * head, so a destination that missed writes is never appended to across the hole.
 */

/** The destination lacks writes before this one: only a snapshot can bring it back. */
export class GapError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GapError';
  }
}

/** The destination holds something this node never sent it (a newer or foreign backup): never trusted. */
export class ForeignError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ForeignError';
  }
}

/**
 * Stores change `version` on `w`; returns the bytes added. A non-repeat change at version v proves the
 * node's committed state is v-1, so an entry v the destination already holds was never committed (a
 * refused write of an earlier run, or this very write landed before a connection broke): it is dropped
 * and stored again, the same rewind the single-destination hook does.
 */
export function applyChange(w: BackupWriter, version: number, statements: readonly string[], repeat: boolean): number {
  // an empty destination is at version 0, where a node without a database starts too
  let head = w.isEmpty() ? 0 : w.head();
  if (!repeat && head === version && !w.isEmpty()) {
    if (w.headIsSnapshot()) {
      throw new ForeignError(
        `${w.location} holds a snapshot at version ${version}, but the node is only at ${version - 1}: this is not the backup the node wrote`,
      );
    }
    head = w.dropHead();
  }
  const d = serialDiff(version, head);
  // a repeat (PRAGMA-only batch at the committed version) belongs right on top of that version, nowhere else
  if (repeat ? d === 0 : d === 1) return w.appendChange(version, statements);
  if (repeat && d === 1) throw new GapError(`${w.location} is at version ${head}, one write behind version ${version}`);
  if (d > 1) throw new GapError(`${w.location} is at version ${head}, ${d - 1} write(s) behind version ${version}`);
  throw new ForeignError(
    `${w.location} is at version ${head}, ahead of the node's version ${version - 1}: it was replaced by another backup (or written by another node)`,
  );
}

/** Stores a snapshot of the node at `version`; refuses on a destination already ahead of it. */
export function applySnapshot(w: BackupWriter, version: number, path: string): void {
  // one entry ahead and not a snapshot: a write the node never committed (refused in an earlier run)
  if (!w.isEmpty() && serialDiff(version, w.head()) === -1 && !w.headIsSnapshot()) w.dropHead();
  if (!w.isEmpty() && serialDiff(version, w.head()) < 0) {
    throw new ForeignError(
      `${w.location} is at version ${w.head()}, ahead of the node's snapshot at ${version}: it was replaced by another backup (or written by another node)`,
    );
  }
  w.appendSnapshotFile(version, path);
}

export function removeQuietly(path: string): void {
  rmSync(path, { force: true });
}
