import {
  closeSync,
  constants,
  fdatasyncSync,
  fstatSync,
  fsyncSync,
  ftruncateSync,
  openSync,
  readSync,
  statSync,
  unlinkSync,
} from 'node:fs';
import { BackupError } from '../../engine/entries.js';
import type { Entry, EntryHeader, Problem } from '../../engine/entries.js';
import { isPragmaOnly, isValidDataVersion, pragmaMatters } from '../../engine/versions.js';
import { Planner } from '../../engine/plan.js';
import type { BackupReader, BackupStats, BackupWriter, HeaderVisitor, HeaderWalkOptions } from '../backend.js';
import { assertStillNamed, fsyncDir, writeFully } from './fsutil.js';
import { WriterLock } from './writer-lock.js';

/**
 * The reference plugin's FileBackend format ("file_version 1"), read and written byte-compatibly.
 * See docs/format-v1.md for the layout and for where clnvault deliberately differs from the reference
 * (it never trusts the header offsets, writes at the acknowledged end instead of O_APPEND, truncates
 * on rewind, and fdatasyncs the entry before the header).
 */

export const V1_HEADER_SIZE = 512;
export const V1_ENTRY_HEADER_SIZE = 9;
const TYPE_CHANGE = 1;
const TYPE_SNAPSHOT = 2;
const MAX_PAYLOAD = 0xffff_ffff;
/** PRAGMA-only batches are tiny (`PRAGMA foreign_keys = OFF;`); larger payloads are not worth reading during a scan. */
const PRAGMA_PROBE_LIMIT = 256;
const COPY_CHUNK = 1 << 20;
const SCAN_WINDOW = 64 * 1024;
const SQLITE_MAGIC = Buffer.from('SQLite format 3\0', 'latin1');

export interface V1Header {
  fileVersion: number;
  version: number;
  offsets0: number;
  prevVersion: number;
  offsets1: number;
  versionCount: number;
}

export function isV1(head: Buffer, fileSize: number): boolean {
  return head.length >= 4 && head.readUInt32BE(0) === 1 && fileSize >= V1_HEADER_SIZE;
}

/** The whole 512-byte block, padding included, so that a rewrite leaves no stale bytes from an older header. */
export function writeV1Header(h: Omit<V1Header, 'fileVersion'>): Buffer {
  const b = Buffer.alloc(V1_HEADER_SIZE);
  b.writeUInt32BE(1, 0);
  b.writeUInt32BE(h.version, 4);
  b.writeBigUInt64BE(BigInt(h.offsets0), 8);
  b.writeUInt32BE(h.prevVersion, 16);
  b.writeBigUInt64BE(BigInt(h.offsets1), 20);
  b.writeBigUInt64BE(BigInt(h.versionCount), 28);
  return b;
}

/** Parses the first 512 bytes; `path` is only used in error messages. */
export function readV1Header(buf: Buffer, path: string): V1Header {
  if (buf.length < V1_HEADER_SIZE) {
    throw new BackupError(
      `${path}: corrupt v1 backup header: expected ${V1_HEADER_SIZE} bytes, got ${buf.length}`,
      path,
      0,
    );
  }
  const fileVersion = buf.readUInt32BE(0);
  if (fileVersion !== 1) {
    throw new BackupError(`${path}: not a v1 backup: file_version is ${fileVersion}, expected 1`, path, 0);
  }
  const u64 = (at: number): number => {
    const v = buf.readBigUInt64BE(at);
    // Offsets beyond 2^53 cannot describe a real file; treating them as numbers would silently round.
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new BackupError(`${path}: corrupt v1 backup header: u64 field at byte ${at} is ${v}`, path, at);
    }
    return Number(v);
  };
  return {
    fileVersion,
    version: buf.readUInt32BE(4),
    offsets0: u64(8),
    prevVersion: buf.readUInt32BE(16),
    offsets1: u64(20),
    versionCount: u64(28),
  };
}

