import { closeSync, fstatSync, fsyncSync, openSync, readSync, unlinkSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import type { BackupReader, BackupStats, HeaderVisitor, HeaderWalkOptions } from '../../backend.js';
import { BackupError, type Entry, type EntryHeader, type Problem, type SnapshotEntry } from '../../../engine/entries.js';
import { fsyncDir, openBackupFile, writeFully } from '../fsutil.js';
import { isPragmaOnly, pragmaMatters } from '../../../engine/versions.js';
import { changeStatementsAt, CHUNK, decodeChangePayload, FILE_HEADER_LEN, parseRecordHeader, RECORD_MAGIC, seedOfRecordHeader, PRAGMA_PROBE_MAX, RECORD_HEADER_LEN, RECORD_OVERHEAD, TYPE_CHANGE, TYPE_SNAPSHOT, TYPE_SNAPSHOT_PART } from './codec.js';
import { Planner } from '../../../engine/plan.js';
import { Grouper } from './group.js';
import { asBackupError, readFully } from './io.js';
import { layoutOf, readFileHeader, scanRecords, type RecordInfo, type ScanResult } from './scan.js';
import { FLAG_ENCRYPTED, FLAG_PRAGMA_ONLY, type FileEncryption, type RecordHeader } from './codec.js';
import { AuthError, lastAuthText, parsePrefix, prefixLen, TAG_LEN, type ChainCheck, type Prefix, type RecordCrypt } from '../../../crypto/records.js';
import { DecryptAhead } from '../../../crypto/decrypt-ahead.js';
import { ScanChain } from '../../../crypto/scan-chain.js';

/**
 * The v2 reader: one full forward scan at open (every record checked, nothing per record kept), then
 * walks of the records' headers (forEachHeader) and entries read in file order through one bounded
 * read-ahead window: memory does not grow with the backup.
 */

/** The error a reader's forEachHeader() throws for damage: a restore must never skip a record. */
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
  /** counts the reads into the buffer: bytes seen at one count are still there while it stays */
  fills = 0;

  constructor(
    private readonly fd: number,
    private readonly size: number,
  ) {}

  /** Bytes [off, off + n) of the file, n <= CHUNK; the view is valid until the next call. */
  get(off: number, n: number): Buffer {
    const i = this.index(off, n);
    return this.buf!.subarray(i, i + n);
  }

  /**
   * get() without the view, for the replay's path (a Buffer view per record cost more than the rest of
   * reading it): bytes [off, off + n) are at [i, i + n) of `bytes` for the returned i, until the next call.
   */
  index(off: number, n: number): number {
    if (off < this.start || off + n > this.start + this.len) this.fill(off, n);
    return off - this.start;
  }

  get bytes(): Buffer {
    return this.buf!;
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
    this.fills++;
    while (this.len < want) {
      const r = readSync(this.fd, buf, this.len, want - this.len, off + this.len);
      if (r <= 0) break;
      this.len += r;
    }
    if (this.len < need) throw new Error(`unexpected end of file at offset ${off + this.len}`);
  }
}

/** An entry found by a walk, with the records that hold it (one, or a chunked snapshot's parts and final record). */
export interface WalkedEntry {
  header: EntryHeader;
  size: number;
  recs: { reader: V2Reader; rec: RecordInfo }[];
}

/**
 * Turns the records of a walk into entries, as Grouper does for the scan. The scan already refused
 * badly grouped records, so anything unexpected here means the file changed since it was scanned.
 */
export class WalkGrouper {
  private run: { reader: V2Reader; rec: RecordInfo }[] = [];
  private runOffset = 0;
  private runSize = 0;

  constructor(private readonly changed: (offset: number, why: string) => Error) {}

