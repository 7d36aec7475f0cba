import { closeSync, fstatSync, openSync, statSync, unlinkSync } from 'node:fs';
import { cryptFor, type KeyLike } from '../../../crypto/backup-crypt.js';
import { encOverhead, type RecordCrypt } from '../../../crypto/records.js';
import type { BackupStats, BackupWriter } from '../../backend.js';
import { BackupError, type Problem } from '../../../engine/entries.js';
import { fsyncDir, openSnapshotSource } from '../fsutil.js';
import { isValidDataVersion } from '../../../engine/versions.js';
import {
  changePayloadLength,
  FILE_FLAG_ENCRYPTED,
  FILE_HEADER_LEN,
  RECORD_OVERHEAD,
  SEAL_RECORD_LEN,
  TYPE_SNAPSHOT,
  TYPE_SNAPSHOT_PART,
  V2Writer,
  RawRecordError,
  type RawSource,
  type RecordHeader,
} from '../v2.js';
import { WriterLock } from '../writer-lock.js';
import { borrowed, createSegment, dataBytes, sealOf, DEFAULT_SEGMENT_BYTES, discoverSegments, MIN_SEGMENT_BYTES, removeSegmentFile, segmentPath, type SegmentedWriterOptions, type SegmentFile, type SegmentHeader } from './layout.js';

/**
 * The writer of a v2 backup, segmented or not: appends go to the last segment through its V2Writer, so
 * the hot path is unchanged (one write, one fdatasync) plus one comparison against the size limit.
 */
export class SegmentedWriter implements BackupWriter {
  readonly format = 'v2' as const;
  private cur!: V2Writer;
  private segments: SegmentFile[] = [];
  private header!: SegmentHeader;
  /** record bytes held by every segment before the current one: global offset = local + this */
  private before = 0;
  private beforeEntries: number | null = null;
  private readonly repairs: Problem[] = [];
  private closed = false;
  /**
   * Set when an append failed: the segment's tail is then unknown, so the writer must neither go on in it
   * (its V2Writer refuses) nor start the next segment after it, which would bury a torn tail mid-backup.
   */
  private failed: Error | null = null;
  /** an encrypted backup's record cipher, shared by its segments: the chain runs across them */
  private crypt: RecordCrypt | null = null;

  private constructor(
    readonly location: string,
    private readonly lock: WriterLock,
    readonly segmentBytes: number,
    private readonly fullCheck: boolean,
    private readonly key: KeyLike | null,
    private readonly keyless = false,
  ) {}

  /** true when the backup is encrypted (its records are written through a RecordCrypt) */
  get encrypted(): boolean {
    return this.crypt !== null;
  }

  /** the fingerprint of the key an encrypted backup is written with */
  get keyFingerprint(): string | null {
    return this.crypt?.fingerprint ?? null;
  }

  /** Record bytes an encrypted record adds, at most (0 for a plain backup): size checks count them. */
  private get encExtra(): number {
    return this.crypt ? encOverhead(TYPE_SNAPSHOT) : 0;
  }

  static open(path: string, opts: SegmentedWriterOptions = {}): SegmentedWriter {
    const limit = opts.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    if (!Number.isSafeInteger(limit) || limit < MIN_SEGMENT_BYTES) throw new RangeError(`segment size must be an integer >= ${MIN_SEGMENT_BYTES}, not ${limit}`);
    // as a single-file writer always did: a backup that cannot be opened for writing (absent, read-only
    // mount) is reported as such, not as a lock that cannot be taken
    try {
      closeSync(openSync(path, 'r+'));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new BackupError(
        code === 'ENOENT' ? `${path} does not exist (create it with 'clnvault init')` : `cannot open ${path}: ${(e as Error).message}`,
        path,
      );
    }
    // nothing else is read before the lock is held: another writer could be starting a segment
    const lock = WriterLock.acquire(path);
    const w = new SegmentedWriter(path, lock, limit, opts.fullCheck ?? false, opts.key ?? null, opts.keyless === true && !opts.key);
    try {
      w.load();
    } catch (e) {
      lock.release();
      throw e;
    }
    return w;
  }

