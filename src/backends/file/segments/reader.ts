import { statSync } from 'node:fs';
import { type RecordCrypt } from '../../../crypto/records.js';
import { ScanChain } from '../../../crypto/scan-chain.js';
import { basename } from 'node:path';
import type { BackupReader, BackupStats, HeaderVisitor, HeaderWalkOptions } from '../../backend.js';
import { BackupError, type Entry, type EntryHeader, type Problem } from '../../../engine/entries.js';
import { Planner } from '../../../engine/plan.js';
import {
  damagedError,
  FILE_HEADER_LEN,
  Grouper,
  entryAt,
  snapshotEntry,
  V2Reader,
  WalkGrouper,
  type WalkedEntry,
  type FileEncryption,
  type RecordInfo,
} from '../v2.js';
import { openLive } from '../live-read.js';
import { discoverSegments, hex8, sealOf, segmentPath } from './layout.js';

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

  /**
   * The backup as it stands. A writer may be appending and rolling over meanwhile (`clnvault status` on a
   * live node, the server's reads): a segment it seals during the read is followed to its successor, and
   * a read that fails or finds damage while the files changed under it is taken again (live-read.ts), so
   * that a roll-over in progress is never reported as damage. Damage that stays put is reported.
   */
  static open(path: string): SegmentedReader {
    return openLive(path, () => SegmentedReader.openOnce(path));
  }

  /** One read as the set stands, not taken again: for a caller that runs its own openLive (open.ts). */
  static openOnce(path: string): SegmentedReader {
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
    // an encrypted backup's chain runs across the files: one ScanChain follows it through every scan
    const chain = new ScanChain();
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
        chain.file = i;
        chain.base = b;
        const r = V2Reader.open(seg.path, (rec, damagedBefore) => {
          const e = g.push({ ...rec, offset: rec.offset + b });
          if (e) {
            entries++;
            head = e.version;
            damaged ||= damagedBefore || g.corrupt.length > 0;
            if (!damaged) planner.push(e);
          }
        }, chain);
        if (r.rawProblems().some((p) => p.kind === 'corrupt')) damaged = true;
        readers.push(r);
        // sealed while we read: the writer made its successor (durably) before the seal, so it is there now
        if (i === segs.length - 1 && r.seal && !set.gap) {
          const now = discoverSegments(path, { allowTornLast: true, lenient: true });
          if (now.first.setId === set.first.setId && now.segments.length > segs.length) segs.push(now.segments[segs.length]!);
        }
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

  /** The chain as the segments' open scans followed it (an encrypted backup). */
  scannedChain(): { chain: ScanChain; readers: readonly V2Reader[] } | null {
    const own = this.readers[0]!.scannedChain();
    // only if it ran through every file (a segment whose header says otherwise is walked, as before)
    if (own === null || this.readers.some((r) => r.scannedChain()?.chain !== own.chain)) return null;
    return { chain: own.chain, readers: this.readers };
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
    const e = entryAt(this.location, h, this.lastWalked, () => this.end(), (end, take) =>
      this.walk(h.offset, end, (w) => {
        take(w);
        return false;
      }),
    );
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