/** Creates an empty backup exactly as `backup-cli init` does for a node that never ran: 512 bytes, (1,0,512,0,0,0). */
export function createV1(path: string): void {
  let fd: number;
  try {
    // 0600: the change log holds the node's whole channel state.
    fd = openSync(path, 'wx', 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new BackupError(`${path} already exists; refusing to overwrite an existing backup`, path);
    }
    throw new BackupError(`cannot create ${path}: ${(e as Error).message}`, path);
  }
  try {
    writeFully(fd, writeV1Header({ version: 0, offsets0: V1_HEADER_SIZE, prevVersion: 0, offsets1: 0, versionCount: 0 }), 0);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    try {
      unlinkSync(path);
    } catch {
      // nothing more to undo
    }
    throw new BackupError(`cannot write ${path}: ${(e as Error).message}`, path);
  }
  closeSync(fd);
  fsyncDir(path);
}

// ---------------------------------------------------------------------------------------------------
// Scanning

interface ScannedEntry {
  offset: number;
  /** offset just past the payload */
  end: number;
  version: number;
  kind: 'change' | 'snapshot';
  pragmaOnly: boolean;
}

interface ScanResult {
  header: V1Header;
  size: number;
  /** end of the last entry whose version equals header.version (512 for an empty backup) */
  ackEnd: number;
  /** number of entries up to and including that one */
  ackCount: number;
  problems: Problem[];
}

/**
 * Positioned reads through a small window: most entries are a few hundred bytes, so one 64 KiB read
 * serves many entry headers instead of one syscall each.
 */
class WindowReader {
  private buf = Buffer.alloc(SCAN_WINDOW);
  private start = 0;
  private len = 0;

  constructor(
    private readonly fd: number,
    private readonly size: number,
  ) {}

  read(pos: number, n: number): Buffer {
    if (pos >= this.start && pos + n <= this.start + this.len) {
      return this.buf.subarray(pos - this.start, pos - this.start + n);
    }
    if (n > this.buf.length) this.buf = Buffer.alloc(n);
    const want = Math.min(this.buf.length, this.size - pos);
    const got = readFully(this.fd, this.buf, 0, want, pos);
    this.start = pos;
    this.len = got;
    return this.buf.subarray(0, Math.min(n, got));
  }
}

