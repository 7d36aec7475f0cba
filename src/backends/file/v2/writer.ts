import { closeSync, fdatasyncSync, fstatSync, fsyncSync, ftruncateSync, openSync, readSync, unlinkSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { randomBytes } from '../../../engine/random.js';
import type { BackupStats, BackupWriter } from '../../backend.js';
import { BackupError, type Problem } from '../../../engine/entries.js';
import { isValidDataVersion } from '../../../engine/versions.js';
import { fsyncDir, NameGuard, openSnapshotSource, writeFully } from '../fsutil.js';
import { WriterLock } from '../writer-lock.js';
import {
  encodeChangePayloadAt,
  changePayloadLength,
  CHUNK,
  encodeChangeRecordInto,
  encodeFileHeader,
  encodeRecordHeader,
  FILE_HEADER_LEN,
  RECORD_HEADER_LEN,
  RECORD_OVERHEAD,
  RECORD_TRAILER_LEN,
  SCRATCH_INITIAL,
  SCRATCH_KEEP,
  TYPE_CHANGE,
  TYPE_SNAPSHOT,
  TYPE_SNAPSHOT_PART,
  TYPE_SEAL,
  SEAL_RECORD_LEN,
  encodeSealRecord,
  type Seal,
  unsupportedError,
  unsupportedReason,
  writeU64,
  readU64,
  type RecordHeader,
} from './codec.js';
import { asBackupError, FileWindow } from './io.js';
import { checkFileHeader, checkLastRecord, findPreallocEnd, layoutOf, recordEndingAt, scanRecords, type RecordLayout } from './scan.js';
import { clearRecordsBackwards, RESERVE_MAX, RESERVE_MIN, RESERVE_RECORDS, zeroRange } from './reserve.js';
import { isPragmaOnly } from '../../../engine/versions.js';
import { encOverhead, LINK_LEN, prefixLen, type RecordCrypt } from '../../../crypto/records.js';
import { FLAG_ENCRYPTED, FLAG_PRAGMA_ONLY, type FileEncryption } from './codec.js';

/**
 * The v2 writer: creating a backup file and appending records to it. Every append is one write plus one
 * fdatasync; an open cuts what an unfinished append left at the end (docs/format-v2.md, "Recovery").
 */

// ---------------------------------------------------------------------------------------------------
// Creating

/** `backupId`: chosen by the caller when the key depends on it (a passphrase key's salt); random otherwise. */
export function createV2(path: string, enc: FileEncryption | null = null, backupId: Buffer = randomBytes(16)): void {
  const header = encodeFileHeader(backupId, Date.now(), enc);
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new BackupError(`${path} already exists; refusing to overwrite an existing backup`, path);
    throw new BackupError(`cannot create ${path}: ${(e as Error).message}`, path);
  }
  try {
    writeFully(fd, header, 0);
    fsyncSync(fd);
    closeSync(fd);
  } catch (e) {
    try {
      closeSync(fd);
    } catch {
      // already closed
    }
    try {
      unlinkSync(path);
    } catch {
      // nothing more to undo
    }
    throw asBackupError(e, path, 'cannot write the file header');
  }
  fsyncDir(path);
}

// ---------------------------------------------------------------------------------------------------
// Writer

/** What an open had to read: exposed so tests can prove the common open does not depend on the file's length. */
export interface V2OpenStats {
  /** 'empty': header only; 'fast': last record checked via the trailer; 'slow': full forward scan */
  path: 'empty' | 'fast' | 'slow';
  /** records whose header, payload checksum and trailer were all verified */
  recordsValidated: number;
  /** record headers read while walking back from the end over the newest version's records (dropHead adds its own walk) */
  headersWalked: number;
}

export interface V2WriterOptions {
  /**
   * Validate every record before accepting the file, as the reader does. The default checks only the
   * newest record (O(1)); damage further back is left for `clnvault verify` and restore to report.
   */
  fullCheck?: boolean;
  /**
   * Leave snapshot part records at the end in place. For a segment that is not the last of its set (its
   * parts continue in the next segment); by default they are an unfinished snapshot and are cut.
   */
  keepParts?: boolean;
  /**
   * Accept a file that ends with a segment seal (for counting its entries): it is never appended to. By
   * default a sealed file is refused: a later segment follows it, so appending here would bury records.
   */
  sealed?: boolean;
  /**
   * The record cipher of an encrypted backup (required for one, refused for a plain one): every data
   * record is encrypted and chained through it (docs/encryption.md).
   */
  crypt?: RecordCrypt | null;
  /** The file never grows past this many bytes because of reserved space (a segment's size limit). */
  reserveLimit?: number;
  /**
   * clnvault server: open an encrypted backup without its key. Such a writer takes only records the node
   * sealed itself (appendRawRecord) and refuses every plaintext append.
   */
  keyless?: boolean;
}

