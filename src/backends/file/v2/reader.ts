import { closeSync, fstatSync, fsyncSync, openSync, readSync, unlinkSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import type { BackupReader, BackupStats } from '../../backend.js';
import { BackupError, type Entry, type EntryHeader, type Problem, type SnapshotEntry } from '../../../engine/entries.js';
import { fsyncDir, writeFully } from '../fsutil.js';
import { CHUNK, decodeChangePayload, parseRecordHeader, RECORD_HEADER_LEN, TYPE_SNAPSHOT_PART } from './codec.js';
import { groupRecords, type GroupedEntry, type Grouping } from './group.js';
import { asBackupError, readFully } from './io.js';
import { checkFileHeader, indexAtOffset, scanRecords, type RecordInfo, type ScanResult } from './scan.js';

/**
 * The v2 reader: one full forward scan at open (every record checked), then entries read in file order
 * through a bounded read-ahead window.
 */

function toEntryHeader(r: GroupedEntry): EntryHeader {
  return { kind: r.kind, version: r.version, offset: r.offset, pragmaOnly: r.pragmaOnly };
}

/** The error a reader's headers() throws for damage: a restore must never skip a record. */
export function damagedError(location: string, bad: readonly Problem[], path = location): BackupError {
  return new BackupError(
    `${location} is damaged: ${bad[0]!.message}` +
      (bad.length > 1 ? ` (and ${bad.length - 1} more damaged record(s))` : '') +
      `. A restore must not skip a record; run 'clnvault verify ${location}' for details.`,
    path,
    bad[0]!.offset,
  );
}

// ---------------------------------------------------------------------------------------------------
// Reader

/**
 * Change records up to this size are read through the reader's read-ahead window; a bigger one is read
 * on its own, so that one huge batch neither evicts the window nor makes it grow.
 */
const READ_AHEAD_MAX_RECORD = 256 << 10;

/**
 * Sequential read-ahead for V2Reader.read: a restore reads records in file order, and two small preads
 * per ~1 KB record cost more than everything else the reader does. One CHUNK-sized buffer, reused, so
 * memory stays bounded whatever the backup's size. A short read (the file shrank since the scan) is an
 * error only when it cuts the bytes actually asked for, as it was with one pread per record.
 */
class ReadAhead {
  private buf: Buffer | null = null;
  private start = 0;
  private len = 0;

  constructor(
    private readonly fd: number,
    private readonly size: number,
  ) {}

  /** Bytes [off, off + n) of the file, n <= CHUNK; the view is valid until the next call. */
  get(off: number, n: number): Buffer {
    if (off < this.start || off + n > this.start + this.len) this.fill(off, n);
    return this.buf!.subarray(off - this.start, off - this.start + n);
  }

  release(): void {
    this.buf = null;
    this.len = 0;
  }

  private fill(off: number, need: number): void {
    const buf = (this.buf ??= Buffer.allocUnsafe(CHUNK));
    const want = Math.min(buf.length, Math.max(need, this.size - off));
    // invalidate first: a failed read must not leave stale bytes that look like the new range
    this.start = off;
    this.len = 0;
    while (this.len < want) {
      const r = readSync(this.fd, buf, this.len, want - this.len, off + this.len);
      if (r <= 0) break;
      this.len += r;
    }
    if (this.len < need) throw new Error(`unexpected end of file at offset ${off + this.len}`);
  }
}

export class V2Reader implements BackupReader {
  readonly format = 'v2' as const;
  /** index in scan.records of the record after the last one read: restore reads in file order */
  private cursor = 0;
  private readonly ahead: ReadAhead;
  private closed = false;

  private constructor(
    readonly location: string,
    private readonly fd: number,
    private readonly scan: ScanResult,
    readonly backupId: Buffer,
    readonly createdMs: number,
    size: number,
  ) {
    this.ahead = new ReadAhead(fd, size);
  }

  static open(path: string): V2Reader {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new BackupError(code === 'ENOENT' ? `${path} does not exist` : `cannot open ${path}: ${(e as Error).message}`, path);
    }
    try {
      const size = fstatSync(fd).size;
      const info = checkFileHeader(fd, size, path);
      const scan = scanRecords(fd, size, path);
      if (scan.unsupported) throw scan.unsupported;
      return new V2Reader(path, fd, scan, info.backupId, info.createdMs, size);
    } catch (e) {
      closeSync(fd);
      throw asBackupError(e, path, 'cannot read the backup');
    }
  }

  /** Debug figure for tests and `inspect`: how many records the scan checked. */
  get recordsValidated(): number {
    return this.scan.recordsValidated;
  }

  private grouped: Grouping | null = null;

  /** Records as entries: a chunked snapshot's parts and final record are one entry. */
  private grouping(): Grouping {
    return (this.grouped ??= groupRecords(this.scan.records));
  }

  private damage(): Problem[] {
    return [...this.scan.corrupt, ...this.grouping().corrupt].sort((a, b) => a.offset - b.offset);
  }

  headers(opts: { beforeDamage?: boolean } = {}): EntryHeader[] {
    const g = this.grouping();
    const bad = this.damage();
    if (bad.length > 0 && opts.beforeDamage) {
      // asked for explicitly (restore's stopAtDamage): the intact entries up to the first damaged record
      const first = bad[0]!.offset;
      return g.entries.filter((e) => this.scan.records[e.last]!.offset < first).map(toEntryHeader);
    }
    if (bad.length > 0) throw damagedError(this.location, bad);
    return g.entries.map(toEntryHeader);
  }

  /** Every valid record in file order, parts included (offsets local to this file): for SegmentedReader. */
  rawRecords(): readonly RecordInfo[] {
    return this.scan.records;
  }

  /** Damage and torn tail as the record scan found them, before records are grouped into entries. */
  rawProblems(): Problem[] {
    const all = this.scan.corrupt.slice();
    if (this.scan.torn) all.push(this.scan.torn);
    return all.sort((a, b) => a.offset - b.offset);
  }

  /** End of the last valid record. */
  get validEnd(): number {
    return this.scan.validEnd;
  }

  /** The entry at `offset`: the one after the last read when reading in file order, else a binary search. */
  private entryAt(offset: number): GroupedEntry | undefined {
    const ents = this.grouping().entries;
    const i = indexAtOffset(ents, this.cursor, offset);
    if (i < 0) return undefined;
    this.cursor = i + 1;
    return ents[i];
  }

  read(h: EntryHeader): Entry {
    this.checkOpen();
    const e = this.entryAt(h.offset);
    if (!e || e.kind !== h.kind || e.version !== h.version) {
      throw new BackupError(`${this.location}: no ${h.kind} record with version ${h.version} at offset ${h.offset}`, this.location, h.offset);
    }
    if (e.kind === 'snapshot') {
      const recs = this.scan.records.slice(e.first, e.last + 1).map((rec) => ({ reader: this, rec }));
      return snapshotEntry(this.location, e.version, e.offset, e.size, recs);
    }
    return this.readChange(this.scan.records[e.first]!);
  }

  /** The change record `r` (from rawRecords()), read and checked. */
  readChange(r: RecordInfo): Entry {
    this.checkOpen();
    // the length was vouched for by the header checksum and fits inside the file
    const total = RECORD_HEADER_LEN + r.length;
    let rec: Buffer;
    if (total <= READ_AHEAD_MAX_RECORD) {
      rec = this.ahead.get(r.offset, total);
    } else {
      rec = Buffer.allocUnsafe(total);
      readFully(this.fd, rec, total, r.offset);
    }
    const payload = rec.subarray(RECORD_HEADER_LEN, total);
    const hh = parseRecordHeader(rec);
    if (typeof hh === 'string' || hh.length !== r.length || crc32(payload) !== hh.payloadCrc) {
      throw new BackupError(`${this.location}: the change record at offset ${r.offset} changed or was damaged since it was scanned`, this.location, r.offset);
    }
    let statements: string[];
    try {
      statements = decodeChangePayload(payload);
    } catch (e) {
      throw new BackupError(`${this.location}: change record at offset ${r.offset} does not decode: ${(e as Error).message}`, this.location, r.offset);
    }
    return { kind: 'change', version: r.version, offset: r.offset, statements };
  }

  /** Streams the payload of the snapshot (part) record `r` to `out` at `outAt`, checking its CRC; memory stays bounded. */
  copyRecordPayload(r: RecordInfo, out: number, outAt: number): void {
    this.checkOpen();
    const what = r.type === TYPE_SNAPSHOT_PART ? 'snapshot part record' : 'snapshot';
    const header = Buffer.allocUnsafe(RECORD_HEADER_LEN);
    readFully(this.fd, header, RECORD_HEADER_LEN, r.offset);
    const hh = parseRecordHeader(header);
    if (typeof hh === 'string' || hh.length !== r.length || hh.type !== r.type) {
      throw new BackupError(`${this.location}: the ${what} header at offset ${r.offset} changed since it was scanned`, this.location, r.offset);
    }
    const chunk = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(1, r.length)));
    let crc = 0;
    for (let done = 0; done < r.length; ) {
      const n = Math.min(chunk.length, r.length - done);
      readFully(this.fd, chunk, n, r.offset + RECORD_HEADER_LEN + done);
      const part = chunk.subarray(0, n);
      crc = crc32(part, crc);
      writeFully(out, part, outAt + done);
      done += n;
    }
    if (crc !== hh.payloadCrc) {
      throw new BackupError(`${this.location}: the ${what} at offset ${r.offset} fails its checksum`, this.location, r.offset);
    }
  }

  problems(): Problem[] {
    const g = this.grouping();
    const all = [...this.scan.corrupt, ...g.corrupt];
    if (g.dangling) all.push(g.dangling);
    if (this.scan.torn) all.push(this.scan.torn);
    return all.sort((a, b) => a.offset - b.offset);
  }

  stats(): BackupStats {
    const g = this.grouping();
    const ents = g.entries;
    return {
      format: 'v2',
      location: this.location,
      head: ents.length > 0 ? ents[ents.length - 1]!.version : 0,
      entries: ents.length,
      bytes: g.dangling ? g.dangling.offset : this.scan.validEnd,
    };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.ahead.release();
    closeSync(this.fd);
  }

  private checkOpen(): void {
    if (this.closed) throw new BackupError(`${this.location}: the reader is closed`, this.location);
  }
}

