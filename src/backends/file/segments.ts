import { closeSync, existsSync, fdatasyncSync, fstatSync, ftruncateSync, openSync, readdirSync, readFileSync, readSync, statSync, unlinkSync } from 'node:fs';
import { cryptFor, type KeyLike } from '../../crypto/backup-crypt.js';
import { encOverhead, type RecordCrypt } from '../../crypto/records.js';
import { randomBytes } from '../../engine/random.js';
import { basename, dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import type { BackupReader, BackupStats, BackupWriter, HeaderVisitor, HeaderWalkOptions } from '../backend.js';
import { BackupError, type Entry, type EntryHeader, type Problem } from '../../engine/entries.js';
import { lockPath } from '../../engine/backup-lock.js';
import { fsyncDir, writeFully } from './fsutil.js';
import { isValidDataVersion } from '../../engine/versions.js';
import { Planner } from '../../engine/plan.js';
import {
  changePayloadLength,
  FILE_FLAG_ENCRYPTED,
  damagedError,
  encodeFileHeader,
  FILE_HEADER_LEN,
  Grouper,
  isV2,
  PREALLOC_VERSION,
  recordSeedOf,
  FORMAT_VERSION,
  RECORD_OVERHEAD,
  SEAL_RECORD_LEN,
  sealAtEnd,
  snapshotEntry,
  TYPE_SNAPSHOT,
  type Seal,
  TYPE_SNAPSHOT_PART,
  V2Reader,
  V2Writer,
  RawRecordError,
  type RawSource,
  type RecordHeader,
  WalkGrouper,
  type WalkedEntry,
  type FileEncryption,
  type RecordInfo,
} from './v2.js';
import { WriterLock } from './writer-lock.js';

/**
 * Segments: a v2 backup split into files no larger than a configured size, so it fits on filesystems
 * with a file size limit (FAT32: 4 GiB - 1). Layout and rules: docs/format-v2.md, "Segments".
 *
 * The backup URL names the first segment, an ordinary v2 file. Further segments are
 * `<b>.seg-<set>-<index>` (set: 8 hex digits, index: 6 decimal digits from 000002), each an ordinary v2
 * file whose header carries the same backup id, the same set id and its index. The set id is what makes
 * compaction's swap atomic: the compacted backup gets a new set id, so renaming its first file over `<b>`
 * switches the whole set at once and the old extra segments simply stop belonging to the backup.
 *
 * Offsets: a segmented backup reads as one virtual v2 file, the first segment followed by every later
 * segment without its 64-byte header. A record at local offset L of a segment whose predecessors hold
 * P bytes of records has the global offset L + P: unique, ordered, and equal to the local offset for a
 * single-file backup, so nothing that stores or compares offsets needs to know about segments.
 */

/** Just under FAT32's 4 GiB - 1, with room for one more big record before the limit is noticed. */
export const DEFAULT_SEGMENT_BYTES = 3_758_096_384;
/** Below this every record would get a segment of its own. */
export const MIN_SEGMENT_BYTES = 4096;

/** Header bytes 40..47, reserved (zero) in files from before segments: the first file of a set reads as index 0. */
const SEG_INDEX_AT = 40;
const SEG_SET_AT = 44;

export function segmentPath(base: string, setId: number, index: number): string {
  return `${base}.seg-${setId.toString(16).padStart(8, '0')}-${String(index).padStart(6, '0')}`;
}

function hex8(n: number): string {
  return n.toString(16).padStart(8, '0');
}

export interface SegmentHeader {
  backupId: Buffer;
  createdMs: number;
  /** 0 in a first segment (and in every file written before segments existed), >= 2 in a later one */
  index: number;
  setId: number;
  /** format version: 3 (segments sealed) for new backups, 2 for a set an older clnvault started */
  version: number;
  /** file flags and bytes 48..59 (an encrypted backup's key description): every segment repeats them */
  flags?: number;
  ext?: Buffer;
}

export function encodeSegmentHeader(h: SegmentHeader): Buffer {
  const b = encodeFileHeader(h.backupId, h.createdMs);
  // a set keeps one version: a version-2 set goes on without seals, as it was started
  b.writeUInt16BE(h.version, 8);
  if (h.flags !== undefined) b.writeUInt32BE(h.flags, 12);
  if (h.ext) h.ext.copy(b, 48);
  b.writeUInt32BE(h.index, SEG_INDEX_AT);
  b.writeUInt32BE(h.setId, SEG_SET_AT);
  b.writeUInt32BE(crc32(b.subarray(0, 60)), 60);
  return b;
}

/** A first-segment header with a fresh set id: what compaction writes, so its swap replaces the whole set. */
export function withNewSetId(header: Buffer): Buffer {
  const b = Buffer.from(header);
  let id = 0;
  while (id === 0 || id === b.readUInt32BE(SEG_SET_AT)) id = randomBytes(4).readUInt32BE(0);
  // a new set is written with seals (this version's rules) even when the old one was not
  b.writeUInt16BE(FORMAT_VERSION, 8);
  b.writeUInt32BE(0, SEG_INDEX_AT);
  b.writeUInt32BE(id, SEG_SET_AT);
  b.writeUInt32BE(crc32(b.subarray(0, 60)), 60);
  return b;
}

/**
 * The segment fields of a file header. Only what segments need is checked here (magic, checksum); the
 * v2 reader and writer check the rest when they open the file.
 */
export function readSegmentHeader(path: string): SegmentHeader {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new BackupError(code === 'ENOENT' ? `${path} does not exist` : `cannot open ${path}: ${(e as Error).message}`, path);
  }
  try {
    const h = Buffer.alloc(FILE_HEADER_LEN);
    const n = readSync(fd, h, 0, FILE_HEADER_LEN, 0);
    if (n < FILE_HEADER_LEN || !isV2(h) || crc32(h.subarray(0, 60)) !== h.readUInt32BE(60)) {
      throw new BackupError(`${path} does not start with a valid clnvault v2 file header (${n} header bytes read)`, path, 0);
    }
    return {
      backupId: Buffer.from(h.subarray(16, 32)),
      createdMs: h.readUInt32BE(32) * 0x1_0000_0000 + h.readUInt32BE(36),
      index: h.readUInt32BE(SEG_INDEX_AT),
      setId: h.readUInt32BE(SEG_SET_AT),
      version: h.readUInt16BE(8),
      flags: h.readUInt32BE(12),
      ext: Buffer.from(h.subarray(48, 60)),
    };
  } finally {
    closeSync(fd);
  }
}