export class V2Writer implements BackupWriter {
  readonly format = 'v2' as const;
  readonly openStats: V2OpenStats;
  private scratch: Buffer = Buffer.allocUnsafe(SCRATCH_INITIAL);
  /** offset where the next record goes: the end of the data (the file size, unless space is reserved after it) */
  private end = FILE_HEADER_LEN;
  /** the file's size: [end, cap) is reserved space, all zeros (format 4; == end before it) */
  private cap = FILE_HEADER_LEN;
  private layout: RecordLayout = { seed: 0, prealloc: false };
  private reserveLimit = Number.MAX_SAFE_INTEGER;
  /** the biggest record of the recent appends: the reserve is sized to hold many of them */
  private recentRecord = 0;
  private headVersion = 0;
  private lastType = 0;
  /** start of the trailing run of change records with version == head; == end when there is none */
  private groupStart = FILE_HEADER_LEN;
  private groupCount = 0;
  /** counted lazily: the fast open does not know it */
  private entryCount: number | null = null;
  private failed: Error | null = null;
  private closed = false;
  /** ends with a segment seal: nothing may be appended */
  private sealed = false;

  /** the per-append check that the path still names the open file (made at the first append) */
  private named: NameGuard | null = null;
  private crypt: RecordCrypt | null = null;
  /** the file header says encrypted: with no crypt (keyless), only ready-made records may be appended */
  private encrypted = false;
  private firstSegment = true;

  private constructor(
    readonly location: string,
    private fd: number,
    private readonly lock: WriterLock,
    private readonly repairs: Problem[],
    stats: V2OpenStats,
  ) {
    this.openStats = stats;
  }

  /** `heldLock`: reopen under a writer lock this process already holds (after compaction swapped the file). */
  static open(path: string, options: V2WriterOptions = {}, heldLock?: WriterLock): V2Writer {
    let fd: number;
    try {
      fd = openSync(path, 'r+');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new BackupError(
        code === 'ENOENT' ? `${path} does not exist (create it with 'clnvault init')` : `cannot open ${path}: ${(e as Error).message}`,
        path,
      );
    }
    let lock: WriterLock | null = null;
    try {
      // nothing is read before the lock is held: another writer could be mid-append
      lock = heldLock ?? WriterLock.acquire(path);
      const size = fstatSync(fd).size;
      const info = checkFileHeader(fd, size, path);
      const encrypted = info.encryption !== null;
      if (encrypted && !options.crypt && !options.keyless) {
        throw new BackupError(`${path} is an encrypted backup and no key was given: refusing to write to it without its key`, path, 12);
      }
      if (!encrypted && options.crypt) {
        throw new BackupError(`${path} is not an encrypted backup, but a key was given (backup.lock says "encrypt"?): refusing to mix plaintext and encrypted records`, path, 12);
      }
      const w = new V2Writer(path, fd, lock, [], { path: 'empty', recordsValidated: 0, headersWalked: 0 });
      w.crypt = options.crypt ?? null;
      w.encrypted = encrypted;
      w.firstSegment = info.segmentIndex === 0;
      w.layout = layoutOf(info);
      const { seed, prealloc } = w.layout;
      if (options.reserveLimit !== undefined) w.reserveLimit = options.reserveLimit;
      w.end = size;
      w.cap = size;
      // the fast open: the newest record ends at EOF, or (preallocated) where the reserved zeros begin
      const found = options.fullCheck ? null : prealloc ? findPreallocEnd(fd, size, seed) : { end: size, last: null };
      if (found) w.end = found.end;
      if (found && w.end === FILE_HEADER_LEN) {
        w.entryCount = 0;
        w.loadTail(null);
        return w;
      }
      const last = !found ? null : prealloc ? found.last : checkLastRecord(fd, size, seed);
      if (last) {
        const reason = unsupportedReason(last.h, encrypted);
        if (reason !== null) throw unsupportedError(path, last.start, reason);
        if (last.h.type === TYPE_SEAL) {
          if (!options.sealed) throw sealedError(path);
          w.sealed = true;
        }
        w.openStats.path = 'fast';
        w.openStats.recordsValidated = 1;
        // a broken chain just before the newest record means damage: let the full scan say where
        if (w.loadTail(last) && (options.keepParts || w.cutDanglingParts())) return w;
      }
      w.end = size;
      const scan = scanRecords(fd, size, path, undefined, w.layout);
      w.openStats.path = 'slow';
      w.openStats.recordsValidated += scan.recordsValidated;
      if (scan.unsupported) throw scan.unsupported;
      if (scan.corrupt.length > 0) {
        const first = scan.corrupt[0]!;
        throw new BackupError(
          `${path} is damaged: ${first.message}` +
            (scan.corrupt.length > 1 ? ` (and ${scan.corrupt.length - 1} more damaged record(s))` : '') +
            `. Refusing to append to a damaged backup. Run 'clnvault verify ${path}' to see every problem; ` +
            `if it cannot be repaired, start a fresh backup with 'clnvault init'.`,
          path,
          first.offset,
        );
      }
      if (scan.torn) {
        // reserved space after it goes too (prepare() writes a fresh reserve): nothing but zeros may follow the data
        ftruncateSync(fd, scan.torn.offset);
        fdatasyncSync(fd);
        w.repairs.push(scan.torn);
      }
      if (scan.seal) {
        if (!options.sealed) throw sealedError(path);
        w.sealed = true;
      }
      w.end = scan.validEnd;
      w.cap = fstatSync(fd).size;
      w.entryCount = scan.wholeRecords;
      if (!w.loadTail(null)) throw new Error(`internal: record chain broken after a clean scan of ${path}`);
      if (!options.keepParts && !w.cutDanglingParts()) throw new Error(`internal: record chain broken after a clean scan of ${path}`);
      return w;
    } catch (e) {
      if (!heldLock) lock?.release();
      closeSync(fd);
      throw asBackupError(e, path, 'cannot open the backup for writing');
    }
  }

