import { closeSync, linkSync, openSync, readSync, renameSync, rmSync } from 'node:fs';
import type { BackupWriter } from '../backends/backend.js';
import { backupPath, openReader, openWriter } from '../backends/open.js';
import { v2BackupId } from '../backends/file/backup-id.js';
import { createV2, FILE_FLAG_ENCRYPTED, FILE_HEADER_LEN, isV2, RawRecordError, TYPE_CHANGE, TYPE_SNAPSHOT, type FileEncryption, type RawSource, type RecordHeader } from '../backends/file/v2.js';
import { FLAG_PRAGMA_ONLY } from '../backends/file/v2/codec.js';
import { SegmentedWriter } from '../backends/file/segments.js';
import { fsyncDir } from '../backends/file/fsutil.js';
import type { Metadata } from '../backends/socket/protocol.js';
import { isPragmaOnly, serialDiff } from '../engine/versions.js';
import { DEFAULT_COMPACTION } from '../compact/config.js';
import type { CompactOutcome, CompactStats } from '../compact/compact.js';
import { isReopenable } from '../compact/live.js';
import { ThreadFileGate } from '../compact/thread-gate.js';
import { compactingPath, historyPath, pruneHistory } from '../compact/files.js';
import { checkRawHeader } from '../backends/socket/sealed.js';
import { recordSeedOf } from '../backends/file/v2/codec.js';
import { SNAPSHOT_PREFIX_LEN } from '../crypto/records.js';
import { rebaseRefusal, writeRebasedFile } from './sealed-compact.js';

/**
 * One backup file served to socket clients: the file backend's writer (held for the server's life, so
 * no plugin or second server can write the same file) plus the reference's metadata (prev_version,
 * version_count), and the version rules the reference server never enforced. Operations run one at a
 * time (a snapshot arrives over many event-loop turns; nothing may interleave with it).
 */

/** `malformed`: refused for what was sent, not for a version rule (clnvault's own clients are told why) */
export type Verdict = { ok: true; version: number } | { ok: false; version: number; why: string; malformed?: boolean };

export class ServedBackup {
  private prev: number;
  private count: number;
  private queue: Promise<unknown> = Promise.resolve();
  private isEncrypted: boolean | null = null;
  private header: Buffer | null | undefined = undefined;
  /** set while a compaction runs (and after one that failed past its rename, so that every write is refused) */
  private gate: ThreadFileGate | null = null;
  /** set when a compaction by the node replaced the file and the writer could not follow: every record is refused */
  private failed: string | null = null;

  private constructor(
    readonly url: string,
    readonly cwd: string,
    private inner: BackupWriter,
  ) {
    const { count, prev } = countEntries(url, cwd);
    this.count = count;
    this.prev = prev;
  }

  /** What every operation writes through: the file's writer, or while a compaction runs, its gate (compact/live.ts). */
  private get writer(): BackupWriter {
    return this.gate?.writer ?? this.inner;
  }

  static open(url: string, cwd: string): ServedBackup {
    // keyless: an encrypted backup takes the records its node sealed, and nothing in clear (docs/remote.md)
    const writer = openWriter(url, cwd, { keyless: true });
    let b: ServedBackup;
    try {
      b = new ServedBackup(url, cwd, writer);
    } catch (e) {
      // a backup that cannot be read (damage) must not stay locked: the next connection tries again
      writer.close();
      throw e;
    }
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
    if (this.encrypted()) return { ok: false, version: head, why: PLAIN_INTO_ENCRYPTED, malformed: true };
    const refused = this.changeRule(version, isPragmaOnly(statements));
    if (refused) return refused;
    this.writer.appendChange(version, statements);
    this.prev = head;
    this.count++;
    return { ok: true, version };
  }