/** Every `<b>.seg-*` file beside `base`, with the set and index its name claims. */
export function listSegmentFiles(base: string): { path: string; setId: number; index: number }[] {
  const prefix = `${basename(base)}.seg-`;
  let names: string[];
  try {
    names = readdirSync(dirname(base));
  } catch {
    return [];
  }
  const out: { path: string; setId: number; index: number }[] = [];
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    const m = /^([0-9a-f]{8})-(\d{6})$/.exec(n.slice(prefix.length));
    if (!m) continue;
    out.push({ path: join(dirname(base), n), setId: parseInt(m[1]!, 16), index: Number(m[2]) });
  }
  return out.sort((a, b) => a.setId - b.setId || a.index - b.index);
}

export interface SegmentFile {
  path: string;
  /** 1 for the first segment (the file the URL names) */
  index: number;
}

export interface SegmentSet {
  first: SegmentHeader;
  segments: SegmentFile[];
}

/**
 * The segments of the backup `base`, in order, each checked to belong to it. A gap, a file of another
 * backup or a file claiming another index is refused: reading past it would silently lose records or
 * mix two backups. `allowTornLast`: the writer's open, where a last segment whose header never reached
 * the disk (a crash while starting it, before anything was appended) is a leftover, not damage.
 */
export function discoverSegments(
  base: string,
  opts: { allowTornLast?: boolean; lenient?: boolean } = {},
): SegmentSet & { tornLast: string | null; gap: { missing: string; later: string } | null } {
  const first = readSegmentHeader(base);
  if (first.index !== 0) {
    throw new BackupError(
      `${base} is segment ${first.index} of a segmented backup, not its first file; give the URL of the first file (without .seg-…)`,
      base,
      SEG_INDEX_AT,
    );
  }
  const mine = listSegmentFiles(base).filter((f) => f.setId === first.setId);
  const segments: SegmentFile[] = [{ path: base, index: 1 }];
  let tornLast: string | null = null;
  let gap: { missing: string; later: string } | null = null;
  for (let i = 0; i < mine.length; i++) {
    const f = mine[i]!;
    const want = segments.length + 1;
    if (f.index !== want) {
      // a reader reports it as damage and reads what precedes it (a restore then refuses, or stops there when asked)
      if (opts.lenient) {
        gap = { missing: segmentPath(base, first.setId, want), later: f.path };
        break;
      }
      throw new BackupError(
        `${base}: segment ${want} (${segmentPath(base, first.setId, want)}) is missing, but ${f.path} exists: the backup is ` +
          `incomplete and cannot be read past segment ${want - 1}. Restore the missing file, or run 'clnvault verify'`,
        f.path,
      );
    }
    let h: SegmentHeader;
    try {
      h = readSegmentHeader(f.path);
    } catch (e) {
      if (opts.allowTornLast && i === mine.length - 1 && statSync(f.path).size <= FILE_HEADER_LEN) {
        tornLast = f.path;
        break;
      }
      throw e;
    }
    if (!h.backupId.equals(first.backupId)) {
      throw new BackupError(
        `${f.path} belongs to another backup (backup id ${h.backupId.toString('hex')}, not ${first.backupId.toString('hex')} of ${base}); ` +
          `move it away: it is not a segment of this backup`,
        f.path,
        16,
      );
    }
    if (h.setId !== first.setId || h.index !== want) {
      throw new BackupError(
        `${f.path}: its header says segment ${h.index} of set ${hex8(h.setId)}, but its name says segment ${want} of set ${hex8(first.setId)}: ` +
          `the file was renamed or copied from elsewhere; it is not used`,
        f.path,
        SEG_INDEX_AT,
      );
    }
    segments.push({ path: f.path, index: want });
  }
  return { first, segments, tornLast, gap };
}