function readFully(fd: number, buf: Buffer, off: number, n: number, pos: number): number {
  let done = 0;
  while (done < n) {
    const r = readSync(fd, buf, off + done, n - done, pos + done);
    if (r === 0) break;
    done += r;
  }
  return done;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

function decodeStatements(payload: Uint8Array): string[] {
  // UTF-8 never produces 0x00 except for U+0000, so splitting the decoded text is the same as splitting bytes.
  return strictUtf8.decode(payload).split('\u0000');
}

/**
 * The statements of the payload of `length` bytes at `at`, decoded one at a time (split on NUL bytes, the
 * same as splitting the decoded text), for payloads too large to hold at once.
 */
function* statementsAt(fd: number, at: number, length: number): Generator<string> {
  const chunk = Buffer.allocUnsafe(Math.min(SCAN_WINDOW, Math.max(1, length)));
  let parts: Buffer[] = [];
  for (let done = 0; done < length; ) {
    const n = Math.min(chunk.length, length - done);
    if (readFully(fd, chunk, 0, n, at + done) !== n) throw new Error(`unexpected end of file at offset ${at + done}`);
    let from = 0;
    for (let z = chunk.indexOf(0, from); z >= 0 && z < n; z = chunk.indexOf(0, from)) {
      parts.push(Buffer.from(chunk.subarray(from, z)));
      yield strictUtf8.decode(Buffer.concat(parts));
      parts = [];
      from = z + 1;
    }
    parts.push(Buffer.from(chunk.subarray(from, n)));
    done += n;
  }
  yield strictUtf8.decode(Buffer.concat(parts));
}

/**
 * Walks every entry header from 512 to EOF. The header offsets are ignored on purpose: the reference's
 * rewind bug (D1) leaves them short of the real data, so only the header *version* is trusted, and the
 * acknowledged data ends with the last entry that carries it.
 */
function scanV1(fd: number, path: string, onEntry: (e: ScannedEntry, header: V1Header) => void): ScanResult {
  const size = fstatSync(fd).size;
  const hbuf = Buffer.alloc(V1_HEADER_SIZE);
  const got = readFully(fd, hbuf, 0, V1_HEADER_SIZE, 0);
  const header = readV1Header(hbuf.subarray(0, got), path);
  const win = new WindowReader(fd, size);

  let pos = V1_HEADER_SIZE;
  let count = 0;
  let ackEnd = header.version === 0 ? V1_HEADER_SIZE : -1;
  let ackCount = 0;
  let lastVersionSeen: number | undefined;
  /** version of the entry just before when it is a change (after a snapshot the next change is checked anyway) */
  let prevChange: number | null = null;
  /** why and where the scan stopped before EOF */
  let stop: { offset: number; why: string } | null = null;

  while (pos < size) {
    if (size - pos < V1_ENTRY_HEADER_SIZE) {
      stop = { offset: pos, why: `incomplete entry header (${size - pos} of ${V1_ENTRY_HEADER_SIZE} bytes)` };
      break;
    }
    const eh = win.read(pos, V1_ENTRY_HEADER_SIZE);
    const length = eh.readUInt32BE(0);
    const version = eh.readUInt32BE(4);
    const type = eh.readUInt8(8);
    if (type !== TYPE_CHANGE && type !== TYPE_SNAPSHOT) {
      stop = { offset: pos, why: `unknown entry type ${type}` };
      break;
    }
    const end = pos + V1_ENTRY_HEADER_SIZE + length;
    if (end > size) {
      stop = {
        offset: pos,
        why: `entry (version ${version}) claims ${length} payload bytes but only ${size - pos - V1_ENTRY_HEADER_SIZE} remain`,
      };
      break;
    }
    let pragmaOnly = false;
    if (type === TYPE_CHANGE && (length < PRAGMA_PROBE_LIMIT || pragmaMatters(prevChange, version))) {
      try {
        const at = pos + V1_ENTRY_HEADER_SIZE;
        pragmaOnly = isPragmaOnly(length <= SCAN_WINDOW ? decodeStatements(win.read(at, length)) : statementsAt(fd, at, length));
      } catch {
        // invalid UTF-8 is reported by read(); for planning it is simply not a PRAGMA batch
      }
    }
    onEntry({ offset: pos, end, version, kind: type === TYPE_CHANGE ? 'change' : 'snapshot', pragmaOnly }, header);
    prevChange = type === TYPE_CHANGE ? version : null;
    count++;
    lastVersionSeen = version;
    if (version === header.version) {
      ackEnd = end;
      ackCount = count;
    }
    pos = end;
  }

  if (ackEnd < 0) {
    const where = stop
      ? `; the scan stopped at byte ${stop.offset}: ${stop.why}`
      : lastVersionSeen === undefined
        ? '; the file holds no entries'
        : `; the last of its ${count} entries has version ${lastVersionSeen}`;
    throw new BackupError(
      `${path}: corrupt v1 backup: header says version ${header.version} but no entry holds it${where}`,
      path,
      stop?.offset,
    );
  }

  const problems: Problem[] = [];
  const orphans = count - ackCount;
  if (orphans > 0) {
    problems.push({
      kind: 'orphan',
      offset: ackEnd,
      bytes: (stop ? stop.offset : size) - ackEnd,
      message:
        `${orphans} complete entr${orphans === 1 ? 'y' : 'ies'} after the acknowledged head (version ` +
        `${header.version}) were written but never recorded in the header (a crash between the entry and ` +
        `the header write); they are not part of the backup`,
    });
  }
  if (stop) {
    problems.push({
      kind: 'torn-tail',
      offset: stop.offset,
      bytes: size - stop.offset,
      message: `${size - stop.offset} unacknowledged byte(s) at the end of the file: ${stop.why}`,
    });
  }
  return { header, size, ackEnd, ackCount, problems };
}

function openOrThrow(path: string, flags: number): number {
  try {
    return openSync(path, flags);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const what = code === 'ENOENT' ? 'does not exist' : (e as Error).message;
    throw new BackupError(`cannot open backup ${path}: ${what}`, path);
  }
}

function checkIsFile(path: string): void {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new BackupError(
      `cannot open backup ${path}: ${code === 'ENOENT' ? 'does not exist' : (e as Error).message}`,
      path,
    );
  }
  if (!st.isFile()) throw new BackupError(`${path} is not a regular file (a v1 backup is a single file)`, path);
}