/**
 * A snapshot entry whose bytes are the payloads of `recs` (a whole snapshot record, or a chunked
 * snapshot's parts and final record, possibly in several segment files), concatenated. writeTo streams
 * them in bounded memory, checks every record's CRC and leaves no file behind on failure.
 */
export function snapshotEntry(
  location: string,
  version: number,
  offset: number,
  size: number,
  recs: readonly { reader: V2Reader; rec: RecordInfo }[],
): SnapshotEntry {
  return {
    kind: 'snapshot',
    version,
    offset,
    size,
    parts: recs.length,
    writeTo: (path: string) => {
      let out: number;
      try {
        out = openSync(path, 'wx', 0o600);
      } catch (e) {
        throw new BackupError(`cannot create ${path} for the snapshot at offset ${offset}: ${(e as Error).message}`, location, offset);
      }
      try {
        let at = 0;
        for (const { reader, rec } of recs) {
          reader.copyRecordPayload(rec, out, at);
          at += rec.length;
        }
        fsyncSync(out);
        closeSync(out);
      } catch (e) {
        try {
          closeSync(out);
        } catch {
          // already closed
        }
        try {
          unlinkSync(path);
        } catch {
          // nothing more to undo
        }
        throw asBackupError(e, location, `copying the snapshot at offset ${offset} to ${path}`);
      }
      fsyncDir(path);
    },
  };
}