/** The seal at the end of segment file `path` (O(1)), or null. */
export function sealOf(path: string): Seal | null {
  const fd = openSync(path, 'r');
  try {
    return sealAtEnd(fd, fstatSync(fd).size, seedOfFd(fd));
  } finally {
    closeSync(fd);
  }
}

/** The record header CRC seed of the open file `fd` (recordSeedOf its header; 0 for a header that cannot be read). */
function seedOfFd(fd: number): number {
  const h = Buffer.alloc(FILE_HEADER_LEN);
  if (readSync(fd, h, 0, FILE_HEADER_LEN, 0) !== FILE_HEADER_LEN || !isV2(h)) return 0;
  return recordSeedOf(h);
}

/** Bytes of records in segment file `path`: its size without the header and without a seal. */
function dataBytes(path: string): number {
  return statSync(path).size - FILE_HEADER_LEN - (sealOf(path) ? SEAL_RECORD_LEN : 0);
}

/**
 * Takes the seal off the end of `path` (durably): its successor is about to be removed, and a sealed
 * segment without a successor would read as a backup with files missing.
 */
function unseal(path: string): void {
  const fd = openSync(path, 'r+');
  try {
    const size = fstatSync(fd).size;
    if (!sealAtEnd(fd, size, seedOfFd(fd))) return;
    ftruncateSync(fd, size - SEAL_RECORD_LEN);
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Removes the last segment file `path` of a set whose previous segment is `prev`, in an order where a
 * crash at any step leaves a readable set: its records go first (an empty last segment after a sealed
 * one is the normal state right after a roll-over), then the seal of `prev` (an unsealed segment followed
 * by an empty one is a roll-over that never completed), then the file.
 */
function removeSegmentFile(path: string, prev: string): void {
  const fd = openSync(path, 'r+');
  try {
    if (fstatSync(fd).size > FILE_HEADER_LEN) {
      ftruncateSync(fd, FILE_HEADER_LEN);
      fdatasyncSync(fd);
    }
  } finally {
    closeSync(fd);
  }
  unseal(prev);
  unlinkSync(path);
  fsyncDir(path);
}

/** Starts segment `index`: exclusive create, header, fdatasync, then the directory entry made durable. */
function createSegment(path: string, header: SegmentHeader): void {
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (e) {
    throw new BackupError(`cannot create the next segment ${path}: ${(e as Error).message}`, path);
  }
  try {
    writeFully(fd, encodeSegmentHeader(header), 0);
    fdatasyncSync(fd);
  } catch (e) {
    // a file without its header must not stay: readers would take it for the next segment (ENOSPC, EIO)
    closeSync(fd);
    try {
      unlinkSync(path);
      fsyncDir(path);
    } catch {
      // what is left is a last segment holding no record, which every reader and the writer pass over
    }
    throw e;
  }
  closeSync(fd);
  fsyncDir(path);
}

/** `"segment_bytes"` from `dir/backup.lock`, or the default; a bad value is reported and replaced, never fatal. */
export function readSegmentBytes(dir: string): { segmentBytes: number; problem: string | null } {
  let raw: unknown;
  try {
    raw = (JSON.parse(readFileSync(lockPath(dir), 'utf8')) as Record<string, unknown>).segment_bytes;
  } catch {
    return { segmentBytes: DEFAULT_SEGMENT_BYTES, problem: null };
  }
  if (raw === undefined) return { segmentBytes: DEFAULT_SEGMENT_BYTES, problem: null };
  if (typeof raw !== 'number' || !Number.isSafeInteger(raw) || raw < MIN_SEGMENT_BYTES) {
    return {
      segmentBytes: DEFAULT_SEGMENT_BYTES,
      problem: `backup.lock: segment_bytes must be an integer >= ${MIN_SEGMENT_BYTES}; using the default ${DEFAULT_SEGMENT_BYTES}`,
    };
  }
  return { segmentBytes: raw, problem: null };
}

export function parseSegmentBytes(text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < MIN_SEGMENT_BYTES) throw new RangeError(`--segment-bytes must be a whole number >= ${MIN_SEGMENT_BYTES}, not ${text}`);
  return n;
}

/**
 * Writers of the segment files share the backup's one lock (`<b>.writer`): each segment's V2Writer gets
 * a handle whose release() does nothing, so closing a finished segment never lets another writer in.
 */
function borrowed(lock: WriterLock): WriterLock {
  const b = Object.create(lock) as WriterLock;
  b.release = () => undefined;
  return b;
}

export interface SegmentedWriterOptions {
  segmentBytes?: number;
  fullCheck?: boolean;
  /** the key of an encrypted backup (required for one, refused for a plain one) */
  key?: KeyLike | null;
  /** clnvault server: an encrypted backup held without its key takes only ready-made records (appendRawRecord) */
  keyless?: boolean;
}

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
    let src: number;
    try {
      src = openSync(dbPath, 'r');
    } catch (e) {
      throw new BackupError(`cannot read the snapshot source ${dbPath}: ${(e as Error).message}`, this.location);
    }
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

/**
 * Reads a v2 backup across its segments: one V2Reader per segment, offsets made global. Errors keep
 * naming the segment file and the offset inside it (the V2Reader of that file produces them).
 */
export class SegmentedReader implements BackupReader {
  readonly format = 'v2' as const;
  /** the entry the current walk last visited (global offsets in its header) */
  private lastWalked: WalkedEntry | null = null;

  private constructor(
    readonly location: string,
    private readonly readers: V2Reader[],
    /** global offset of each segment's first record minus FILE_HEADER_LEN */
    private readonly bases: number[],
    private readonly sizes: number[],
    readonly backupId: Buffer,
    readonly createdMs: number,
    /** a chunked snapshot's parts may be spread over several segments: records are grouped across them */
    private readonly grouped: { entries: number; head: number; corrupt: Problem[]; dangling: Problem | null; planner: Planner },
    /** a last segment file without its header, passed over (reported as a torn tail) */
    private readonly tornLast: string | null = null,
    /** a segment missing, unsealed or sealed for another set: damage of the set, not of one file */
    private readonly setProblems: Problem[] = [],
  ) {}

  static open(path: string): SegmentedReader {
    // the writer's rule: a last segment whose header never reached the disk holds no record (a crash or a
    // full disk while it was being started); it is passed over, not taken for damage. A gap in the names
    // is damage, reported with what precedes it readable (lenient)
    const set = discoverSegments(path, { allowTornLast: true, lenient: true });
    const segs = set.segments.slice();
    const setProblems: Problem[] = [];
    const readers: V2Reader[] = [];
    const bases: number[] = [];
    const sizes: number[] = [];
    // records are grouped across the segments as each segment's scan goes, so nothing per record is kept
    const g = new Grouper();
    // planned on the way, as V2Reader does: the entries before the first damage in any segment
    const planner = new Planner();
    let damaged = false;
    let entries = 0;
    let head = 0;
    try {
      // a roll-over that never completed (the next segment is created before the previous one is sealed):
      // an empty newest segment after an unsealed one holds nothing and is not part of the backup
      const n = segs.length;
      if (n > 1 && statSync(segs[n - 1]!.path).size === FILE_HEADER_LEN && !sealOf(segs[n - 2]!.path)) segs.pop();
      const sealedSet = set.first.version >= 3;
      let base = 0;
      for (let i = 0; i < segs.length; i++) {
        const seg = segs[i]!;
        const b = base;
        const r = V2Reader.open(seg.path, (rec, damagedBefore) => {
          const e = g.push({ ...rec, offset: rec.offset + b });
          if (e) {
            entries++;
            head = e.version;
            damaged ||= damagedBefore || g.corrupt.length > 0;
            if (!damaged) planner.push(e);
          }
        });
        if (r.rawProblems().some((p) => p.kind === 'corrupt')) damaged = true;
        readers.push(r);
        bases.push(base);
        // a seal is not data: walks, sizes and global offsets leave it out
        sizes.push(r.dataEnd);
        if (i < segs.length - 1) {
          const torn = r.rawProblems().find((p) => p.kind === 'torn-tail');
          if (torn) {
            // the writer only starts a segment once the previous one is complete and durable
            throw new BackupError(
              `${seg.path} is damaged: its end is cut (${torn.message}), yet later segments follow: records are missing. ` +
                `Run 'clnvault verify ${path}'`,
              seg.path,
              torn.offset,
            );
          }
          const s = r.seal;
          if (sealedSet && !s) {
            setProblems.push({
              kind: 'corrupt',
              offset: base + r.dataEnd,
              message:
                `${seg.path} does not end with its seal, yet segment ${i + 2} (${segs[i + 1]!.path}) follows: its end is missing ` +
                `(cut, or replaced by an older copy of the file)`,
            });
          } else if (s && (s.next !== i + 2 || s.setId !== set.first.setId || !s.backupId.equals(set.first.backupId))) {
            setProblems.push({
              kind: 'corrupt',
              offset: base + r.dataEnd,
              message: `${seg.path} ends with the seal of another set or backup (segment ${s.next} of set ${hex8(s.setId)} follows it, not segment ${i + 2} of set ${hex8(set.first.setId)})`,
            });
          }
        }
        base += r.dataEnd - FILE_HEADER_LEN;
      }
      // where the records of the first missing segment would start (global offset): everything before it reads
      const end = base + FILE_HEADER_LEN;
      const lastSeg = segs[segs.length - 1]!;
      const lastSeal = readers[readers.length - 1]!.seal;
      const advice =
        `the backup is incomplete: restore refuses it, or restores what precedes the gap with --stop-at-damage. ` +
        `Find the missing file(s) (a backup is ${basename(path)} and every ${basename(path)}.seg-* file beside it) and copy them back`;
      if (set.gap) {
        setProblems.push({ kind: 'corrupt', offset: end, message: `segment ${segs.length + 1} (${set.gap.missing}) is missing, but ${set.gap.later} exists: ${advice}` });
      } else if (lastSeal) {
        const missing = segmentPath(path, set.first.setId, lastSeal.next);
        setProblems.push({ kind: 'corrupt', offset: end, message: `segment ${lastSeal.next} (${missing}) is missing: ${lastSeg.path} ends with a seal saying it follows; ${advice}` });
      }
    } catch (e) {
      for (const r of readers) r.close();
      throw e;
    }
    return new SegmentedReader(path, readers, bases, sizes, set.first.backupId, set.first.createdMs, { entries, head, corrupt: g.corrupt, dangling: g.dangling(), planner }, set.tornLast, setProblems);
  }

  get segmentCount(): number {
    return this.readers.length;
  }

  /** what the first file's header says about the key of an encrypted backup; null for a plain one */
  get encryption(): FileEncryption | null {
    return this.readers[0]!.encryption;
  }

  setCrypt(crypt: RecordCrypt | null): void {
    for (const r of this.readers) r.setCrypt(crypt);
  }

  /** Each segment's reader decrypts ahead once the restore reaches it (V2Reader.decryptAhead). */
  decryptAhead(opts: { always?: boolean } = {}): void {
    for (const r of this.readers) r.decryptAhead(opts);
  }

  /** Change records whose plaintext a decrypting worker gave, over the segments. */
  get decryptedAhead(): number {
    return this.readers.reduce((n, r) => n + r.decryptedAhead, 0);
  }

  /** Every data record across the segments in order (global offsets), up to the first damage. */
  forEachRecord(visit: (reader: V2Reader, rec: RecordInfo, offset: number) => void): void {
    const d = this.damage();
    const stop = d.length > 0 ? d[0]!.offset : Infinity;
    for (let i = 0; i < this.readers.length; i++) {
      const base = this.bases[i]!;
      if (base + FILE_HEADER_LEN >= stop) break;
      const r = this.readers[i]!;
      r.walkRecords(FILE_HEADER_LEN, Math.min(this.sizes[i]!, stop - base), (rec) => {
        visit(r, rec, rec.offset + base);
        return true;
      });
    }
  }

  firstDamage(): number | null {
    const d = this.damage();
    return d.length > 0 ? d[0]!.offset : null;
  }

  segmentFiles(): { path: string; index: number; bytes: number }[] {
    return this.readers.map((r, i) => ({ path: r.location, index: i + 1, bytes: this.sizes[i]! }));
  }

  /** Zero bytes reserved after the data in the newest segment (format 4): not data. */
  get reservedBytes(): number {
    return this.readers[this.readers.length - 1]!.reservedBytes;
  }

  get recordsValidated(): number {
    return this.readers.reduce((n, r) => n + r.recordsValidated, 0);
  }

  /** Damage in the records (global offsets), first the segments' own, then badly grouped parts. */
  private damage(): Problem[] {
    const out: Problem[] = [];
    this.readers.forEach((r, i) => {
      for (const p of r.rawProblems()) if (p.kind === 'corrupt') out.push({ ...p, offset: p.offset + this.bases[i]! });
    });
    out.push(...this.grouped.corrupt);
    out.push(...this.setProblems);
    return out.sort((a, b) => a.offset - b.offset);
  }

  private end(): number {
    const last = this.readers.length - 1;
    return this.grouped.dangling ? this.grouped.dangling.offset : this.bases[last]! + this.sizes[last]!;
  }

  /** The plan the open scan made (what planBackup would compute with a walk); throws on damage unless beforeDamage. */
  plannedAtOpen(opts: { beforeDamage?: boolean } = {}): Planner {
    this.refuseDamage(opts);
    return this.grouped.planner;
  }

  private refuseDamage(opts: { beforeDamage?: boolean }): Problem[] {
    const bad = this.damage();
    if (bad.length > 0 && !opts.beforeDamage) {
      // damage inside a segment is reported by that segment's reader: its file and local offset
      for (const r of this.readers) {
        const local = r.rawProblems().filter((p) => p.kind === 'corrupt');
        if (local.length > 0) throw damagedError(r.location, local);
      }
      throw damagedError(this.location, bad);
    }
    return bad;
  }

  forEachHeader(visit: HeaderVisitor, opts: HeaderWalkOptions = {}): void {
    const bad = this.refuseDamage(opts);
    // salvage stops at the first damage: nothing after it may be replayed
    const stop = bad.length > 0 ? Math.min(this.end(), bad[0]!.offset) : this.end();
    this.walk(opts.from ?? FILE_HEADER_LEN, stop, (e) => {
      this.lastWalked = e;
      return visit(e.header) !== false;
    });
  }

  /** Walks the entries from global offset `from` up to `stop`, grouping records across segment boundaries. */
  private walk(from: number, stop: number, visit: (e: WalkedEntry) => boolean): void {
    const g = new WalkGrouper(
      (o, why) =>
        new BackupError(`${this.location}: the record at offset ${o} is not what the scan found (${why}): the file changed since it was opened, or that offset is not an entry`, this.location, o),
    );
    let i = this.readers.length - 1;
    while (i > 0 && this.bases[i]! + FILE_HEADER_LEN > from) i--;
    let local = from - this.bases[i]!;
    for (; i < this.readers.length; i++) {
      const base = this.bases[i]!;
      if (base + FILE_HEADER_LEN >= stop) break;
      const r = this.readers[i]!;
      let go = true;
      r.walkRecords(local, Math.min(this.sizes[i]!, stop - base), (rec) => {
        const e = g.push(r, rec, rec.offset + base);
        if (e !== null) go = visit(e);
        return go;
      });
      if (!go) return;
      local = FILE_HEADER_LEN;
    }
  }

  read(h: EntryHeader): Entry {
    let e = this.lastWalked;
    if (e === null || e.header.offset !== h.offset) {
      e = null;
      if (h.offset >= FILE_HEADER_LEN && h.offset < this.end()) {
        let found: WalkedEntry | null = null;
        try {
          this.walk(h.offset, this.end(), (w) => {
            found = w;
            return false;
          });
        } catch (err) {
          // an offset that holds no record: said below, as "no such record"
          if (!(err instanceof BackupError)) throw err;
        }
        e = found;
      }
    }
    if (!e || e.header.kind !== h.kind || e.header.version !== h.version) {
      throw new BackupError(`${this.location}: no ${h.kind} record with version ${h.version} at offset ${h.offset}`, this.location, h.offset);
    }
    if (e.header.kind === 'snapshot') return snapshotEntry(this.location, e.header.version, e.header.offset, e.size, e.recs);
    const first = e.recs[0]!;
    const c = first.reader.readChange(first.rec);
    return { ...c, offset: h.offset };
  }

  problems(): Problem[] {
    const out: Problem[] = [];
    this.readers.forEach((r, i) => {
      for (const p of r.rawProblems()) out.push({ ...p, offset: p.offset + this.bases[i]!, message: i === 0 ? p.message : `${r.location}: ${p.message}` });
    });
    out.push(...this.setProblems);
    out.push(...this.grouped.corrupt);
    if (this.grouped.dangling) {
      const last = this.readers.length - 1;
      out.push({ ...this.grouped.dangling, bytes: this.bases[last]! + this.sizes[last]! - this.grouped.dangling.offset });
    }
    if (this.tornLast !== null) {
      const last = this.readers.length - 1;
      out.push({
        kind: 'torn-tail',
        offset: this.bases[last]! + this.sizes[last]!,
        message:
          `${this.tornLast}: a segment without its header (a crash or a full disk while it was being started); it holds ` +
          `no record and is passed over (the plugin removes it when it next opens the backup)`,
      });
    }
    return out.sort((a, b) => a.offset - b.offset);
  }

  stats(): BackupStats {
    return { format: 'v2', location: this.location, head: this.grouped.head, entries: this.grouped.entries, bytes: this.end() };
  }

  close(): void {
    this.lastWalked = null;
    for (const r of this.readers) r.close();
  }
}

/**
 * Reads the virtual file of a segmented backup (see the offsets rule above) for compaction, which walks
 * and copies byte ranges. New segments the writer starts meanwhile are found when a read reaches them.
 */
export class SegmentedSource {
  private fds: number[] = [];
  private bases: number[] = [];
  private ends: number[] = [];
  private closed = false;
  /** format 4: the newest segment's size includes reserved space, so its size does not say where it ends */
  private prealloc = false;
  private setId = 0;

  constructor(private readonly base: string) {
    this.refresh();
    if (this.fds.length === 0) throw new BackupError(`${base}: no segments`, base);
  }

  /** The first segment's file header. */
  header(): Buffer {
    const h = Buffer.allocUnsafe(FILE_HEADER_LEN);
    this.readAt(h, FILE_HEADER_LEN, 0);
    return h;
  }

  get segmentCount(): number {
    return this.fds.length;
  }

  private refresh(): void {
    // the writer may be starting a segment right now: a header not yet written is not a segment yet
    const set = discoverSegments(this.base, { allowTornLast: true });
    this.prealloc = set.first.version >= PREALLOC_VERSION;
    this.setId = set.first.setId;
    for (let i = this.fds.length; i < set.segments.length; i++) this.fds.push(openSync(set.segments[i]!.path, 'r'));
    // every segment but the last is final; the last may still grow. A seal is not data: the virtual file
    // (global offsets) leaves it out, as the writer and the reader do
    let base = 0;
    this.bases = [];
    this.ends = [];
    for (let i = 0; i < this.fds.length; i++) {
      let size = fstatSync(this.fds[i]!).size;
      const sealed = sealAtEnd(this.fds[i]!, size, seedOfFd(this.fds[i]!)) !== null;
      if (sealed) size -= SEAL_RECORD_LEN;
      this.bases.push(base);
      this.ends.push(base + size);
      base += size - FILE_HEADER_LEN;
      // format 4, a roll-over under way: the segment's reserve is not cut yet, so where the next one starts
      // is not known; nothing in the next one is committed before the seal, so the view stops here
      if (this.prealloc && !sealed && i < this.fds.length - 1) {
        for (const fd of this.fds.splice(i + 1)) closeSync(fd);
        break;
      }
    }
  }

  /** Format 4: reading the newest known segment, whose end its size does not tell: has the writer moved on? */
  private movedOn(): boolean {
    return this.prealloc && existsSync(segmentPath(this.base, this.setId, this.fds.length + 1));
  }

  /** The first file's device and inode: which backup this source reads (compaction checks it). */
  identity(): { dev: bigint; ino: bigint } {
    const st = fstatSync(this.fds[0]!, { bigint: true });
    return { dev: st.dev, ino: st.ino };
  }

  /** The virtual file's size now (every segment, the last one as far as it is written). */
  size(): number {
    this.refresh();
    return this.ends[this.ends.length - 1]!;
  }

  readAt(buf: Buffer, n: number, pos: number): void {
    let done = 0;
    let refreshed = false;
    // one stat per read (compaction reads in large windows): a sealed, cut segment is never read from a stale view
    if (this.movedOn()) this.refresh();
    while (done < n) {
      const g = pos + done;
      let i = this.fds.length - 1;
      while (i > 0 && this.bases[i]! + FILE_HEADER_LEN > g) i--;
      const local = g - this.bases[i]!;
      // bounded for the last segment too: once the writer moves on, a seal follows its data, and new data
      // is found by refreshing (which also learns of the new segments)
      const avail = this.ends[i]! - g;
      const want = Math.min(n - done, avail);
      const r = want > 0 ? readSync(this.fds[i]!, buf, done, want, local) : 0;
      if (r <= 0) {
        if (!refreshed) {
          refreshed = true;
          this.refresh();
          continue;
        }
        throw new Error(`unexpected end of data at offset ${g} (segment ${i + 1}, local offset ${local})`);
      }
      done += r;
      refreshed = false;
    }
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of this.fds) closeSync(fd);
  }
}