  /**
   * Learns head, head type and the trailing group of head-version changes by walking trailers back
   * from the end: a handful of headers, however long the file. False when the chain of trailers is
   * broken (damage near the end).
   */
  private loadTail(known: { start: number; h: RecordHeader } | null): boolean {
    this.groupStart = this.end;
    this.groupCount = 0;
    this.headVersion = 0;
    this.lastType = 0;
    if (this.end === FILE_HEADER_LEN) {
      // a later segment starts empty and goes on from the previous one's link, already in the cipher
      if (this.crypt && this.firstSegment) this.crypt.link = Buffer.alloc(LINK_LEN);
      return true;
    }
    const win = new FileWindow(this.fd, this.end, SCRATCH_INITIAL);
    let rec = known;
    if (!rec) {
      rec = recordEndingAt(win, this.end, this.layout.seed);
      this.openStats.headersWalked++;
      if (!rec) return false;
    }
    if (this.crypt && rec.h.type !== TYPE_SEAL) this.crypt.link = linkAt(win, rec.start, rec.h.type, rec.h.length);
    let groupStart = this.end;
    let groupCount = 0;
    if (rec.h.type === TYPE_CHANGE) {
      groupStart = rec.start;
      groupCount = 1;
      while (groupStart > FILE_HEADER_LEN) {
        const prev = recordEndingAt(win, groupStart, this.layout.seed);
        this.openStats.headersWalked++;
        if (!prev) return false;
        if (prev.h.type !== TYPE_CHANGE || prev.h.version !== rec.h.version) break;
        groupStart = prev.start;
        groupCount++;
      }
    }
    this.headVersion = rec.h.version;
    this.lastType = rec.h.type;
    this.groupStart = groupStart;
    this.groupCount = groupCount;
    return true;
  }

  /**
   * Snapshot part records at the end without their final record are a snapshot that never completed
   * (never acknowledged): cut them, durably, and report it. False when the trailer chain is broken.
   */
  private cutDanglingParts(): boolean {
    if (this.end === FILE_HEADER_LEN || this.lastType !== TYPE_SNAPSHOT_PART) return true;
    const win = new FileWindow(this.fd, this.end, SCRATCH_INITIAL);
    let start = this.end;
    let n = 0;
    const starts: number[] = [];
    while (start > FILE_HEADER_LEN) {
      const prev = recordEndingAt(win, start, this.layout.seed);
      this.openStats.headersWalked++;
      if (!prev) return false;
      if (prev.h.type !== TYPE_SNAPSHOT_PART) break;
      start = prev.start;
      starts.push(start);
      n++;
    }
    const cut = this.end - start;
    this.discardRecords(starts.reverse(), this.end);
    this.repairs.push({
      kind: 'torn-tail',
      offset: start,
      message: `cut ${cut} bytes at offset ${start}: ${n} snapshot part record(s) without their final snapshot record (a snapshot that never completed)`,
    });
    this.end = start;
    return this.loadTail(null);
  }

