import { rmSync } from 'node:fs';
import type { BackupWriter } from '../backends/backend.js';
import { backupPath, openReader, openWriter } from '../backends/open.js';
import { v2BackupId } from '../backends/file/backup-id.js';
import type { Metadata } from '../backends/socket/protocol.js';
import { isPragmaOnly, serialDiff } from '../engine/versions.js';

/**
 * One backup file served to socket clients: the file backend's writer (held for the server's life, so
 * no plugin or second server can write the same file) plus the reference's metadata (prev_version,
 * version_count), and the version rules the reference server never enforced. Operations run one at a
 * time (a snapshot arrives over many event-loop turns; nothing may interleave with it).
 */

export type Verdict = { ok: true; version: number } | { ok: false; version: number; why: string };

export class ServedBackup {
  private prev: number;
  private count: number;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly url: string,
    readonly cwd: string,
    readonly writer: BackupWriter,
  ) {
    const reader = openReader(url, cwd);
    try {
      // one walk, nothing kept per entry: the count and the version before the head
      let count = 0;
      let prev = 0;
      let last = 0;
      reader.forEachHeader((h) => {
        if (count > 0) prev = last;
        last = h.version;
        count++;
      });
      this.count = count;
      this.prev = count >= 2 ? prev : 0;
    } finally {
      reader.close();
    }
  }

  static open(url: string, cwd: string): ServedBackup {
    const b = new ServedBackup(url, cwd, openWriter(url, cwd));
    // the first change should already find reserved space
    b.topUp();
    return b;
  }

  /**
   * Tops up the zeros reserved after the newest record (a v2 file), queued after the operation that was
   * just answered, so it runs while the node is not waiting on us: an append into reserved space is
   * fdatasynced without a size change (no journal commit), about a third cheaper than one that grows the
   * file. Rare (once per 1-16 MiB of records); a failure (a full disk) only means appends grow the file.
   */
  topUp(): void {
    void this.exclusive(() => this.writer.prepare?.()).catch(() => undefined);
  }

  /** Runs `op` after every operation queued before it. */
  exclusive<T>(op: () => Promise<T> | T): Promise<T> {
    const run = this.queue.then(op, op);
    this.queue = run.catch(() => undefined);
    return run;
  }

  metadata(): Metadata {
    return { protocol: 1, version: this.writer.head(), prevVersion: this.prev, versionCount: this.count };
  }

  /**
   * A change is the next version, or (PRAGMA-only batches, which lightningd sends without bumping
   * data_version) the same version again. The first entry of an empty backup may have any version.
   */
  change(version: number, statements: string[]): Verdict {
    const head = this.writer.head();
    const d = serialDiff(version, head);
    const fits = this.writer.isEmpty() || d === 1 || (d === 0 && isPragmaOnly(statements));
    if (!fits) return { ok: false, version: head, why: this.ruleMessage('change', version, head) };
    this.writer.appendChange(version, statements);
    this.prev = head;
    this.count++;
    return { ok: true, version };
  }

  /** A snapshot (init, re-baseline) may move the backup forward by any amount, never back. */
  snapshot(version: number, dbPath: string): Verdict {
    const head = this.writer.head();
    if (!this.writer.isEmpty() && serialDiff(version, head) < 0) {
      return { ok: false, version: head, why: this.ruleMessage('snapshot', version, head) };
    }
    try {
      this.writer.appendSnapshotFile(version, dbPath);
    } finally {
      rmSync(dbPath, { force: true });
    }
    this.prev = head;
    this.count++;
    return { ok: true, version };
  }

  /**
   * The one legal rewind: the client's target is the version before the head, the head is a change
   * (a snapshot is committed state), and it was not rewound already. Done for real: the entry is
   * removed from the file (the reference only moved a pointer in memory and restored the stale entry).
   */
  rewind(target: number): Verdict {
    const head = this.writer.head();
    if (this.writer.isEmpty() || this.prev === 0 || target !== this.prev || this.writer.headIsSnapshot()) {
      const why = this.writer.headIsSnapshot()
        ? `cannot rewind to version ${target}: the newest entry (version ${head}) is a snapshot, which is committed state`
        : `cannot rewind to version ${target}: the backup is at ${head}, and only a rewind to ${this.prev || 'the previous version'} right after it was appended is allowed`;
      return { ok: false, version: head, why };
    }
    const after = this.writer.dropHead();
    this.count = this.writer.stats().entries;
    this.prev = 0;
    if (after !== target) {
      return { ok: false, version: after, why: `rewind to version ${target} left the backup at version ${after}` };
    }
    return { ok: true, version: after };
  }

  private ruleMessage(kind: string, version: number, head: number): string {
    const d = serialDiff(version, head);
    return d > 1
      ? `refused ${kind} version ${version}: the backup is at ${head}, so ${d - 1} version(s) would be missing (a gap)`
      : `refused ${kind} version ${version}: the backup is already at ${head} (a regression; is another node writing to this backup?)`;
  }

  /** The backup's id (a v2 file's; null for v1), read at each ask: a client compares it across reconnections. */
  backupId(): Buffer | null {
    return v2BackupId(backupPath(this.url, this.cwd));
  }

  close(): void {
    this.writer.close();
  }
}
