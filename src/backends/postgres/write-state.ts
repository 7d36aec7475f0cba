import { rmSync } from 'node:fs';
import type { BackupStats } from '../backend.js';
import { isPragmaOnly } from '../../engine/versions.js';
import type { KeyLike } from '../../crypto/backup-crypt.js';
import { LINK_LEN, type RecordCrypt } from '../../crypto/records.js';
import { encryptSnapshotFile, pgCrypt, sealChange } from './crypt.js';
import type { HeadInfo, PgEncryption, PgRequest } from './protocol.js';

/**
 * What the two PostgreSQL writers share (writer.ts through a worker thread, async-writer.ts on the plugin's
 * event loop): the head, this run's counts, and for an encrypted backup the key and the chain. The writers
 * only carry the requests this builds to worker.ts's operations and report the answers back, so an
 * encrypted backup is sealed the same way whichever path writes it.
 */
export class PgWriteState {
  info: HeadInfo;
  private entries = 0;
  private bytes = 0;
  private readonly crypt: RecordCrypt | null;

  constructor(
    readonly location: string,
    opened: HeadInfo & { enc: PgEncryption | null },
    key: KeyLike | null,
  ) {
    // a missing or wrong key, or a key for a plaintext backup: refused before anything is written
    this.crypt = pgCrypt(location, opened.enc, key, true);
    this.info = { empty: opened.empty, head: opened.head, headIsSnapshot: opened.headIsSnapshot, nextSeq: opened.nextSeq, link: opened.link ?? null };
    this.relink();
  }

  get encrypted(): boolean {
    return this.crypt !== null;
  }

  /** the chain goes on from the newest stored entry (after open and after a rewind) */
  private relink(): void {
    if (this.crypt === null) return;
    this.crypt.link = this.info.link ? Buffer.from(this.info.link, 'hex') : Buffer.alloc(LINK_LEN);
  }

  /** The request that stores one change: the statements, or for an encrypted backup only their sealed record. */
  appendRequest(version: number, statements: readonly string[]): PgRequest {
    const pragmaOnly = isPragmaOnly(statements);
    if (this.crypt === null) return { op: 'append', version, statements, pragmaOnly };
    return { op: 'append', version, statements: [], pragmaOnly, record: sealChange(this.crypt, version, statements, pragmaOnly) };
  }

  /** The change of appendRequest is committed: `bytes` as the worker counted them. */
  appended(version: number, bytes: number): void {
    this.crypt?.committed();
    this.info = { empty: false, head: version, headIsSnapshot: false, nextSeq: this.info.nextSeq + 1, link: null };
    this.entries++;
    this.bytes += bytes;
  }

  /**
   * The request that stores a snapshot of `dbPath`. An encrypted one is first encrypted into a scratch file
   * beside the database copy (the plugin's and init's scratch places); `cleanup` removes it, stored or not.
   */
  snapshotRequest(version: number, dbPath: string): { req: PgRequest; cleanup: () => void } {
    if (this.crypt === null) return { req: { op: 'snapshot', version, path: dbPath }, cleanup: () => {} };
    const enc = `${dbPath}.clnvault-ciphertext`;
    const cleanup = (): void => rmSync(enc, { force: true });
    cleanup();
    try {
      const envelope = encryptSnapshotFile(this.crypt, version, dbPath, enc);
      return { req: { op: 'snapshot', version, path: enc, envelope }, cleanup };
    } catch (e) {
      cleanup();
      throw e;
    }
  }

  snapshotStored(version: number, bytes: number): void {
    this.crypt?.committed();
    this.info = { empty: false, head: version, headIsSnapshot: true, nextSeq: this.info.nextSeq + 1, link: null };
    this.entries++;
    this.bytes += bytes;
  }

  /** The worker's head after dropHead (the removal itself waits for the replacement, worker.ts). */
  dropped(head: HeadInfo): number {
    this.info = head;
    this.relink();
    return head.head;
  }

  /** What this run added; the whole backup's figures come from a reader (clnvault status / inspect). */
  stats(): BackupStats {
    return { format: 'postgresql', location: this.location, head: this.info.head, entries: this.entries, bytes: this.bytes };
  }
}