  /**
   * Compaction renamed a new file over the backup: switch to it. The writer lock stays held (it lives on
   * `<path>.writer`, which the rename does not touch), so no other writer can slip in between.
   */
  reopen(): void {
    this.checkUsable();
    const next = V2Writer.open(this.location, { crypt: this.crypt, reserveLimit: this.reserveLimit, keyless: this.encrypted && !this.crypt }, this.lock);
    closeSync(this.fd);
    this.fd = next.fd;
    this.named = null;
    this.end = next.end;
    this.cap = next.cap;
    this.layout = next.layout;
    this.headVersion = next.headVersion;
    this.lastType = next.lastType;
    this.groupStart = next.groupStart;
    this.groupCount = next.groupCount;
    this.entryCount = next.entryCount;
  }

  /** Bytes of acknowledged data (the file size, less reserved space); unlike stats() never walks the file. */
  endOffset(): number {
    return this.end;
  }

  /** Zero bytes reserved after the data for the next records (format 4); 0 in older files. */
  reservedBytes(): number {
    return this.cap - this.end;
  }

  /** The record header CRC seed of this file (recordSeedOf): what compaction re-seals copies for. */
  get recordSeed(): number {
    return this.layout.seed;
  }

  /**
   * Tops up the reserved space ahead of the writer: zeros written after the file's end and made durable,
   * so that the next appends land inside allocated, already-written blocks and their fdatasync flushes
   * data only (no file-size change, no journal commit). Off the hook path: the plugin calls it after it
   * has answered a hook. Does nothing when enough is reserved; an error (a full disk) leaves the reserve
   * as it was, and appends then simply grow the file.
   */
  prepare(): boolean {
    if (this.closed || this.sealed || this.failed) return false;
    // an encrypted backup's next record cipher is made here too, off the hook's latency
    this.crypt?.prepareNext();
    if (!this.layout.prealloc) return false;
    const want = Math.min(RESERVE_MAX, Math.max(RESERVE_MIN, this.recentRecord * RESERVE_RECORDS));
    if (this.cap - this.end >= want / 2) return false;
    // whole 64 KiB blocks, and never past the segment's limit (FAT32)
    const target = Math.min(this.reserveLimit, Math.ceil((this.end + want) / 65536) * 65536);
    if (target <= this.cap) return false;
    try {
      zeroRange(this.fd, this.cap, target);
    } catch {
      // a full disk: give the space back, so that what is left of it still takes appends
      try {
        ftruncateSync(this.fd, this.cap);
      } catch {
        // zeros past the end are reserved space all the same
      }
      return false;
    }
    try {
      fdatasyncSync(this.fd);
    } catch (e) {
      // as after any failed fdatasync, the page cache of this file cannot be trusted: the writer stops
      this.failed = e as Error;
      return false;
    }
    this.cap = target;
    this.recentRecord = 0;
    return true;
  }

  /**
   * Removes the records starting at `starts` (in file order; the last one ends at `end`): cut off in a
   * file without reserved space; cleared to zeros, newest first with an fdatasync after each, in a
   * preallocated one, so that a crash in between leaves a shorter run of valid records, never a valid
   * record after a cleared one (which would read as damage).
   */
  private discardRecords(starts: readonly number[], end: number): void {
    if (starts.length === 0) return;
    if (!this.layout.prealloc) {
      ftruncateSync(this.fd, starts[0]!);
      fdatasyncSync(this.fd);
      this.cap = starts[0]!;
      return;
    }
    clearRecordsBackwards(this.fd, starts, end);
  }

  head(): number {
    return this.end === FILE_HEADER_LEN ? 0 : this.headVersion;
  }

  isEmpty(): boolean {
    return this.end === FILE_HEADER_LEN;
  }

  headIsSnapshot(): boolean {
    return this.end > FILE_HEADER_LEN && this.lastType === TYPE_SNAPSHOT;
  }

  /**
   * One record of a snapshot: TYPE_SNAPSHOT_PART (a slice, more follow) or TYPE_SNAPSHOT (the last slice,
   * or the whole database; `parts` = how many part records precede it), with the `len` bytes at
   * `srcOff` of the open file `src`. Durable on return. A source that ends early is cut back and reported
   * as an unreadable source; the writer stays usable.
   */
  appendSnapshotSlice(type: number, version: number, parts: number, src: number, srcOff: number, len: number, srcPath: string): void {
    this.appendSlice(type, version, parts, src, srcOff, len, srcPath);
  }