  /** `offset`: the record's offset as the caller's entries are numbered (global for a segmented backup). */
  push(reader: V2Reader, rec: RecordInfo, offset: number): WalkedEntry | null {
    if (rec.type === TYPE_SNAPSHOT_PART) {
      if (this.run.length > 0 && this.run[0]!.rec.version !== rec.version) throw this.changed(offset, 'a snapshot part of another version');
      if (this.run.length === 0) {
        this.runOffset = offset;
        this.runSize = 0;
      }
      this.run.push({ reader, rec });
      this.runSize += rec.length;
      return null;
    }
    const n = this.run.length;
    if (rec.type === TYPE_SNAPSHOT) {
      if (rec.parts !== n || (n > 0 && this.run[0]!.rec.version !== rec.version)) throw this.changed(offset, 'a snapshot record whose parts do not match');
      const recs = this.run;
      recs.push({ reader, rec });
      this.run = [];
      return {
        header: { kind: 'snapshot', version: rec.version, offset: n > 0 ? this.runOffset : offset, pragmaOnly: false },
        size: (n > 0 ? this.runSize : 0) + rec.length,
        recs,
      };
    }
    if (n > 0) throw this.changed(offset, 'snapshot parts followed by a change record');
    return { header: { kind: 'change', version: rec.version, offset, pragmaOnly: rec.pragmaOnly }, size: rec.length, recs: [{ reader, rec }] };
  }

  /** true while a chunked snapshot's parts have been seen without their final record */
  get inRun(): boolean {
    return this.run.length > 0;
  }
}

/** Where a walk of the entries stops: the first damage (beforeDamage), else the end of the last whole entry. */
interface WalkBounds {
  /** damage (global offsets), sorted; empty when none */
  damage: Problem[];
  /** end of the last complete entry (a dangling run of parts at the end is not one) */
  end: number;
}

export class V2Reader implements BackupReader {
  readonly format = 'v2' as const;
  private readonly ahead: ReadAhead;
  private closed = false;
  /** the entry the current walk last visited, so read() of it needs no second look at the file */
  private lastWalked: WalkedEntry | null = null;
  /**
   * The header the walk parsed last, its offset, and the read-ahead fill it came from: while no read
   * replaced those bytes, readChange of that record uses it instead of checking the same 32 bytes again.
   */
  private walkedHeader: RecordHeader | null = null;
  private walkedAt = -1;
  private walkedFill = -1;
  /** an encrypted backup's cipher, once a key was given (setCrypt) */
  private crypt: RecordCrypt | null = null;
  /** decryptAhead() was asked for: the first change read starts the worker (if enough follows) */
  private aheadWanted = false;
  private aheadAlways = false;
  private decryptor: DecryptAhead | null = null;
  private aheadUsed = 0;

  private constructor(
    readonly location: string,
    private readonly fd: number,
    private readonly scan: ScanResult,
    private readonly grouped: { entries: number; head: number; corrupt: Problem[]; dangling: Problem | null; planner: Planner },
    readonly backupId: Buffer,
    readonly createdMs: number,
    size: number,
    /**
     * A damaged file header (magic or checksum): the header holds nothing a restore needs (every record
     * checks itself), so the records are still read, but the backup is reported damaged and a restore
     * needs --stop-at-damage (docs/format-v2.md, "File header"). It cuts no history.
     */
    readonly headerDamage: Problem | null = null,
    /** what the file header says about the key of an encrypted backup; null for a plain one */
    readonly encryption: FileEncryption | null = null,
    /** the record header CRC seed (recordSeedOf the file header; 0 before format 4) */
    private readonly seed = 0,
    /** an encrypted backup's chain as the open scan followed it */
    private readonly chained: ScanChain | null = null,
  ) {
    this.ahead = new ReadAhead(fd, size);
  }

  /**
   * An encrypted backup about to be read in file order (a restore): its change records are decrypted in
   * a worker thread ahead of the reads (src/crypto/decrypt-ahead.ts). Nothing for a plain one. `always`:
   * even on a single CPU (tests).
   */
  decryptAhead(opts: { always?: boolean } = {}): void {
    if (this.encryption === null) return;
    this.aheadWanted = true;
    if (opts.always) this.aheadAlways = true;
  }

  /** Change records whose plaintext the decrypting worker gave (decryptAhead), for tests and benches. */
  get decryptedAhead(): number {
    return this.aheadUsed;
  }

