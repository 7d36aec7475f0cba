import type { BackupStats, BackupWriter } from '../backend.js';
import type { Problem } from '../../engine/entries.js';
import type { KeyLike } from '../../crypto/backup-crypt.js';
import { PgBridge } from './bridge.js';
import type { HeadInfo, HeaderRow, PgEncryption, PgNote } from './protocol.js';
import type { PgTarget } from './url.js';
import { PgWriteState } from './write-state.js';

/**
 * The plugin's writer for a PostgreSQL destination. Holding it means holding the backup's writer
 * lease (lease.ts: taken at open, free once this session ends), so a second plugin on the same backup
 * is refused at start-up. Each appendChange is one INSERT in autocommit: it returns
 * only after the server reported COMMIT, with whatever durability the server is configured for
 * (docs/postgresql.md).
 *
 * An encrypted backup (its row names a key) is written only with that key: each change is encrypted here,
 * before it leaves the process (crypt.ts), and the database stores ciphertext records; a snapshot is
 * encrypted into a scratch file beside the database copy, which the worker then stores in chunks
 * (write-state.ts, shared with the plugin's event-loop writer, async-writer.ts).
 */
export class PgWriter implements BackupWriter {
  readonly format = 'postgresql' as const;
  readonly location: string;
  private readonly state: PgWriteState;

  private constructor(
    private readonly bridge: PgBridge,
    target: PgTarget,
    key: KeyLike | null,
  ) {
    this.location = `${target.display}`;
    this.state = new PgWriteState(this.location, bridge.call<HeadInfo & { enc: PgEncryption | null }>({ op: 'openWriter' }), key);
  }

  static open(target: PgTarget, timeoutMs: number, key: KeyLike | null = null, log?: (level: PgNote['level'], message: string) => void): PgWriter {
    const bridge = new PgBridge(target, timeoutMs, `clnvault writer ${target.backup}`, log && ((n) => log(n.level, n.message)));
    try {
      return new PgWriter(bridge, target, key);
    } catch (e) {
      bridge.close();
      throw e;
    }
  }

  head(): number {
    return this.state.info.head;
  }
  isEmpty(): boolean {
    return this.state.info.empty;
  }
  headIsSnapshot(): boolean {
    return this.state.info.headIsSnapshot;
  }
  repaired(): Problem[] {
    return [];
  }

  /** true when the backup is encrypted (its records are written through a RecordCrypt) */
  get encrypted(): boolean {
    return this.state.encrypted;
  }

  appendChange(version: number, statements: readonly string[]): number {
    const n = this.bridge.call<number>(this.state.appendRequest(version, statements));
    this.state.appended(version, n);
    return n;
  }

  appendSnapshotFile(version: number, dbPath: string): void {
    const { req, cleanup } = this.state.snapshotRequest(version, dbPath);
    try {
      this.state.snapshotStored(version, this.bridge.call<number>(req, null));
    } finally {
      cleanup();
    }
  }

  dropHead(): number {
    return this.state.dropped(this.bridge.call<HeadInfo>({ op: 'dropHead' }));
  }

  stats(): BackupStats {
    return this.state.stats();
  }

  close(): void {
    this.bridge.close();
  }
}

export type { HeaderRow };