  private appendSlice(type: number, version: number, parts: number, src: number, srcOff: number, len: number, srcPath: string): void {
    this.checkUsable();
    this.checkPlainAllowed();
    if (!isValidDataVersion(version)) throw new RangeError(`data_version must be an unsigned 32-bit integer, not ${version}`);
    if (type !== TYPE_SNAPSHOT && type !== TYPE_SNAPSHOT_PART) throw new RangeError(`not a snapshot record type: ${type}`);
    const at = this.end;
    const header = Buffer.alloc(RECORD_HEADER_LEN);
    const chunk = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(1, len)));
    let crc = 0;
    const enc = this.crypt ? this.crypt.stream({ type, flags: FLAG_ENCRYPTED, version, parts: type === TYPE_SNAPSHOT ? parts : 0 }) : null;
    const pre = enc ? enc.prefix.length : 0;
    try {
      writeFully(this.fd, header, at);
      if (enc) {
        crc = crc32(enc.prefix);
        writeFully(this.fd, enc.prefix, at + RECORD_HEADER_LEN);
      }
      for (let done = 0; done < len; ) {
        let n: number;
        try {
          n = readSync(src, chunk, 0, Math.min(chunk.length, len - done), srcOff + done);
          if (n <= 0) throw new Error(`it ended at byte ${srcOff + done} of the ${srcOff + len} expected (it shrank while it was read)`);
        } catch (e) {
          this.dropPartial(at, at + RECORD_HEADER_LEN + pre + done);
          throw new BackupError(`cannot read the snapshot source ${srcPath}: ${(e as Error).message}`, this.location, at);
        }
        const part = enc ? enc.update(chunk.subarray(0, n)) : chunk.subarray(0, n);
        crc = crc32(part, crc);
        writeFully(this.fd, part, at + RECORD_HEADER_LEN + pre + done);
        done += n;
      }
      let stored = len;
      if (enc) {
        const tag = enc.finish();
        crc = crc32(tag, crc);
        writeFully(this.fd, tag, at + RECORD_HEADER_LEN + pre + len);
        stored = len + encOverhead(type);
      }
      this.sealRecord(header, at, type, version, stored, crc, parts, enc ? FLAG_ENCRYPTED : 0);
      this.crypt?.committed();
      len = stored;
    } catch (e) {
      if (e instanceof BackupError) throw e;
      throw this.fail(e, at);
    }
    this.end = at + RECORD_OVERHEAD + len;
    if (this.end > this.cap) this.cap = this.end;
    this.headVersion = version;
    this.lastType = type;
    this.groupStart = this.end;
    this.groupCount = 0;
    if (this.entryCount !== null && type === TYPE_SNAPSHOT) this.entryCount++;
  }

  /**
   * Ends this segment: "segment `s.next` follows". Called only once that segment exists durably, so that
   * a sealed segment without a successor always means files are missing (docs/format-v2.md, "Segments").
   * Durable on return; the writer accepts no more appends.
   */
  appendSeal(s: Seal): void {
    this.checkUsable();
    const at = this.end;
    try {
      // a sealed segment holds no reserve: its size is its data (and seal), as readers of earlier segments expect.
      // A crash after the cut, before the seal, is a roll-over that never completed
      if (this.cap > at) ftruncateSync(this.fd, at);
      this.cap = at;
      writeFully(this.fd, encodeSealRecord(s, this.layout.seed), at);
      fdatasyncSync(this.fd);
    } catch (e) {
      throw this.fail(e, at);
    }
    this.end = at + SEAL_RECORD_LEN;
    this.cap = this.end;
    this.sealed = true;
  }

  /** A record that will not be completed (its source failed): its bytes go, the writer stays usable. */
  private dropPartial(at: number, upTo: number): void {
    if (!this.layout.prealloc) {
      ftruncateSync(this.fd, at);
      return;
    }
    zeroRange(this.fd, at, Math.min(upTo, this.cap));
    if (upTo > this.cap) ftruncateSync(this.fd, Math.max(at, this.cap));
  }

  repaired(): Problem[] {
    return this.repairs.slice();
  }

  /**
   * Ends a record whose payload is already written at `at` + header: its header, its trailer, then one
   * fdatasync, so the record is durable (and readable) only once it is whole.
   */
  private sealRecord(header: Buffer, at: number, type: number, version: number, len: number, crc: number, parts = 0, flags = 0): void {
    encodeRecordHeader(header, type, version, len, crc, parts, flags, this.layout.seed);
    writeFully(this.fd, header, at);
    const trailer = Buffer.allocUnsafe(RECORD_TRAILER_LEN);
    writeU64(trailer, len, 0);
    writeFully(this.fd, trailer, at + RECORD_HEADER_LEN + len);
    fdatasyncSync(this.fd);
  }

  appendChange(version: number, statements: readonly string[]): number {
    this.checkUsable();
    this.checkPlainAllowed();
    if (!isValidDataVersion(version)) throw new RangeError(`data_version must be an unsigned 32-bit integer, not ${version}`);
    const payloadLen = changePayloadLength(statements);
    const total = RECORD_OVERHEAD + payloadLen + (this.crypt ? encOverhead(TYPE_CHANGE) : 0);
    if (total > this.scratch.length) this.scratch = Buffer.allocUnsafe(Math.max(total, this.scratch.length * 2));
    const buf = this.scratch;
    if (this.crypt) this.encryptChange(buf, version, statements, payloadLen);
    else encodeChangeRecordInto(buf, version, statements, payloadLen, this.layout.seed);
    const at = this.end;
    try {
      writeFully(this.fd, buf.subarray(0, total), at);
      fdatasyncSync(this.fd);
      (this.named ??= new NameGuard(this.fd, this.location)).check();
    } catch (e) {
      throw this.fail(e, at);
    }
    this.crypt?.committed();
    if (buf.length > SCRATCH_KEEP) this.scratch = Buffer.allocUnsafe(SCRATCH_INITIAL);
    if (!(this.lastType === TYPE_CHANGE && this.headVersion === version && at > FILE_HEADER_LEN)) {
      this.groupStart = at;
      this.groupCount = 0;
    }
    this.groupCount++;
    this.end = at + total;
    if (this.end > this.cap) this.cap = this.end;
    if (total > this.recentRecord) this.recentRecord = total;
    this.headVersion = version;
    this.lastType = TYPE_CHANGE;
    if (this.entryCount !== null) this.entryCount++;
    return total;
  }

  /** An encrypted change record in `buf` (header, prefix, ciphertext, tag, trailer). */
  private encryptChange(buf: Buffer, version: number, statements: readonly string[], payloadLen: number): void {
    const crypt = this.crypt!;
    encodeChangePayloadAt(buf, RECORD_HEADER_LEN + prefixLen(TYPE_CHANGE), statements, payloadLen);
    const flags = FLAG_ENCRYPTED | (isPragmaOnly(statements) ? FLAG_PRAGMA_ONLY : 0);
    const stored = crypt.sealInPlace(buf, RECORD_HEADER_LEN, { type: TYPE_CHANGE, flags, version, parts: 0 }, payloadLen);
    const end = RECORD_HEADER_LEN + stored;
    encodeRecordHeader(buf, TYPE_CHANGE, version, stored, crc32(buf.subarray(RECORD_HEADER_LEN, end)), 0, flags, this.layout.seed);
    writeU64(buf, stored, end);
  }

  appendSnapshotFile(version: number, dbPath: string): void {
    if (this.crypt) {
      // one streamed, encrypted record (the same steps as a slice: prefix, chunks, tag)
      this.checkUsable();
      let src: number;
      try {
        src = openSync(dbPath, 'r');
      } catch (e) {
        throw new BackupError(`cannot read the snapshot source ${dbPath}: ${(e as Error).message}`, this.location);
      }
      try {
        this.appendSnapshotSlice(TYPE_SNAPSHOT, version, 0, src, 0, fstatSync(src).size, dbPath);
      } finally {
        closeSync(src);
      }
      return;
    }
    this.checkUsable();
    this.checkPlainAllowed();
    if (!isValidDataVersion(version)) throw new RangeError(`data_version must be an unsigned 32-bit integer, not ${version}`);
    const src = openSnapshotSource(dbPath, this.location);
    const at = this.end;
    // all zeros: its checksum is wrong, so a crash before the real header lands reads as a torn tail
    const header = Buffer.alloc(RECORD_HEADER_LEN);
    const chunk = Buffer.allocUnsafe(CHUNK);
    let len = 0;
    let crc = 0;
    try {
      writeFully(this.fd, header, at);
      for (;;) {
        let n: number;
        try {
          n = readSync(src, chunk, 0, CHUNK, len);
        } catch (e) {
          // the backup itself is fine: drop the partial record and stay usable
          this.dropPartial(at, at + RECORD_HEADER_LEN + len);
          throw new BackupError(`cannot read the snapshot source ${dbPath}: ${(e as Error).message}`, this.location, at);
        }
        if (n === 0) break;
        const part = chunk.subarray(0, n);
        crc = crc32(part, crc);
        writeFully(this.fd, part, at + RECORD_HEADER_LEN + len);
        len += n;
      }
      this.sealRecord(header, at, TYPE_SNAPSHOT, version, len, crc);
    } catch (e) {
      if (e instanceof BackupError) throw e;
      throw this.fail(e, at);
    } finally {
      closeSync(src);
    }
    this.end = at + RECORD_OVERHEAD + len;
    if (this.end > this.cap) this.cap = this.end;
    this.headVersion = version;
    this.lastType = TYPE_SNAPSHOT;
    this.groupStart = this.end;
    this.groupCount = 0;
    if (this.entryCount !== null) this.entryCount++;
  }

  dropHead(): number {
    this.checkUsable();
    if (this.end === FILE_HEADER_LEN) return 0;
    if (this.groupCount === 0) {
      throw new BackupError(
        `${this.location}: the newest entry is a snapshot at version ${this.headVersion}; a snapshot is committed state and is never dropped`,
        this.location,
        this.end,
      );
    }
    const to = this.groupStart;
    try {
      this.discardRecords(this.layout.prealloc ? this.groupStarts() : [to], this.end);
    } catch (e) {
      throw this.fail(e, to);
    }
    if (this.entryCount !== null) this.entryCount -= this.groupCount;
    this.end = to;
    if (!this.loadTail(null)) {
      const e = new BackupError(
        `${this.location} is damaged: the record before offset ${to} cannot be found through its trailer. ` +
          `Run 'clnvault verify ${this.location}'; if it cannot be repaired, start a fresh backup with 'clnvault init'.`,
        this.location,
        to,
      );
      this.failed = e;
      throw e;
    }
    return this.head();
  }

  stats(): BackupStats {
    if (this.entryCount === null) this.entryCount = this.countEntries();
    return { format: 'v2', location: this.location, head: this.head(), entries: this.entryCount, bytes: this.end };
  }

  /** Starts of the records of the head group (groupStart..end), in file order: a short walk back. */
  private groupStarts(): number[] {
    const win = new FileWindow(this.fd, this.end, SCRATCH_INITIAL);
    const starts: number[] = [];
    for (let at = this.end; at > this.groupStart; ) {
      const rec = recordEndingAt(win, at, this.layout.seed);
      if (!rec) throw new Error(`the record before offset ${at} cannot be found through its trailer`);
      starts.push(rec.start);
      at = rec.start;
    }
    return starts.reverse();
  }

  /** Off the hot path (stats only): walks every trailer back from the end. */
  private countEntries(): number {
    const win = new FileWindow(this.fd, this.end, CHUNK);
    let n = 0;
    let at = this.end;
    while (at > FILE_HEADER_LEN) {
      const rec = recordEndingAt(win, at, this.layout.seed);
      if (!rec) return n + scanRecords(this.fd, at, this.location, undefined, { ...this.layout, prealloc: false }).wholeRecords;
      if (rec.h.type !== TYPE_SNAPSHOT_PART && rec.h.type !== TYPE_SEAL) n++;
      at = rec.start;
    }
    return n;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      closeSync(this.fd);
    } finally {
      this.lock.release();
    }
  }

  /**
   * clnvault server's keyless append: one record the node sealed itself (docs/remote.md, "Encrypted
   * backups"). `h` is the parsed header (checkRawHeader, this file's seed), `header` its 32 bytes as sent;
   * `fill` streams the stored payload through `put`. The payload's length and CRC are checked against the
   * header before the header is written: a record that does not match is cleared again and refused with a
   * RawRecordError (the writer stays usable). Durable on return, one fdatasync. `source` may instead be
   * the whole record (header, payload, trailer) in memory, a change: checked first, then written in one
   * write, as appendChange writes its records.
   */
  appendRawRecord(h: RecordHeader, header: Buffer, source: RawSource): void {
    this.checkUsable();
    if (!this.encrypted || this.crypt) throw new RawRecordError(`${this.location} is not a keyless encrypted backup: it takes no ready-made records`);
    if (Buffer.isBuffer(source)) {
      this.appendRawWhole(h, source);
      return;
    }
    const fill = source;
    const at = this.end;
    let done = 0;
    let crc = 0;
    let why: string | null = null;
    try {
      // all zeros: a crash before the real header lands reads as a torn tail
      writeFully(this.fd, Buffer.alloc(RECORD_HEADER_LEN), at);
      fill((chunk) => {
        if (why !== null) return;
        if (done + chunk.length > h.length) {
          why = `the record's payload is longer than the ${h.length} bytes its header states`;
          return;
        }
        crc = crc32(chunk, crc);
        writeFully(this.fd, chunk, at + RECORD_HEADER_LEN + done);
        done += chunk.length;
      });
      if (why === null && done !== h.length) why = `the record's payload has ${done} bytes, its header states ${h.length}`;
      if (why === null && crc !== h.payloadCrc) why = `the record's payload does not match its checksum (damaged on the way)`;
      if (why !== null) {
        this.dropPartial(at, at + RECORD_HEADER_LEN + done);
        throw new RawRecordError(why);
      }
      writeFully(this.fd, header, at);
      const trailer = Buffer.allocUnsafe(RECORD_TRAILER_LEN);
      writeU64(trailer, h.length, 0);
      writeFully(this.fd, trailer, at + RECORD_HEADER_LEN + h.length);
      fdatasyncSync(this.fd);
      (this.named ??= new NameGuard(this.fd, this.location)).check();
    } catch (e) {
      if (e instanceof RawRecordError) throw e;
      throw this.fail(e, at);
    }
    this.noteRaw(at, h);
  }

  private appendRawWhole(h: RecordHeader, rec: Buffer): void {
    if (rec.length !== RECORD_OVERHEAD + h.length) throw new RawRecordError(`a record of ${rec.length} bytes whose header states ${h.length} payload bytes`);
    if (crc32(rec.subarray(RECORD_HEADER_LEN, RECORD_HEADER_LEN + h.length)) !== h.payloadCrc) {
      throw new RawRecordError(`the record's payload does not match its checksum (damaged on the way)`);
    }
    if (readU64(rec, RECORD_HEADER_LEN + h.length) !== h.length) throw new RawRecordError('the record trailer does not state its payload length');
    const at = this.end;
    try {
      writeFully(this.fd, rec, at);
      fdatasyncSync(this.fd);
      (this.named ??= new NameGuard(this.fd, this.location)).check();
    } catch (e) {
      throw this.fail(e, at);
    }
    this.noteRaw(at, h);
  }

  /** The writer's state after a ready-made record landed at `at`. */
  private noteRaw(at: number, h: RecordHeader): void {
    const total = RECORD_OVERHEAD + h.length;
    if (h.type === TYPE_CHANGE) {
      if (!(this.lastType === TYPE_CHANGE && this.headVersion === h.version && at > FILE_HEADER_LEN)) {
        this.groupStart = at;
        this.groupCount = 0;
      }
      this.groupCount++;
    } else {
      this.groupStart = at + total;
      this.groupCount = 0;
    }
    this.end = at + total;
    if (this.end > this.cap) this.cap = this.end;
    if (total > this.recentRecord) this.recentRecord = total;
    this.headVersion = h.version;
    this.lastType = h.type;
    if (this.entryCount !== null) this.entryCount++;
  }

  /**
   * The chain link of the newest record (what the node's next record must name as prev), read from the
   * file without the key; zeros when the file holds no record. Null for a plain backup.
   */
  tailLink(): Buffer | null {
    if (!this.encrypted) return null;
    if (this.end === FILE_HEADER_LEN) return Buffer.alloc(LINK_LEN);
    const win = new FileWindow(this.fd, this.end, SCRATCH_INITIAL);
    const rec = recordEndingAt(win, this.end, this.layout.seed);
    if (!rec || rec.h.type === TYPE_SEAL) return null;
    return linkAt(win, rec.start, rec.h.type, rec.h.length);
  }

  /** A keyless writer (clnvault server) never writes plaintext into an encrypted backup. */
  private checkPlainAllowed(): void {
    if (this.encrypted && !this.crypt) {
      throw new RawRecordError(`${this.location} is an encrypted backup held without its key: it takes only records the node encrypted itself`);
    }
  }

  private checkUsable(): void {
    if (this.closed) throw new BackupError(`${this.location}: the writer is closed`, this.location);
    if (this.sealed) throw sealedError(this.location);
    if (this.failed) {
      throw new BackupError(
        `${this.location}: an earlier write failed (${this.failed.message}); reopen the backup before writing again`,
        this.location,
      );
    }
  }

  /**
   * After a failed write or fdatasync the file's state on disk is unknown (and after a failed fsync the
   * page cache cannot be trusted either), so this writer stops. Reopening checks and cuts the tail.
   */
  private fail(e: unknown, at: number): BackupError {
    this.failed = e as Error;
    return new BackupError(
      `${this.location}: writing at offset ${at} failed: ${(e as Error).message}; the entry is NOT backed up`,
      this.location,
      at,
    );
  }
}


/** A ready-made record's stored payload, streamed through `put`; or the whole record, in memory. */
export type RawSource = Buffer | ((put: (chunk: Buffer) => void) => void);

/** A ready-made record refused by a keyless writer; the backup is unchanged and the writer usable. */
export class RawRecordError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RawRecordError';
  }
}

function sealedError(path: string): BackupError {
  return new BackupError(
    `${path} ends with a segment seal: a later segment of its backup follows it, so nothing may be appended here. ` +
      `Open the backup by the URL of its first file; if the later segments are missing, run 'clnvault inspect' on it`,
    path,
  );
}

/** The chain link of the record at `start` (docs/encryption.md): a snapshot's explicit link, else its tag. */
function linkAt(win: FileWindow, start: number, type: number, length: number): Buffer {
  const payload = start + RECORD_HEADER_LEN;
  if (type === TYPE_SNAPSHOT && length >= prefixLen(TYPE_SNAPSHOT)) {
    const l = Buffer.from(win.behind(payload + 48, LINK_LEN));
    if (!l.equals(Buffer.alloc(LINK_LEN))) return l;
  }
  return Buffer.from(win.behind(payload + length - 16, 16));
}