  /** A snapshot (init, re-baseline) may move the backup forward by any amount, never back. */
  snapshot(version: number, dbPath: string): Verdict {
    const head = this.writer.head();
    const refused = this.encrypted() ? { ok: false as const, version: head, why: PLAIN_INTO_ENCRYPTED, malformed: true } : this.snapshotRule(version);
    if (refused) {
      rmSync(dbPath, { force: true });
      return refused;
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

  private changeRule(version: number, pragmaOnly: boolean): Verdict | null {
    const head = this.writer.head();
    const d = serialDiff(version, head);
    if (this.writer.isEmpty() || d === 1 || (d === 0 && pragmaOnly)) return null;
    return { ok: false, version: head, why: this.ruleMessage('change', version, head) };
  }

  private snapshotRule(version: number): Verdict | null {
    const head = this.writer.head();
    if (this.writer.isEmpty() || serialDiff(version, head) >= 0) return null;
    return { ok: false, version: head, why: this.ruleMessage('snapshot', version, head) };
  }

  /** The backup's v2 file header (its first file's first 64 bytes); null for a v1 backup. Read once: only encrypt() changes it. */
  fileHeader(): Buffer | null {
    if (this.header === undefined) this.header = this.readFileHeader();
    return this.header;
  }

  private readFileHeader(): Buffer | null {
    if (this.writer.format !== 'v2') return null;
    const h = Buffer.alloc(FILE_HEADER_LEN);
    const fd = openSync(backupPath(this.url, this.cwd), 'r');
    try {
      if (readSync(fd, h, 0, FILE_HEADER_LEN, 0) !== FILE_HEADER_LEN || !isV2(h)) return null;
    } finally {
      closeSync(fd);
    }
    return h;
  }

  /** cached: asked for every CHANGE; only encrypt() changes it */
  encrypted(): boolean {
    if (this.isEncrypted === null) {
      const h = this.fileHeader();
      this.isEncrypted = h !== null && (h.readUInt32BE(12) & FILE_FLAG_ENCRYPTED) !== 0;
    }
    return this.isEncrypted;
  }

  /** The newest record's chain link, read without the key (null: plain). */
  tailLink(): Buffer | null {
    return rawWriter(this.inner)?.tailLink() ?? null;
  }

  /**
   * For a raw restore: the data bytes of the backup, how many files hold them (one file is served), and
   * when it is one, that file opened for reading, all taken at one moment: a compaction that swaps the
   * file in afterwards leaves the fd on the file these bytes describe. The caller closes the fd.
   */
  openRaw(): { bytes: number; files: number; fd: number | null } {
    return this.onCurrentFile(() => {
      const w = rawWriter(this.inner);
      const bytes = w?.endOffset() ?? 0;
      const files = w?.segmentFiles().length ?? 1;
      return { bytes, files, fd: files === 1 ? openSync(backupPath(this.url, this.cwd), 'r') : null };
    });
  }

  /**
   * A record the node sealed (clnvault:// with encryption): the version rules from its plaintext header
   * (a PRAGMA-only change may repeat the version; the flag is authenticated), then the keyless append.
   * A malformed record is refused with `malformed` set; the backup is unchanged.
   */
  record(h: RecordHeader, header: Buffer, source: RawSource): Verdict {
    const head = this.writer.head();
    if (this.failed !== null) return { ok: false, version: head, why: this.failed, malformed: true };
    const w = rawWriter(this.inner);
    if (w === null || !this.encrypted()) {
      return { ok: false, version: head, why: "this backup is not encrypted: it takes the plain protocol's CHANGE and SNAPSHOT, not sealed records", malformed: true };
    }
    const refused = h.type === TYPE_CHANGE ? this.changeRule(h.version, (h.flags & FLAG_PRAGMA_ONLY) !== 0) : this.snapshotRule(h.version);
    if (refused) return refused;
    try {
      w.appendRawRecord(h, header, source);
    } catch (e) {
      if (e instanceof RawRecordError) return { ok: false, version: head, why: e.message, malformed: true };
      throw e;
    }
    this.prev = head;
    this.count++;
    return { ok: true, version: h.version };
  }

  /**
   * Makes the node's empty backup an encrypted one under the key `enc` describes (init --encrypt through
   * the server): a new file header with the same backup id, renamed over the old one. Idempotent for the
   * same key; refused for a backup that holds entries or is encrypted under another key.
   */
  encrypt(enc: FileEncryption): { ok: true } | { ok: false; why: string } {
    const h = this.fileHeader();
    if (h === null) return { ok: false, why: 'the backup is in format v1, which cannot be encrypted; re-create the node with a v2 backup' };
    if (h.readUInt32BE(12) & FILE_FLAG_ENCRYPTED) {
      if (h.subarray(52, 60).equals(enc.fingerprint)) return { ok: true };
      return { ok: false, why: `the backup is already encrypted under another key (fingerprint ${h.subarray(52, 60).toString('hex')})` };
    }
    if (!this.writer.isEmpty()) {
      return { ok: false, why: `the backup holds ${this.count} plain entries; only an empty backup can become an encrypted one (re-create the node on the server)` };
    }
    const path = backupPath(this.url, this.cwd);
    const tmp = `${path}.encrypt-${process.pid}`;
    this.writer.close();
    try {
      rmSync(tmp, { force: true });
      createV2(tmp, enc, Buffer.from(h.subarray(16, 32)));
      renameSync(tmp, path);
      fsyncDir(path);
    } finally {
      rmSync(tmp, { force: true });
      this.inner = openWriter(this.url, this.cwd, { keyless: true });
      this.isEncrypted = null;
      this.header = undefined;
    }
    return { ok: true };
  }

  /**
   * COMPACT (the reference plugin's `backup-compact`, or clnvault's over `socket:`/`clnvault://`): the file
   * compacted online, as the plugin compacts a local file (compact/live.ts): a worker thread builds the
   * new file (a snapshot plus the newest entries; the previous file kept as a history copy; swapped only
   * when smaller) while this backup's writes go on through a gate, catches up with them and swaps the file
   * in under the gate's mutex. Not under exclusive(): a node writing on another connection is not held up,
   * and the server's other backups are served meanwhile. An encrypted backup is refused: the server has
   * no key to replay it (docs/remote.md). Answers the reference's statistics.
   */
  async compact(log: (level: 'info' | 'warn' | 'error', message: string) => void): Promise<{ ok: true; stats: CompactStats } | { ok: false; why: string }> {
    if (this.gate !== null) return { ok: false, why: 'a compaction of this backup is already running (or one failed after replacing the file: restart the server)' };
    if (this.encrypted()) {
      return {
        ok: false,
        why: "the backup is encrypted and the server has no key: the node compacts it (backup-compact with this server as the plugin's only destination), or 'clnvault compact --key-file K' on a copy of the server's file where the key is (docs/encryption.md)",
      };
    }
    const w = this.inner;
    if (!isReopenable(w)) return { ok: false, why: 'this backup type cannot be compacted' };
    const gate = new ThreadFileGate(w, log);
    this.gate = gate;
    let outcome: CompactOutcome | null = null;
    let failed: string | null = null;
    try {
      outcome = await gate.compact({ format: w.format, history: DEFAULT_COMPACTION.history, segmentBytes: gate.segmentBytes, onlyIfSmaller: true });
    } catch (e) {
      failed = (e as Error).message;
    } finally {
      await this.exclusive(() => {
        // the writer follows the name (a compaction that failed after its rename left a whole new file there)
        gate.enter();
        try {
          gate.sync();
        } finally {
          gate.leave();
        }
        // a failure after the rename that left the new file's durability unknown: the gate stays and refuses every write
        gate.checkWritable();
        this.gate = null;
        const { count, prev } = countEntries(this.url, this.cwd);
        this.count = count;
        this.prev = prev;
        this.header = undefined;
      }).catch((e: unknown) => {
        failed ??= (e as Error).message;
      });
    }
    if (failed !== null || outcome === null) return { ok: false, why: `the compaction failed: ${failed}` };
    return { ok: true, stats: outcome.stats };
  }

  /**
   * An encrypted backup compacted by its node (sealed-compact.ts): `header` and the `stored` payload bytes
   * in `payloadPath` are a chain-start snapshot of the head version that names the newest record's link.
   * The backup becomes a file of that one record, built beside it and renamed over it (the old file kept as
   * a history copy); the writer reopens it. Run under exclusive(): nothing is appended meanwhile.
   */
  rebaseSealed(header: Buffer, payloadPath: string, stored: number, log: (level: 'info' | 'warn', message: string) => void): { ok: true; stats: CompactStats } | { ok: false; why: string } {
    if (this.failed !== null) return { ok: false, why: this.failed };
    const fh = this.fileHeader();
    const w = rawWriter(this.inner);
    if (fh === null || w === null || !this.encrypted()) return { ok: false, why: 'this backup is not encrypted: the server compacts it itself (COMPACT)' };
    const files = w.segmentFiles().length;
    if (files > 1) return { ok: false, why: `the backup spans ${files} segment files: compact it where the key is ('clnvault compact --key-file K' on a copy of the server's files)` };
    if (w.isEmpty()) return { ok: false, why: 'the backup is empty: there is nothing to compact' };
    const h = checkRawHeader(header, recordSeedOf(fh));
    if (typeof h === 'string') return { ok: false, why: h };
    if (h.length !== stored) return { ok: false, why: `the record header states ${h.length} payload bytes, ${stored} came` };
    const prefix = Buffer.alloc(SNAPSHOT_PREFIX_LEN);
    const pfd = openSync(payloadPath, 'r');
    try {
      readSync(pfd, prefix, 0, prefix.length, 0);
    } finally {
      closeSync(pfd);
    }
    const why = rebaseRefusal(h, prefix, w.head(), this.tailLink(), TYPE_SNAPSHOT);
    if (why !== null) return { ok: false, why };
    const path = backupPath(this.url, this.cwd);
    const before = { backupsize: w.endOffset(), version_count: this.count };
    const tmp = compactingPath(path);
    rmSync(tmp, { force: true });
    let size: number;
    try {
      size = writeRebasedFile(tmp, fh, header, h, payloadPath, stored);
    } catch (e) {
      return { ok: false, why: (e as Error).message };
    }
    try {
      // the old inode keeps this name after the rename: the backup as it was, for --to-version
      linkSync(path, historyPath(path, Date.now()));
    } catch (e) {
      log('warn', `cannot keep the old backup ${path} as history (${(e as Error).message}); compacting without`);
    }
    renameSync(tmp, path);
    try {
      fsyncDir(path);
      w.reopen();
    } catch (e) {
      this.failed = `the compacted backup replaced ${path}, then: ${(e as Error).message}; no record is taken any more: restart the server (it checks the backup at start)`;
      return { ok: false, why: this.failed };
    }
    pruneHistory(path, DEFAULT_COMPACTION.history);
    const { count, prev } = countEntries(this.url, this.cwd);
    this.count = count;
    this.prev = prev;
    this.header = undefined;
    return { ok: true, stats: { before, after: { version_count: count, backupsize: size } } };
  }

  /**
   * Runs `fn` on the file's writer where the backup's name points now: under the gate's mutex while a
   * compaction runs, so that no swap happens in between (an fd opened in `fn` keeps that file).
   */
  private onCurrentFile<T>(fn: () => T): T {
    const g = this.gate;
    if (g === null) return fn();
    g.enter();
    try {
      g.sync();
      return fn();
    } finally {
      g.leave();
    }
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

const PLAIN_INTO_ENCRYPTED =
  'this backup is encrypted: it takes only records the node encrypted itself (clnvault:// with "encrypt" in the node\'s backup.lock), never statements in clear';

/** One walk, nothing kept per entry: the entry count and the version before the head (the reference's metadata). */
function countEntries(url: string, cwd: string): { count: number; prev: number } {
  const reader = openReader(url, cwd);
  try {
    let count = 0;
    let prev = 0;
    let last = 0;
    reader.forEachHeader((h) => {
      if (count > 0) prev = last;
      last = h.version;
      count++;
    });
    return { count, prev: count >= 2 ? prev : 0 };
  } finally {
    reader.close();
  }
}

/** The keyless v2 writer behind a served backup (SegmentedWriter), or null for a v1 backup. */
function rawWriter(w: BackupWriter): SegmentedWriter | null {
  return w instanceof SegmentedWriter ? w : null;
}
