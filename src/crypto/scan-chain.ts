import { RECORD_HEADER_LEN } from '../backends/file/v2/codec.js';
import type { FileWindow } from '../backends/file/v2/io.js';
import type { RecordInfo } from '../backends/file/v2/scan.js';
import { ChainCheck, prefixLen, TAG_LEN } from './records.js';

/** A record the chain passed, located: which file of the backup (0 for a single file), the record, its global offset. */
export interface ChainedRecord {
  file: number;
  rec: RecordInfo;
  offset: number;
}

/**
 * An encrypted backup's chain, followed during the reader's open scan from the stored prefixes and tags
 * (no key needed; docs/encryption.md, "The chain"), while the scan has each record's bytes in its window
 * anyway: a restore then needs no second pass over the records for it. Nothing per record is kept: the
 * expected link, a count, the newest record and the first break (after which it stops following).
 * One ScanChain runs across the files of a segmented backup, in order.
 */
export class ScanChain {
  private readonly chain = new ChainCheck();
  /** set by the caller before each file's scan: its index, and what makes its offsets global */
  file = 0;
  base = 0;
  /** the newest record that follows the chain (at a break: the record before it) */
  newest: ChainedRecord | null = null;
  /** the first record that does not follow, and why; null while the chain holds */
  broken: (ChainedRecord & { why: string }) | null = null;

  get records(): number {
    return this.chain.records;
  }

  /** The version ChainCheck reports as newest (the record before a break, or the last one). */
  get newestVersion(): number | null {
    return this.chain.newestVersion;
  }

  /** One valid data record of the scan, in file order; `win` holds its bytes. */
  push(rec: RecordInfo, win: FileWindow): void {
    if (this.broken !== null) return;
    const p = prefixLen(rec.type);
    const at = rec.offset + RECORD_HEADER_LEN;
    const why =
      rec.length < p + TAG_LEN
        ? `its payload of ${rec.length} bytes is shorter than an encrypted record's frame`
        : this.chain.step(rec.type, rec.version, win.ahead(at, p), () => win.ahead(at + rec.length - TAG_LEN, TAG_LEN));
    const here = { file: this.file, rec, offset: rec.offset + this.base };
    if (why !== null) this.broken = { ...here, why };
    else this.newest = here;
  }
}
