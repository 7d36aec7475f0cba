import type { BackupStats, BackupWriter } from '../backend.js';
import { isPragmaOnly } from '../../engine/versions.js';
import type { Problem } from '../../engine/entries.js';
import { PgBridge } from './bridge.js';
import type { HeadInfo, HeaderRow } from './protocol.js';
import type { PgTarget } from './url.js';

/**
 * The plugin's writer for a PostgreSQL destination. Holding it means holding the backup's writer
 * lease (lease.ts: taken at open, free once this session ends), so a second plugin on the same backup
 * is refused at start-up. Each appendChange is one INSERT in autocommit: it returns
 * only after the server reported COMMIT, with whatever durability the server is configured for
 * (docs/postgresql.md).
 */
export class PgWriter implements BackupWriter {
  readonly format = 'postgresql' as const;
  readonly location: string;
  private info: HeadInfo;
  private entries = 0;
  private bytes = 0;

  private constructor(
    private readonly bridge: PgBridge,
    target: PgTarget,
  ) {
    this.location = `${target.display}`;
    this.info = bridge.call<HeadInfo>({ op: 'openWriter' });
  }

  static open(target: PgTarget, timeoutMs: number): PgWriter {
    const bridge = new PgBridge(target, timeoutMs, `clnvault writer ${target.backup}`);
    try {
      return new PgWriter(bridge, target);
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

  appendChange(version: number, statements: readonly string[]): number {
    const n = this.bridge.call<number>({ op: 'append', version, statements, pragmaOnly: isPragmaOnly(statements) });
    this.info = { empty: false, head: version, headIsSnapshot: false, nextSeq: this.info.nextSeq + 1 };
    this.entries++;
    this.bytes += n;
    return n;
  }

  appendSnapshotFile(version: number, dbPath: string): void {
    const n = this.bridge.call<number>({ op: 'snapshot', version, path: dbPath }, null);
    this.info = { empty: false, head: version, headIsSnapshot: true, nextSeq: this.info.nextSeq + 1 };
    this.entries++;
    this.bytes += n;
  }

  dropHead(): number {
    this.info = this.bridge.call<HeadInfo>({ op: 'dropHead' });
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
