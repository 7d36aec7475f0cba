import { closeSync, constants, fdatasyncSync, fstatSync, ftruncateSync, openSync } from 'node:fs';
import { BackupError, type Problem } from '../../../engine/entries.js';
import { isValidDataVersion } from '../../../engine/versions.js';
import type { BackupStats, BackupWriter } from '../../backend.js';
import { assertStillNamed, writeFully } from '../fsutil.js';
import { WriterLock } from '../writer-lock.js';
import { COPY_CHUNK, MAX_PAYLOAD, SQLITE_MAGIC, TYPE_CHANGE, TYPE_SNAPSHOT, V1_ENTRY_HEADER_SIZE, V1_HEADER_SIZE, writeV1Header } from './header.js';
import { checkIsFile, openOrThrow, readFully, scanV1, type ScanResult } from './scan.js';

/**
 * Writing a v1 file as the reference does, byte for byte, but durably: the entry fdatasynced before the
 * header that acknowledges it, writes at the acknowledged end (not O_APPEND), a rewind truncates.
 */

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

