import { closeSync, constants, fsyncSync, openSync, unlinkSync } from 'node:fs';
import { BackupError, type Entry, type EntryHeader, type Problem } from '../../../engine/entries.js';
import { isPragmaOnly, pragmaMatters } from '../../../engine/versions.js';
import { Planner } from '../../../engine/plan.js';
import type { BackupReader, BackupStats, HeaderVisitor, HeaderWalkOptions } from '../../backend.js';
import { writeFully } from '../fsutil.js';
import { COPY_CHUNK, PRAGMA_PROBE_LIMIT, SCAN_WINDOW, TYPE_CHANGE, TYPE_SNAPSHOT, V1_ENTRY_HEADER_SIZE, V1_HEADER_SIZE, type V1Header } from './header.js';
import { checkIsFile, decodeStatements, openOrThrow, readFully, scanV1, statementsAt, WindowReader, type ScanResult } from './scan.js';

/** Reading a v1 file: entries, headers and plans for restore, verify and inspect, from one scan. */
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