  /**
   * (Re)learns the set of segments and opens the last one. Earlier segments are not opened: they are
   * complete (the writer only moves on once a segment is durable) and only their sizes matter here.
   */
  private load(): void {
    let set: ReturnType<typeof discoverSegments>;
    try {
      set = discoverSegments(this.location, { allowTornLast: true });
    } catch (e) {
      // a damaged first file header: the v2 writer's open says what is wrong and what to do, as it always did
      if (e instanceof BackupError && e.path === this.location && (e.offset === 0 || e.offset === undefined)) {
        V2Writer.open(this.location, { fullCheck: this.fullCheck, crypt: this.crypt, keyless: this.keyless }, borrowed(this.lock)).close();
      }
      throw e;
    }
    if (set.tornLast) {
      // a crash while starting a segment: nothing was ever appended to it
      unlinkSync(set.tornLast);
      fsyncDir(set.tornLast);
      this.repairs.push({ kind: 'torn-tail', offset: 0, message: `removed ${set.tornLast}: a segment whose header never reached the disk` });
    }
    this.header = set.first;
    const flags = set.first.flags ?? 0;
    const enc = flags & FILE_FLAG_ENCRYPTED ? { kind: set.first.ext![0]!, fingerprint: set.first.ext!.subarray(4, 12) } : null;
    // once per writer: a reopen after compaction keeps the session (its counter goes on); a file swapped in
    // under another key (a rotation while this writer was open) is refused rather than written with the old one
    if (this.crypt && enc && this.crypt.fingerprint !== enc.fingerprint.toString('hex')) {
      throw new BackupError(`${this.location} is now encrypted with another key (fingerprint ${enc.fingerprint.toString('hex')}): reopen it with that key`, this.location, 52);
    }
    this.crypt ??= this.keyless && enc ? null : cryptFor(this.location, enc, set.first.backupId, this.key, true);
    this.segments = set.segments;
    this.before = 0;
    this.beforeEntries = null;
    const last = this.segments[this.segments.length - 1]!;
    const seal = sealOf(last.path);
    if (seal) {
      // the newest segment never ends with a seal: the segment it names was lost or not copied
      const missing = segmentPath(this.location, this.header.setId, seal.next);
      throw new BackupError(
        `${this.location}: segment ${seal.next} (${missing}) is missing: ${last.path} ends with a seal saying it follows. ` +
          `The backup is incomplete; refusing to write after the gap. Restore the missing file, or run 'clnvault inspect ${this.location}'`,
        missing,
      );
    }
    for (const s of this.segments.slice(0, -1)) this.before += dataBytes(s.path);
    this.openLast();
    // an empty last segment (a crash right after starting it) holds nothing: step back so head() and
    // dropHead() see the newest record without special cases
    while (this.cur.isEmpty() && this.segments.length > 1) this.removeLast();
  }

  private openLast(): void {
    const seg = this.segments[this.segments.length - 1]!;
    const w = V2Writer.open(seg.path, { fullCheck: this.fullCheck, crypt: this.crypt, keyless: this.keyless, reserveLimit: this.limit }, borrowed(this.lock));
    for (const p of w.repaired()) this.repairs.push({ ...p, offset: p.offset + this.before });
    this.cur = w;
  }

  /** Removes the (empty) last segment and continues in the previous one. */
  private removeLast(): void {
    const seg = this.segments.pop()!;
    this.cur.close();
    const prev = this.segments[this.segments.length - 1]!;
    removeSegmentFile(seg.path, prev.path);
    this.before -= dataBytes(prev.path);
    this.beforeEntries = null;
    this.openLast();
  }

  private startNext(): void {
    const index = this.segments.length + 1;
    const path = segmentPath(this.location, this.header.setId, index);
    createSegment(path, { ...this.header, index });
    const data = this.cur.endOffset() - FILE_HEADER_LEN;
    // only now that the next segment is durable: a sealed segment without a successor means files are missing
    if (this.sealing) this.cur.appendSeal({ next: index, setId: this.header.setId, backupId: this.header.backupId });
    this.before += data;
    if (this.beforeEntries !== null) this.beforeEntries += this.cur.stats().entries;
    this.cur.close();
    this.segments.push({ path, index });
    this.cur = V2Writer.open(path, { crypt: this.crypt, keyless: this.keyless, reserveLimit: this.limit }, borrowed(this.lock));
  }

