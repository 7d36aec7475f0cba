import type { BackupStats, BackupWriter } from '../backend.js';
import { isPragmaOnly } from '../../engine/versions.js';
import type { Problem } from '../../engine/entries.js';
import { rmSync } from 'node:fs';
import type { KeyLike } from '../../crypto/backup-crypt.js';
import { LINK_LEN, type RecordCrypt } from '../../crypto/records.js';
import { PgBridge } from './bridge.js';
import { encryptSnapshotFile, pgCrypt, sealChange } from './crypt.js';
import type { HeadInfo, HeaderRow, PgEncryption } from './protocol.js';
import type { PgTarget } from './url.js';

/**
 * The plugin's writer for a PostgreSQL destination. Holding it means holding the backup's writer
 * lease (lease.ts: taken at open, free once this session ends), so a second plugin on the same backup
 * is refused at start-up. Each appendChange is one INSERT in autocommit: it returns
 * only after the server reported COMMIT, with whatever durability the server is configured for
 * (docs/postgresql.md).
 *
 * An encrypted backup (its row names a key) is written only with that key: each change is encrypted here,
 * before it leaves the process (crypt.ts), and the database stores ciphertext records; a snapshot is
 * encrypted into a scratch file beside the database copy, which the worker then stores in chunks.
 */
export class PgWriter implements BackupWriter {
  readonly format = 'postgresql' as const;
  readonly location: string;
  private info: HeadInfo;
  private entries = 0;
  private bytes = 0;
  private readonly crypt: RecordCrypt | null;

  private constructor(
    private readonly bridge: PgBridge,
    target: PgTarget,
    key: KeyLike | null,
  ) {
    this.location = `${target.display}`;
    const opened = bridge.call<HeadInfo & { enc: PgEncryption | null }>({ op: 'openWriter' });
    // a missing or wrong key, or a key for a plaintext backup: refused before anything is written
    this.crypt = pgCrypt(this.location, opened.enc, key, true);
    this.info = opened;
    this.relink();
  }

  static open(target: PgTarget, timeoutMs: number, key: KeyLike | null = null): PgWriter {
    const bridge = new PgBridge(target, timeoutMs, `clnvault writer ${target.backup}`);
    try {
      return new PgWriter(bridge, target, key);
    } catch (e) {
      bridge.close();
      throw e;
    }
  }

  head(): number {
    return this.info.head;
  }
  isEmpty(): boolean {
    return this.info.empty;
  }
  headIsSnapshot(): boolean {
    return this.info.headIsSnapshot;
  }
  repaired(): Problem[] {
    return [];
  }

  /** true when the backup is encrypted (its records are written through a RecordCrypt) */
  get encrypted(): boolean {
    return this.crypt !== null;
  }

  /** the chain goes on from the newest stored entry (after open and after a rewind) */
  private relink(): void {
    if (this.crypt === null) return;
    this.crypt.link = this.info.link ? Buffer.from(this.info.link, 'hex') : Buffer.alloc(LINK_LEN);
  }

  appendChange(version: number, statements: readonly string[]): number {
    const pragmaOnly = isPragmaOnly(statements);
    let n: number;
    if (this.crypt === null) {
      n = this.bridge.call<number>({ op: 'append', version, statements, pragmaOnly });
    } else {
      const record = sealChange(this.crypt, version, statements, pragmaOnly);
      n = this.bridge.call<number>({ op: 'append', version, statements: [], pragmaOnly, record });
      this.crypt.committed();
    }
    this.info = { empty: false, head: version, headIsSnapshot: false, nextSeq: this.info.nextSeq + 1, link: null };
    this.entries++;
    this.bytes += n;
    return n;
  }

  appendSnapshotFile(version: number, dbPath: string): void {
    let n: number;
    if (this.crypt === null) {
      n = this.bridge.call<number>({ op: 'snapshot', version, path: dbPath }, null);
    } else {
      // the ciphertext goes beside the database copy (the plugin's and init's scratch places), then away
      const enc = `${dbPath}.clnvault-ciphertext`;
      rmSync(enc, { force: true });
      try {
        const envelope = encryptSnapshotFile(this.crypt, version, dbPath, enc);
        n = this.bridge.call<number>({ op: 'snapshot', version, path: enc, envelope }, null);
        this.crypt.committed();
      } finally {
        rmSync(enc, { force: true });
      }
    }
    this.info = { empty: false, head: version, headIsSnapshot: true, nextSeq: this.info.nextSeq + 1, link: null };
    this.entries++;
    this.bytes += n;
  }

  dropHead(): number {
    this.info = this.bridge.call<HeadInfo>({ op: 'dropHead' });
    this.relink();
    return this.info.head;
  }

  /** What this run added; the whole backup's figures come from a reader (clnvault status / inspect). */
  stats(): BackupStats {
    return { format: 'postgresql', location: this.location, head: this.info.head, entries: this.entries, bytes: this.bytes };
  }

  close(): void {
    this.bridge.close();
  }
}

export type { HeaderRow };