  /** The worker's plaintext of change record `r` whose header gives `crc`, or null: decrypt it here. */
  private takeDecrypted(r: RecordInfo, crc: number): Buffer | null {
    if (!this.aheadWanted || this.crypt === null) return null;
    if (this.decryptor === null) {
      const source = { fd: this.fd, seed: this.seed, end: this.dataEnd, maxRecord: READ_AHEAD_MAX_RECORD };
      this.decryptor = DecryptAhead.start(this.crypt, source, r.offset, this.aheadAlways);
      if (this.decryptor === null) {
        this.aheadWanted = false;
        return null;
      }
    }
    const got = this.decryptor.take(r.offset);
    if (got === null || got.crc !== crc || got.plain.length !== r.length - prefixLen(TYPE_CHANGE) - TAG_LEN) return null;
    this.crypt.lastAuthenticated = { version: r.version, timeMs: got.timeMs };
    this.aheadUsed++;
    return got.plain;
  }

  /** Decrypt with `crypt` from now on (an encrypted backup, after its key was checked: src/crypto/backup-crypt.ts). */
  setCrypt(crypt: RecordCrypt | null): void {
    this.crypt = crypt;
  }

  private needKey(offset: number): RecordCrypt {
    if (!this.crypt) {
      throw new BackupError(`${this.location} is an encrypted backup: reading its records needs its key`, this.location, offset);
    }
    return this.crypt;
  }

  private authFailed(r: RecordInfo, why: string): BackupError {
    return new BackupError(
      `${this.location}: the record at offset ${r.offset} (version ${r.version}) fails authentication: ${why} (${lastAuthText(this.crypt?.lastAuthenticated ?? null)})`,
      this.location,
      r.offset,
    );
  }

  private authenticated(r: RecordInfo, storedPayloadStart: Buffer): void {
    this.crypt!.lastAuthenticated = { version: r.version, timeMs: storedPayloadStart.readUInt32BE(24) * 0x1_0000_0000 + storedPayloadStart.readUInt32BE(28) };
  }

  /**
   * Reads, decrypts and authenticates the record `r` of an encrypted backup without keeping its plaintext
   * (bounded memory); returns its prefix and tag for the chain check.
   */
  authenticateRecord(r: RecordInfo): { prefix: Prefix; tag: Buffer } {
    const { prefixBuf, tag } = this.decryptRecord(r, null);
    return { prefix: parsePrefix(prefixBuf, r.type), tag };
  }