  /**
   * Tops up the reserved space after the newest record (format 4), off the hook path: see V2Writer.prepare.
   * True when it wrote anything.
   */
  prepare(): boolean {
    if (this.closed || this.failed) return false;
    return this.cur.prepare();
  }

  /** Zero bytes reserved after the data in the newest segment (format 4). */
  reservedBytes(): number {
    return this.cur.reservedBytes();
  }

  /** A set written with seals (format 3): every segment but the newest ends with one. */
  private get sealing(): boolean {
    return this.header.version >= 3;
  }

  /** Room for records in a segment: its seal, written when the next one starts, must fit too. */
  private get limit(): number {
    return this.segmentBytes - (this.sealing ? SEAL_RECORD_LEN : 0);
  }

  private fits(bytes: number): boolean {
    return this.cur.endOffset() + bytes <= this.limit || this.cur.isEmpty();
  }

  /** Compaction swapped a new set in: switch to it under the lock this writer already holds. */
  reopen(): void {
    this.checkUsable();
    this.cur.close();
    try {
      this.load();
    } catch (e) {
      this.failed = e as Error;
      throw e;
    }
  }

  endOffset(): number {
    return this.before + this.cur.endOffset();
  }

  /** The segment files, in order, with their sizes (for `inspect` and tests). */
  segmentFiles(): { path: string; index: number; bytes: number }[] {
    return this.segments.map((s) => ({ ...s, bytes: s === this.segments[this.segments.length - 1] ? this.cur.endOffset() : statSync(s.path).size }));
  }

  head(): number {
    return this.cur.head();
  }

  isEmpty(): boolean {
    return this.cur.isEmpty();
  }

  headIsSnapshot(): boolean {
    return this.cur.headIsSnapshot();
  }

  repaired(): Problem[] {
    return this.repairs.slice();
  }

  private checkUsable(): void {
    if (this.closed) throw new BackupError(`${this.location}: the writer is closed`, this.location);
    if (this.failed) {
      throw new BackupError(`${this.location}: an earlier write failed (${this.failed.message}); reopen the backup before writing again`, this.location);
    }
  }

  appendChange(version: number, statements: readonly string[]): number {
    this.checkUsable();
    // UTF-8 never takes more than 3 bytes per UTF-16 unit: an exact size is computed only near the limit
    let bound = RECORD_OVERHEAD + this.encExtra + 4;
    for (let i = 0; i < statements.length; i++) bound += 4 + 3 * statements[i]!.length;
    try {
      if (!this.fits(bound) && !this.fits(RECORD_OVERHEAD + this.encExtra + changePayloadLength(statements))) this.startNext();
      return this.cur.appendChange(version, statements);
    } catch (e) {
      // a bad argument changed nothing on disk
      if (!(e instanceof RangeError)) this.failed = e as Error;
      throw e;
    }
  }

  /**
   * clnvault server's keyless append of a record the node sealed itself (V2Writer.appendRawRecord): in
   * the current segment, or a fresh one when it would not fit. The chain across segments is the node's.
   */
  appendRawRecord(h: RecordHeader, header: Buffer, source: RawSource): void {
    this.checkUsable();
    try {
      if (!this.fits(RECORD_OVERHEAD + h.length)) this.startNext();
      this.cur.appendRawRecord(h, header, source);
    } catch (e) {
      // a refused record changed nothing on disk
      if (!(e instanceof RawRecordError)) this.failed = e as Error;
      throw e;
    }
  }

  /** The newest record's chain link (V2Writer.tailLink); null for a plain backup. */
  tailLink(): Buffer | null {
    return this.cur.tailLink();
  }