// ---------------------------------------------------------------------------------------------------
// Reader

export class V1Reader implements BackupReader {
  readonly format = 'v1' as const;
  private fd: number | null;

  private constructor(
    readonly location: string,
    fd: number,
    private readonly scan: ScanResult,
    private readonly planner: Planner,
  ) {
    this.fd = fd;
  }

  static open(path: string): V1Reader {
    checkIsFile(path);
    const fd = openOrThrow(path, constants.O_RDONLY);
    try {
      // The scan keeps nothing per entry (forEachHeader walks the acknowledged entries again) but plans
      // on the way. Orphans after the acknowledged head are scanned too, so the plan is kept as of the
      // last entry carrying the head's version (a copy is a few segments).
      const planner = new Planner();
      let acked = new Planner();
      const scan = scanV1(fd, path, (e, header) => {
        planner.push({ kind: e.kind, version: e.version, offset: e.offset, pragmaOnly: e.pragmaOnly });
        if (e.version === header.version) acked = planner.clone();
      });
      return new V1Reader(path, fd, scan, acked);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** The plan the open scan made, up to the acknowledged head (what planBackup would compute with a walk). */
  plannedAtOpen(): Planner {
    return this.planner;
  }

  /** The header as found on disk (its offsets may be wrong in files written by the reference). */
  header(): V1Header {
    return { ...this.scan.header };
  }

  forEachHeader(visit: HeaderVisitor, opts: HeaderWalkOptions = {}): void {
    const fd = this.requireFd();
    const path = this.location;
    const end = this.scan.ackEnd;
    const from = opts.from ?? V1_HEADER_SIZE;
    if (from < V1_HEADER_SIZE || (from >= end && from !== V1_HEADER_SIZE)) {
      throw new BackupError(`${path}: no acknowledged entry at offset ${from}`, path, from);
    }
    const win = new WindowReader(fd, end);
    // the scan's rule (pragmaMatters): a change that does not move past the entry before is decoded at any size
    let prevChange: number | null = null;
    for (let pos = from; pos < end; ) {
      const eh = win.read(pos, V1_ENTRY_HEADER_SIZE);
      const length = eh.length === V1_ENTRY_HEADER_SIZE ? eh.readUInt32BE(0) : -1;
      const version = eh.length === V1_ENTRY_HEADER_SIZE ? eh.readUInt32BE(4) : 0;
      const type = eh.length === V1_ENTRY_HEADER_SIZE ? eh.readUInt8(8) : 0;
      const next = pos + V1_ENTRY_HEADER_SIZE + length;
      if (length < 0 || (type !== TYPE_CHANGE && type !== TYPE_SNAPSHOT) || next > end) {
        throw new BackupError(
          `${path}: the entry at offset ${pos} is not the one found when the file was opened: the file changed underneath the reader` +
            (opts.from !== undefined ? ` (or offset ${opts.from} is not an entry)` : ''),
          path,
          pos,
        );
      }
      let pragmaOnly = false;
      if (type === TYPE_CHANGE && (length < PRAGMA_PROBE_LIMIT || pragmaMatters(prevChange, version))) {
        try {
          const at = pos + V1_ENTRY_HEADER_SIZE;
          pragmaOnly = isPragmaOnly(length <= SCAN_WINDOW ? decodeStatements(win.read(at, length)) : statementsAt(fd, at, length));
        } catch {
          // invalid UTF-8 is reported by read(); for planning it is simply not a PRAGMA batch
        }
      }
      prevChange = type === TYPE_CHANGE ? version : null;
      if (visit({ kind: type === TYPE_CHANGE ? 'change' : 'snapshot', version, offset: pos, pragmaOnly }) === false) return;
      pos = next;
    }
  }

  problems(): Problem[] {
    return this.scan.problems.map((p) => ({ ...p }));
  }

  read(h: EntryHeader): Entry {
    const fd = this.requireFd();
    const path = this.location;
    if (h.offset < V1_HEADER_SIZE || h.offset >= this.scan.ackEnd) {
      throw new BackupError(`${path}: no acknowledged entry at offset ${h.offset}`, path, h.offset);
    }
    const eh = Buffer.alloc(V1_ENTRY_HEADER_SIZE);
    if (readFully(fd, eh, 0, V1_ENTRY_HEADER_SIZE, h.offset) !== V1_ENTRY_HEADER_SIZE) {
      throw new BackupError(`${path}: entry at offset ${h.offset} is cut short (file changed since it was opened?)`, path, h.offset);
    }
    const length = eh.readUInt32BE(0);
    const version = eh.readUInt32BE(4);
    const type = eh.readUInt8(8);
    const kind = type === TYPE_CHANGE ? 'change' : type === TYPE_SNAPSHOT ? 'snapshot' : null;
    if (kind !== h.kind || version !== h.version || h.offset + V1_ENTRY_HEADER_SIZE + length > this.scan.ackEnd) {
      throw new BackupError(
        `${path}: entry at offset ${h.offset} is not the ${h.kind} version ${h.version} found when the file was ` +
          `opened (type ${type}, version ${version}, ${length} bytes): the file changed underneath the reader`,
        path,
        h.offset,
      );
    }
    const payloadAt = h.offset + V1_ENTRY_HEADER_SIZE;
    if (kind === 'snapshot') {
      return {
        kind: 'snapshot',
        version,
        offset: h.offset,
        size: length,
        writeTo: (dest: string) => this.copyOut(payloadAt, length, dest, h.offset),
      };
    }
    const payload = Buffer.alloc(length);
    if (readFully(fd, payload, 0, length, payloadAt) !== length) {
      throw new BackupError(`${path}: entry at offset ${h.offset} is cut short`, path, h.offset);
    }
    let statements: string[];
    try {
      statements = decodeStatements(payload);
    } catch {
      throw new BackupError(
        `${path}: change entry version ${version} at offset ${h.offset} is not valid UTF-8 (corrupt payload)`,
        path,
        h.offset,
      );
    }
    return { kind: 'change', version, offset: h.offset, statements };
  }

  stats(): BackupStats {
    return {
      format: 'v1',
      location: this.location,
      head: this.scan.header.version,
      entries: this.scan.ackCount,
      bytes: this.scan.ackEnd,
    };
  }

  close(): void {
    if (this.fd === null) return;
    closeSync(this.fd);
    this.fd = null;
  }

  private requireFd(): number {
    if (this.fd === null) throw new BackupError(`${this.location}: reader is closed`, this.location);
    return this.fd;
  }

  private copyOut(from: number, length: number, dest: string, entryOffset: number): void {
    const src = this.requireFd();
    let out: number;
    try {
      out = openSync(dest, 'wx', 0o600);
    } catch (e) {
      throw new BackupError(`cannot create ${dest}: ${(e as Error).message}`, this.location, entryOffset);
    }
    try {
      const buf = Buffer.alloc(Math.min(COPY_CHUNK, Math.max(length, 1)));
      let done = 0;
      while (done < length) {
        const n = Math.min(buf.length, length - done);
        if (readFully(src, buf, 0, n, from + done) !== n) {
          throw new BackupError(`${this.location}: snapshot at offset ${entryOffset} is cut short`, this.location, entryOffset);
        }
        writeFully(out, buf.subarray(0, n), done);
        done += n;
      }
      fsyncSync(out);
    } catch (e) {
      closeSync(out);
      // A half-written database must not be mistaken for a restored one.
      try {
        unlinkSync(dest);
      } catch {
        // already gone
      }
      throw e;
    }
    closeSync(out);
  }
}

// ---------------------------------------------------------------------------------------------------
// Writer

interface TailEntry {
  offset: number;
  end: number;
  version: number;
  kind: 'change' | 'snapshot';
}

/**
 * The newest acknowledged entries, enough for dropHead() without keeping the whole index in memory:
 * the trailing run of entries with the head version, plus up to two entries before it (the new last
 * entry after a drop, and the one before that for the header's prev_version).
 */
class Tail {
  entries: TailEntry[] = [];
  /** index in `entries` of the first entry of the trailing same-version run */
  runStart = 0;

  push(e: TailEntry): void {
    const last = this.entries[this.entries.length - 1];
    if (!last || last.version !== e.version) this.runStart = this.entries.length;
    this.entries.push(e);
    if (this.runStart > 2 && this.entries.length > 32) {
      const cut = this.runStart - 2;
      this.entries.splice(0, cut);
      this.runStart -= cut;
    }
  }

  last(): TailEntry | undefined {
    return this.entries[this.entries.length - 1];
  }

  /** The run is known to be complete when an older entry precedes it here or it starts at the first entry of the file. */
  runIsComplete(): boolean {
    return this.runStart > 0 || this.entries.length === 0 || this.entries[0]!.offset === V1_HEADER_SIZE;
  }
}

export class V1Writer implements BackupWriter {
  readonly format = 'v1' as const;
  private fd: number | null;
  private lock: WriterLock | null;
  private tail: Tail;
  private count: number;
  private end: number;
  /** set after a failed write: the in-memory state may no longer describe the file, so only reopening is safe */
  private broken: string | null = null;

  private constructor(
    readonly location: string,
    fd: number,
    lock: WriterLock,
    tail: Tail,
    count: number,
    end: number,
    private readonly fixed: Problem[],
  ) {
    this.fd = fd;
    this.lock = lock;
    this.tail = tail;
    this.count = count;
    this.end = end;
  }

  /** `heldLock`: reopen under a writer lock this process already holds (after compaction swapped the file). */
  static open(path: string, heldLock?: WriterLock): V1Writer {
    // Checked before locking so that a mistyped path does not leave a `<path>.writer` file behind.
    checkIsFile(path);
    const lock = heldLock ?? WriterLock.acquire(path);
    let fd: number | null = null;
    try {
      fd = openOrThrow(path, constants.O_RDWR);
      const { tail, scan } = V1Writer.scanTail(fd, path);
      if (scan.ackEnd < scan.size) {
        // Unacknowledged bytes would otherwise sit between the head and the next entry; cutting them
        // keeps the file a plain sequence that the reference reader also understands.
        ftruncateSync(fd, scan.ackEnd);
        fdatasyncSync(fd);
      }
      return new V1Writer(path, fd, lock, tail, scan.ackCount, scan.ackEnd, scan.problems);
    } catch (e) {
      if (fd !== null) closeSync(fd);
      if (!heldLock) lock.release();
      throw e;
    }
  }

  private static scanTail(fd: number, path: string): { tail: Tail; scan: ScanResult } {
    const rolling = new Tail();
    let atHead = new Tail();
    const scan = scanV1(fd, path, (e, header) => {
      rolling.push({ offset: e.offset, end: e.end, version: e.version, kind: e.kind });
      // Entries after the last one holding the header version are orphans: remember the window as it was there.
      if (e.version === header.version) {
        atHead = new Tail();
        atHead.entries = rolling.entries.slice();
        atHead.runStart = rolling.runStart;
      }
    });
    return { tail: atHead, scan };
  }

  /**
   * Compaction renamed a new file over the backup: switch to it. The writer lock stays held (it lives on
   * `<path>.writer`, which the rename does not touch), so no other writer can slip in between.
   */
  reopen(): void {
    this.requireUsable();
    const next = V1Writer.open(this.location, this.lock!);
    closeSync(this.fd!);
    this.fd = next.fd;
    this.tail = next.tail;
    this.count = next.count;
    this.end = next.end;
  }

  /** Bytes of acknowledged data (entries and header included). */
  endOffset(): number {
    return this.end;
  }

  head(): number {
    return this.tail.last()?.version ?? 0;
  }

  isEmpty(): boolean {
    return this.count === 0;
  }

  headIsSnapshot(): boolean {
    return this.tail.last()?.kind === 'snapshot';
  }

  repaired(): Problem[] {
    return this.fixed.map((p) => ({ ...p }));
  }

  appendChange(version: number, statements: readonly string[]): number {
    this.checkVersion(version);
    for (let i = 0; i < statements.length; i++) {
      const s = statements[i]!;
      if (s.includes('\u0000')) {
        throw new BackupError(
          `${this.location}: statement ${i} of version ${version} contains a NUL character, which the v1 format ` +
            `uses as the statement separator; it cannot be stored without corrupting the batch`,
          this.location,
        );
      }
      if (LONE_SURROGATE.test(s)) {
        throw new BackupError(
          `${this.location}: statement ${i} of version ${version} contains an unpaired UTF-16 surrogate, which has ` +
            `no UTF-8 encoding; storing it would silently change the statement`,
          this.location,
        );
      }
    }
    const payload = Buffer.from(statements.join('\u0000'), 'utf8');
    if (payload.length > MAX_PAYLOAD) {
      throw new BackupError(
        `${this.location}: change version ${version} is ${payload.length} bytes; a v1 entry holds at most ${MAX_PAYLOAD}`,
        this.location,
      );
    }
    const fd = this.requireUsable();
    const at = this.end;
    const buf = Buffer.alloc(V1_ENTRY_HEADER_SIZE + payload.length);
    buf.writeUInt32BE(payload.length, 0);
    buf.writeUInt32BE(version, 4);
    buf.writeUInt8(TYPE_CHANGE, 8);
    payload.copy(buf, V1_ENTRY_HEADER_SIZE);
    this.guard(() => {
      writeFully(fd, buf, at);
      fdatasyncSync(fd);
      assertStillNamed(fd, this.location);
    }, at);
    this.commitAppend({ offset: at, end: at + buf.length, version, kind: 'change' });
    return buf.length;
  }

  appendSnapshotFile(version: number, dbPath: string): void {
    this.checkVersion(version);
    const fd = this.requireUsable();
    let src: number;
    try {
      src = openSync(dbPath, 'r');
    } catch (e) {
      throw new BackupError(`cannot read snapshot source ${dbPath}: ${(e as Error).message}`, this.location);
    }
    try {
      const size = fstatSync(src).size;
      if (size > MAX_PAYLOAD) {
        throw new BackupError(
          `${this.location}: snapshot ${dbPath} is ${size} bytes; a v1 entry holds at most ${MAX_PAYLOAD} (use the v2 format)`,
          this.location,
        );
      }
      const magic = Buffer.alloc(SQLITE_MAGIC.length);
      if (readFully(src, magic, 0, magic.length, 0) !== magic.length || !magic.equals(SQLITE_MAGIC)) {
        throw new BackupError(`${dbPath} is not an SQLite database; refusing to store it as a snapshot`, this.location);
      }
      const at = this.end;
      this.guard(() => {
        const eh = Buffer.alloc(V1_ENTRY_HEADER_SIZE);
        eh.writeUInt32BE(size, 0);
        eh.writeUInt32BE(version, 4);
        eh.writeUInt8(TYPE_SNAPSHOT, 8);
        writeFully(fd, eh, at);
        const buf = Buffer.alloc(Math.min(COPY_CHUNK, Math.max(size, 1)));
        let done = 0;
        while (done < size) {
          const n = readFully(src, buf, 0, Math.min(buf.length, size - done), done);
          if (n === 0) throw new Error(`${dbPath} shrank while it was being copied (${done} of ${size} bytes)`);
          writeFully(fd, buf.subarray(0, n), at + V1_ENTRY_HEADER_SIZE + done);
          done += n;
        }
        fdatasyncSync(fd);
      }, at);
      this.commitAppend({ offset: at, end: at + V1_ENTRY_HEADER_SIZE + size, version, kind: 'snapshot' });
    } finally {
      closeSync(src);
    }
  }

  dropHead(): number {
    const fd = this.requireUsable();
    if (this.count === 0) return 0;
    // The new last entry's predecessor fills the header's prev_version; if it slid out of the window
    // (a second rewind in a row), one header-only rescan recovers it rather than writing a guess.
    const t = this.tail;
    if (!t.runIsComplete() || (t.runStart === 1 && t.entries[0]!.offset !== V1_HEADER_SIZE)) this.rescan();
    const entries = this.tail.entries;
    const run = entries.slice(this.tail.runStart);
    const snapshot = run.find((e) => e.kind === 'snapshot');
    if (snapshot) {
      throw new BackupError(
        `${this.location}: refusing to drop the snapshot at offset ${snapshot.offset} (version ${snapshot.version}): ` +
          `a snapshot is committed state, never an uncommitted transaction`,
        this.location,
        snapshot.offset,
      );
    }
    const newLast = entries[this.tail.runStart - 1];
    const beforeLast = entries[this.tail.runStart - 2];
    const newEnd = run[0]!.offset;
    const remaining = this.count - run.length;
    const header = writeV1Header({
      version: newLast?.version ?? 0,
      offsets0: newEnd,
      // As the reference would have written them when newLast was appended; unknown (0) if it is out of the window.
      prevVersion: beforeLast?.version ?? 0,
      offsets1: newLast?.offset ?? 0,
      versionCount: remaining,
    });
    // Header first: if we crash before the truncate, the dropped entries are orphans the next open cuts.
    // Truncating first would leave a header naming a version no entry holds, i.e. an unreadable backup.
    this.guard(() => {
      writeFully(fd, header, 0);
      fdatasyncSync(fd);
      ftruncateSync(fd, newEnd);
      fdatasyncSync(fd);
    }, newEnd);
    this.count = remaining;
    this.end = newEnd;
    entries.length = this.tail.runStart;
    this.recomputeRunStart();
    return this.head();
  }

  stats(): BackupStats {
    return { format: 'v1', location: this.location, head: this.head(), entries: this.count, bytes: this.end };
  }

  close(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      this.fd = null;
    }
    if (this.lock) {
      this.lock.release();
      this.lock = null;
    }
  }

  private commitAppend(e: TailEntry): void {
    const fd = this.fd!;
    const header = writeV1Header({
      version: e.version,
      offsets0: e.end,
      // The reference sets P <- B even when they are equal (a PRAGMA batch after its transaction).
      prevVersion: this.head(),
      offsets1: e.offset,
      versionCount: this.count + 1,
    });
    this.guard(() => {
      writeFully(fd, header, 0);
      fdatasyncSync(fd);
    }, e.offset);
    this.tail.push(e);
    this.count++;
    this.end = e.end;
  }

  private rescan(): void {
    const { tail, scan } = V1Writer.scanTail(this.fd!, this.location);
    if (scan.ackEnd !== this.end || scan.ackCount !== this.count) {
      this.broken = `the file changed underneath the writer (expected ${this.end} bytes / ${this.count} entries)`;
      throw new BackupError(`${this.location}: ${this.broken}`, this.location);
    }
    this.tail = tail;
  }

  private recomputeRunStart(): void {
    const es = this.tail.entries;
    let i = es.length - 1;
    while (i > 0 && es[i - 1]!.version === es[i]!.version) i--;
    this.tail.runStart = Math.max(i, 0);
  }

  private checkVersion(version: number): void {
    if (!isValidDataVersion(version)) {
      throw new BackupError(`${this.location}: ${version} is not a valid data_version (u32)`, this.location);
    }
  }

  private requireUsable(): number {
    if (this.fd === null) throw new BackupError(`${this.location}: writer is closed`, this.location);
    if (this.broken) {
      throw new BackupError(`${this.location}: writer unusable after an earlier failure (${this.broken}); reopen the backup`, this.location);
    }
    return this.fd;
  }

  /** Any I/O failure leaves the file in a state only a fresh open() (scan + repair) can be sure about. */
  private guard(fn: () => void, offset: number): void {
    try {
      fn();
    } catch (e) {
      this.broken = (e as Error).message;
      throw new BackupError(`${this.location}: write failed at offset ${offset}: ${(e as Error).message}`, this.location, offset);
    }
  }
}

const LONE_SURROGATE = /\p{Cs}/u;
