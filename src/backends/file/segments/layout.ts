import { closeSync, fdatasyncSync, fstatSync, ftruncateSync, openSync, readdirSync, readFileSync, readSync, statSync, unlinkSync } from 'node:fs';
import { type KeyLike } from '../../../crypto/backup-crypt.js';
import { randomBytes } from '../../../engine/random.js';
import { basename, dirname, join } from 'node:path';
import { crc32 } from 'node:zlib';
import { BackupError } from '../../../engine/entries.js';
import { lockPath } from '../../../engine/backup-lock.js';
import { fsyncDir, openBackupFile, writeFully } from '../fsutil.js';
import {
  encodeFileHeader,
  FILE_HEADER_LEN,
  isV2,
  recordSeedOf,
  FORMAT_VERSION,
  SEAL_RECORD_LEN,
  liveSeal,
  sealAtEnd,
  type Seal,
} from '../v2.js';
import { WriterLock } from '../writer-lock.js';

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
export const SEG_INDEX_AT = 40;
export const SEG_SET_AT = 44;

export function segmentPath(base: string, setId: number, index: number): string {
  return `${base}.seg-${setId.toString(16).padStart(8, '0')}-${String(index).padStart(6, '0')}`;
}

export function hex8(n: number): string {
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
  const fd = openBackupFile(path);
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
    // the file may be a live backup's, in a roll-over right now
    return liveSeal(fd, seedOfFd(fd)).seal;
  } finally {
    closeSync(fd);
  }
}

/** The record header CRC seed of the open file `fd` (recordSeedOf its header; 0 for a header that cannot be read). */
export function seedOfFd(fd: number): number {
  const h = Buffer.alloc(FILE_HEADER_LEN);
  if (readSync(fd, h, 0, FILE_HEADER_LEN, 0) !== FILE_HEADER_LEN || !isV2(h)) return 0;
  return recordSeedOf(h);
}

/** Bytes of records in segment file `path`: its size without the header and without a seal. */
export function dataBytes(path: string): number {
  return statSync(path).size - FILE_HEADER_LEN - (sealOf(path) ? SEAL_RECORD_LEN : 0);
}

/**
 * Takes the seal off the end of `path` (durably): its successor is about to be removed, and a sealed
 * segment without a successor would read as a backup with files missing.
 */
export function unseal(path: string): void {
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
export function removeSegmentFile(path: string, prev: string): void {
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
export function createSegment(path: string, header: SegmentHeader): void {
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
export function borrowed(lock: WriterLock): WriterLock {
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