  /**
   * A snapshot that fits in the room left in the current segment, or in a fresh one, is one record as
   * always. A bigger one is chunked: part records filling each segment to the limit, then the final
   * snapshot record with the last slice and the part count, so no segment file exceeds the limit
   * (docs/format-v2.md, "Chunked snapshots"). Durable on return.
   */
  appendSnapshotFile(version: number, dbPath: string): void {
    this.checkUsable();
    if (!isValidDataVersion(version)) throw new RangeError(`data_version must be an unsigned 32-bit integer, not ${version}`);
    const src = openSnapshotSource(dbPath, this.location);
    const segsBefore = this.segments.length;
    const repairsBefore = this.repairs.length;
    let parts = 0;
    try {
      const size = fstatSync(src).size;
      const fresh = this.limit - FILE_HEADER_LEN - RECORD_OVERHEAD - this.encExtra;
      // no tiny parts at the end of a nearly full segment
      const minPart = Math.min(1 << 20, Math.floor(this.limit / 8));
      let done = 0;
      for (;;) {
        const rest = size - done;
        const room = this.limit - this.cur.endOffset() - RECORD_OVERHEAD - this.encExtra;
        if (rest <= room) {
          this.cur.appendSnapshotSlice(TYPE_SNAPSHOT, version, parts, src, done, rest, dbPath);
          break;
        }
        // a snapshot that fits in a segment of its own is not chunked (as before chunking existed)
        if (!this.cur.isEmpty() && ((parts === 0 && rest <= fresh) || room < minPart)) {
          this.startNext();
          continue;
        }
        this.cur.appendSnapshotSlice(TYPE_SNAPSHOT_PART, version, 0, src, done, room, dbPath);
        done += room;
        parts++;
      }
    } catch (e) {
      // an unreadable source is cut back by the v2 writer, which stays usable; anything else may have torn the tail
      const sourceOnly = e instanceof BackupError && e.message.startsWith('cannot read the snapshot source');
      if (!(e instanceof RangeError) && !sourceOnly) this.failed = e as Error;
      else if (parts > 0) this.undoParts(segsBefore, repairsBefore, e as Error);
      throw e;
    } finally {
      closeSync(src);
    }
  }

  /** The source failed after some parts were written: remove them (and the segments started for them). */
  private undoParts(segsBefore: number, repairsBefore: number, cause: Error): void {
    try {
      this.cur.close();
      while (this.segments.length > segsBefore) {
        const seg = this.segments.pop()!;
        removeSegmentFile(seg.path, this.segments[this.segments.length - 1]!.path);
      }
      // the open cuts the remaining parts, now an unfinished snapshot at the end of the last segment
      this.load();
      this.repairs.length = repairsBefore;
    } catch (e) {
      this.failed = new Error(`${cause.message}; then removing the snapshot's parts failed: ${(e as Error).message}`);
    }
  }

  dropHead(): number {
    this.checkUsable();
    if (this.cur.isEmpty()) return 0;
    const v = this.cur.head();
    // refused by the v2 writer (a snapshot is never dropped), which stays usable
    if (this.cur.headIsSnapshot()) return this.cur.dropHead();
    try {
      this.cur.dropHead();
      // the head group (a change and its PRAGMA companion) may have been split by a segment boundary
      while (this.cur.isEmpty() && this.segments.length > 1) {
        this.removeLast();
        if (this.cur.isEmpty() || this.cur.headIsSnapshot() || this.cur.head() !== v) break;
        this.cur.dropHead();
      }
    } catch (e) {
      this.failed = e as Error;
      throw e;
    }
    return this.head();
  }

  stats(): BackupStats {
    const s = this.cur.stats();
    if (this.beforeEntries === null) {
      let n = 0;
      for (const seg of this.segments.slice(0, -1)) {
        // an earlier segment may end with parts whose final record is in the next one: keep them
        const w = V2Writer.open(seg.path, { keepParts: true, sealed: true, crypt: this.crypt, keyless: this.keyless }, borrowed(this.lock));
        try {
          n += w.stats().entries;
        } finally {
          w.close();
        }
      }
      this.beforeEntries = n;
    }
    return { format: 'v2', location: this.location, head: s.head, entries: this.beforeEntries + s.entries, bytes: this.endOffset() };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.cur.close();
    } finally {
      this.lock.release();
    }
  }
}
