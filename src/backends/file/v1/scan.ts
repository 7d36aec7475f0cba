import { fstatSync, openSync, readSync, statSync } from 'node:fs';
import { BackupError, type Problem } from '../../../engine/entries.js';
import { isPragmaOnly, pragmaMatters } from '../../../engine/versions.js';
import { PRAGMA_PROBE_LIMIT, readV1Header, SCAN_WINDOW, TYPE_CHANGE, TYPE_SNAPSHOT, V1_ENTRY_HEADER_SIZE, V1_HEADER_SIZE, type V1Header } from './header.js';

/** Scanning a v1 file: every entry checked, the acknowledged end found, damage reported (docs/format-v1.md). */

export interface ScannedEntry {
  offset: number;
  /** offset just past the payload */
  end: number;
  version: number;
  kind: 'change' | 'snapshot';
  pragmaOnly: boolean;
}

export interface ScanResult {
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
export class WindowReader {
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

export function readFully(fd: number, buf: Buffer, off: number, n: number, pos: number): number {
  let done = 0;
  while (done < n) {
    const r = readSync(fd, buf, off + done, n - done, pos + done);
    if (r === 0) break;
    done += r;
  }
  return done;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

export function decodeStatements(payload: Uint8Array): string[] {
  // UTF-8 never produces 0x00 except for U+0000, so splitting the decoded text is the same as splitting bytes.
  return strictUtf8.decode(payload).split('\u0000');
}

/**
 * The statements of the payload of `length` bytes at `at`, decoded one at a time (split on NUL bytes, the
 * same as splitting the decoded text), for payloads too large to hold at once.
 */
export function* statementsAt(fd: number, at: number, length: number): Generator<string> {
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
export function scanV1(fd: number, path: string, onEntry: (e: ScannedEntry, header: V1Header) => void): ScanResult {
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

export function openOrThrow(path: string, flags: number): number {
  try {
    return openSync(path, flags);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const what = code === 'ENOENT' ? 'does not exist' : (e as Error).message;
    throw new BackupError(`cannot open backup ${path}: ${what}`, path);
  }
}

export function checkIsFile(path: string): void {
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