  /**
   * Streams the ciphertext of record `r` through its decipher in bounded chunks, handing each piece of
   * plaintext to `sink` (null: authenticate only). Throws unless the tag authenticates, so a caller that
   * wrote plaintext somewhere must discard it on a throw.
   */
  private decryptRecord(r: RecordInfo, sink: ((plain: Buffer) => void) | null): { prefixBuf: Buffer; tag: Buffer } {
    const crypt = this.needKey(r.offset);
    const p = prefixLen(r.type);
    if (r.length < p + TAG_LEN) throw this.authFailed(r, `its payload of ${r.length} bytes is shorter than an encrypted record's frame`);
    const at = r.offset + RECORD_HEADER_LEN;
    const prefixBuf = Buffer.allocUnsafe(p);
    readFully(this.fd, prefixBuf, p, at);
    const tag = Buffer.allocUnsafe(TAG_LEN);
    readFully(this.fd, tag, TAG_LEN, at + r.length - TAG_LEN);
    const d = crypt.decipher(this.meta(r), prefixBuf);
    d.setAuthTag(tag);
    const ctLen = r.length - p - TAG_LEN;
    const chunk = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(1, ctLen)));
    for (let done = 0; done < ctLen; ) {
      const n = Math.min(chunk.length, ctLen - done);
      readFully(this.fd, chunk, n, at + p + done);
      const plain = d.update(chunk.subarray(0, n));
      if (sink !== null) sink(plain);
      done += n;
    }
    try {
      d.final();
    } catch {
      throw this.authFailed(r, 'wrong key, or the record was damaged or forged');
    }
    this.authenticated(r, prefixBuf);
    return { prefixBuf, tag };
  }

  /** The chain-only step for record `r` from its stored prefix and tag (not authenticated here), through the read-ahead window. */
  chainStep(r: RecordInfo, chain: ChainCheck): string | null {
    const p = prefixLen(r.type);
    if (r.length < p + TAG_LEN) return `its payload of ${r.length} bytes is shorter than an encrypted record's frame`;
    const at = r.offset + RECORD_HEADER_LEN;
    return chain.step(r.type, r.version, this.ahead.get(at, p), () => this.ahead.get(at + r.length - TAG_LEN, TAG_LEN));
  }

  private meta(r: RecordInfo): { type: number; flags: number; version: number; parts: number } {
    return { type: r.type, flags: FLAG_ENCRYPTED | (r.type === TYPE_CHANGE && r.pragmaOnly ? FLAG_PRAGMA_ONLY : 0), version: r.version, parts: r.parts };
  }

  /** Zero bytes reserved after the data for the writer's next records (format 4): not data. */
  get reservedBytes(): number {
    return this.scan.reserved;
  }

  /**
   * Opens and checks every record (the full checksum scan), keeping counts and problems, nothing per
   * record, and plans a restore on the way (the entries before the first damage), which saves a walk.
   * `onRecord` sees every valid record (SegmentedReader groups records across its files). An encrypted
   * backup's chain is followed on the way, in `chain` (SegmentedReader's, across its files) or the reader's own.
   */
  static open(path: string, onRecord?: (r: RecordInfo, damagedBefore: boolean) => void, chain?: ScanChain): V2Reader {
    const fd = openBackupFile(path);
    try {
      const size = fstatSync(fd).size;
      const { info, damage } = readFileHeader(fd, size, path);
      const g = new Grouper();
      const planner = new Planner();
      let entries = 0;
      let head = 0;
      let layout = layoutOf(info);
      if (damage !== null) {
        // the ids the record CRC seed comes from are in the damaged header: take the seed from the first record
        const first = Buffer.alloc(RECORD_HEADER_LEN);
        if (size >= FILE_HEADER_LEN + RECORD_OVERHEAD && readSync(fd, first, 0, RECORD_HEADER_LEN, FILE_HEADER_LEN) === RECORD_HEADER_LEN && first.readUInt32BE(0) === RECORD_MAGIC) {
          const seed = seedOfRecordHeader(first);
          layout = { ...layout, seed, prealloc: seed !== 0 };
        }
      }
      const chained = info.encryption !== null ? (chain ?? new ScanChain()) : null;
      const scan = scanRecords(fd, size, path, (r, damagedBefore, win) => {
        onRecord?.(r, damagedBefore);
        chained?.push(r, win);
        const e = g.push(r);
        if (e) {
          entries++;
          head = e.version;
          if (!damagedBefore && g.corrupt.length === 0) planner.push(e);
        }
      }, layout);
      if (scan.unsupported) throw scan.unsupported;
      const headerDamage: Problem | null =
        damage === null
          ? null
          : {
              kind: 'corrupt',
              offset: 0,
              message:
                `the ${FILE_HEADER_LEN}-byte file header is damaged (${damage}); every record carries its own checksums, so the ` +
                `${scan.recordsValidated} record(s) after it were read and checked without it. 'clnvault restore --stop-at-damage' ` +
                `restores them; then re-create the backup with 'clnvault init'`,
            };
      return new V2Reader(path, fd, scan, { entries, head, corrupt: g.corrupt, dangling: g.dangling(), planner }, info.backupId, info.createdMs, size, headerDamage, info.encryption, layout.seed, chained);
    } catch (e) {
      closeSync(fd);
      throw asBackupError(e, path, 'cannot read the backup');
    }
  }

  /** The plan the open scan made (what planBackup would compute with a walk); throws on damage unless beforeDamage. */
  plannedAtOpen(opts: { beforeDamage?: boolean } = {}): Planner {
    const damage = this.damage();
    if (!opts.beforeDamage && (damage.length > 0 || this.headerDamage)) {
      throw damagedError(this.location, this.headerDamage ? [this.headerDamage, ...damage] : damage);
    }
    return this.grouped.planner;
  }

  /** Debug figure for tests and `inspect`: how many records the scan checked. */
  get recordsValidated(): number {
    return this.scan.recordsValidated;
  }

  private damage(): Problem[] {
    return [...this.scan.corrupt, ...this.grouped.corrupt].sort((a, b) => a.offset - b.offset);
  }

  private bounds(): WalkBounds {
    return { damage: this.damage(), end: this.grouped.dangling ? this.grouped.dangling.offset : this.dataEnd };
  }

  forEachHeader(visit: HeaderVisitor, opts: HeaderWalkOptions = {}): void {
    this.checkOpen();
    const { damage, end } = this.bounds();
    if (!opts.beforeDamage && (damage.length > 0 || this.headerDamage)) {
      throw damagedError(this.location, this.headerDamage ? [this.headerDamage, ...damage] : damage);
    }
    // with beforeDamage: only entries that end before the first damaged record
    const stop = damage.length > 0 ? Math.min(end, damage[0]!.offset) : end;
    const g = new WalkGrouper((o, why) => this.changedError(o, why));
    this.walkRecords(opts.from ?? FILE_HEADER_LEN, stop, (rec) => {
      const e = g.push(this, rec, rec.offset);
      if (e === null) return true;
      this.lastWalked = e;
      return visit(e.header) !== false;
    });
  }

  /**
   * Every data record (no seal) in file order, up to the first damage: the encrypted backup's chain check
   * (src/crypto/authenticate.ts). `visit` gets the record and its offset.
   */
  forEachRecord(visit: (reader: V2Reader, rec: RecordInfo, offset: number) => void): void {
    const damage = this.damage();
    const stop = damage.length > 0 ? Math.min(this.dataEnd, damage[0]!.offset) : this.dataEnd;
    this.walkRecords(FILE_HEADER_LEN, stop, (rec) => {
      visit(this, rec, rec.offset);
      return true;
    });
  }

  /** The chain as the open scan followed it (an encrypted backup), with the reader of each of its files. */
  scannedChain(): { chain: ScanChain; readers: readonly V2Reader[] } | null {
    return this.chained === null ? null : { chain: this.chained, readers: [this] };
  }

  /** Where the first damage is, or null (forEachRecord stops there). */
  firstDamage(): number | null {
    const d = this.damage();
    return d.length > 0 ? d[0]!.offset : null;
  }

  /**
   * Visits the valid records in [from, end), headers only (a small change's payload is decoded to tell
   * PRAGMA batches apart, as the scan does). `from` must be a record's offset. Returns where it stopped.
   */
  walkRecords(from: number, end: number, visit: (r: RecordInfo) => boolean): number {
    this.checkOpen();
    if (from < FILE_HEADER_LEN || from > end) throw this.changedError(from, `offset ${from} is outside the records`);
    let o = from;
    // the scan's rule (pragmaMatters): a change that does not move past the record before is decoded at any size
    let prev: number | null = null;
    while (o < end) {
      if (end - o < RECORD_OVERHEAD) throw this.changedError(o, 'a record cut short');
      const hi = this.ahead.index(o, RECORD_HEADER_LEN);
      const h = parseRecordHeader(this.ahead.bytes, this.seed, hi);
      if (typeof h === 'string') throw this.changedError(o, h);
      this.walkedHeader = h;
      this.walkedAt = o;
      this.walkedFill = this.ahead.fills;
      if (h.length > end - o - RECORD_OVERHEAD) throw this.changedError(o, 'a record longer than the data');
      let pragmaOnly = false;
      if (this.encryption !== null) {
        pragmaOnly = h.type === TYPE_CHANGE && (h.flags & FLAG_PRAGMA_ONLY) !== 0;
      } else if (h.type === TYPE_CHANGE && (h.length < PRAGMA_PROBE_MAX || pragmaMatters(prev, h.version))) {
        const at = o + RECORD_HEADER_LEN;
        try {
          pragmaOnly = isPragmaOnly(
            h.length <= CHUNK ? decodeChangePayload(this.ahead.get(at, h.length)) : changeStatementsAt((b, n, p) => readFully(this.fd, b, n, p), at, h.length),
          );
        } catch {
          // read() reports it; the scan already refused such a record
        }
      }
      prev = h.type === TYPE_CHANGE ? h.version : null;
      const rec: RecordInfo = { offset: o, type: h.type, version: h.version, length: h.length, pragmaOnly, parts: h.type === TYPE_SNAPSHOT ? h.keyId : 0 };
      o += RECORD_OVERHEAD + h.length;
      if (!visit(rec)) break;
    }
    return o;
  }

  private changedError(offset: number, why: string): BackupError {
    return new BackupError(
      `${this.location}: the record at offset ${offset} is not what the scan found (${why}): the file changed since it was opened, ` +
        `or that offset is not an entry`,
      this.location,
      offset,
    );
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

  /** The seal that ends this segment file ("segment `next` follows"), or null. */
  get seal(): ScanResult['seal'] {
    return this.scan.seal;
  }

  /** End of the last record that holds data: validEnd without a seal record. */
  get dataEnd(): number {
    return this.scan.seal ? this.scan.seal.offset : this.scan.validEnd;
  }

  read(h: EntryHeader): Entry {
    this.checkOpen();
    // the data's end only when the entry must be found: read() follows a walk nearly always
    const e = entryAt(this.location, h, this.lastWalked, () => this.bounds().end, (end, take) => {
      const g = new WalkGrouper((o, why) => this.changedError(o, why));
      this.walkRecords(h.offset, end, (rec) => {
        const found = g.push(this, rec, rec.offset);
        if (found !== null) take(found);
        return found === null;
      });
    });
    if (e.header.kind === 'snapshot') return snapshotEntry(this.location, e.header.version, e.header.offset, e.size, e.recs);
    return this.readChange(e.recs[0]!.rec);
  }

  /** The change record `r` (from walkRecords()), read and checked. */
  readChange(r: RecordInfo): Entry {
    this.checkOpen();
    // the length was vouched for by the header checksum and fits inside the file
    const total = RECORD_HEADER_LEN + r.length;
    let rec: Buffer;
    // where the record starts in rec: the read-ahead buffer is used in place
    let at = 0;
    let hh: RecordHeader | string | null = null;
    if (total <= READ_AHEAD_MAX_RECORD) {
      at = this.ahead.index(r.offset, total);
      rec = this.ahead.bytes;
      if (r.offset === this.walkedAt && this.ahead.fills === this.walkedFill) hh = this.walkedHeader;
    } else {
      rec = Buffer.allocUnsafe(total);
      readFully(this.fd, rec, total, r.offset);
    }
    hh ??= parseRecordHeader(rec, this.seed, at);
    if (this.encryption === null) {
      // the plain restore's path: CRC through a plain view, statements decoded in place
      if (typeof hh === 'string' || hh.length !== r.length || crc32(new Uint8Array(rec.buffer, rec.byteOffset + at + RECORD_HEADER_LEN, r.length)) !== hh.payloadCrc) {
        throw this.changedSince(r);
      }
      return { kind: 'change', version: r.version, offset: r.offset, statements: this.decodeAt(r, rec, at + RECORD_HEADER_LEN, at + total) };
    }
    let payload = rec.subarray(at + RECORD_HEADER_LEN, at + total);
    // an encrypted backup: decrypted ahead (the worker checked the payload's CRC and authenticated it), or here
    const plain = typeof hh !== 'string' && hh.length === r.length ? this.takeDecrypted(r, hh.payloadCrc) : null;
    if (plain === null && (typeof hh === 'string' || hh.length !== r.length || crc32(payload) !== hh.payloadCrc)) throw this.changedSince(r);
    if (plain !== null) payload = plain;
    else {
      try {
        const stored = payload;
        payload = this.needKey(r.offset).open(this.meta(r), stored).plain;
        this.authenticated(r, stored);
      } catch (e) {
        if (e instanceof AuthError) throw this.authFailed(r, 'wrong key, or the record was damaged or forged');
        throw e;
      }
    }
    return { kind: 'change', version: r.version, offset: r.offset, statements: this.decodeAt(r, payload, 0, payload.length) };
  }

  private changedSince(r: RecordInfo): BackupError {
    return new BackupError(`${this.location}: the change record at offset ${r.offset} changed or was damaged since it was scanned`, this.location, r.offset);
  }

  private decodeAt(r: RecordInfo, b: Buffer, start: number, end: number): string[] {
    try {
      return decodeChangePayload(b, start, end);
    } catch (e) {
      throw new BackupError(`${this.location}: change record at offset ${r.offset} does not decode: ${(e as Error).message}`, this.location, r.offset);
    }
  }

  /**
   * Streams the payload of the snapshot (part) record `r` to `out` at `outAt`, checking its CRC (and, encrypted,
   * decrypting and authenticating it); memory stays bounded. Returns the bytes written.
   */
  copyRecordPayload(r: RecordInfo, out: number, outAt: number): number {
    if (this.encryption !== null) return this.copyEncryptedPayload(r, out, outAt);
    this.checkOpen();
    const what = r.type === TYPE_SNAPSHOT_PART ? 'snapshot part record' : 'snapshot';
    const header = Buffer.allocUnsafe(RECORD_HEADER_LEN);
    readFully(this.fd, header, RECORD_HEADER_LEN, r.offset);
    const hh = parseRecordHeader(header, this.seed);
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
    return r.length;
  }

  private copyEncryptedPayload(r: RecordInfo, out: number, outAt: number): number {
    let written = 0;
    // on a throw the caller removes the output file: nothing unauthenticated is left behind
    this.decryptRecord(r, (plain) => {
      writeFully(out, plain, outAt + written);
      written += plain.length;
    });
    return written;
  }

  problems(): Problem[] {
    const g = this.grouped;
    const all = [...this.scan.corrupt, ...g.corrupt];
    if (this.headerDamage) all.push(this.headerDamage);
    if (g.dangling) all.push({ ...g.dangling, bytes: this.dataEnd - g.dangling.offset });
    if (this.scan.torn) all.push(this.scan.torn);
    return all.sort((a, b) => a.offset - b.offset);
  }

  stats(): BackupStats {
    const g = this.grouped;
    return { format: 'v2', location: this.location, head: g.head, entries: g.entries, bytes: g.dangling ? g.dangling.offset : this.dataEnd };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.decryptor?.close();
    this.ahead.release();
    this.lastWalked = null;
    closeSync(this.fd);
  }

  private checkOpen(): void {
    if (this.closed) throw new BackupError(`${this.location}: the reader is closed`, this.location);
  }
}

/**
 * The entry `h` names: the one a walk is on (`current`), else the first whole one a walk from h.offset to
 * the data's end finds (`walkFrom` calls `take` with it). A header that names no such entry is a BackupError.
 */
export function entryAt(
  location: string,
  h: EntryHeader,
  current: WalkedEntry | null,
  dataEnd: () => number,
  walkFrom: (end: number, take: (e: WalkedEntry) => void) => void,
): WalkedEntry {
  let e = current !== null && current.header.offset === h.offset ? current : null;
  const end = e === null ? dataEnd() : 0;
  if (e === null && h.offset >= FILE_HEADER_LEN && h.offset < end) {
    try {
      walkFrom(end, (found) => (e = found));
    } catch (err) {
      // an offset that holds no record: said below, as "no such record"
      if (!(err instanceof BackupError)) throw err;
    }
  }
  const got = e as WalkedEntry | null;
  if (!got || got.header.kind !== h.kind || got.header.version !== h.version) {
    throw new BackupError(`${location}: no ${h.kind} record with version ${h.version} at offset ${h.offset}`, location, h.offset);
  }
  return got;
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
        for (const { reader, rec } of recs) at += reader.copyRecordPayload(rec, out, at);
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
