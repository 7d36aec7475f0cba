import { BackupError, type ChangeEntry, type Entry, type EntryHeader, type Problem } from '../../engine/entries.js';
import type { BackupReader, BackupStats } from '../backend.js';
import { planRestore } from '../../engine/plan.js';
import { PgBridge } from './bridge.js';
import type { HeaderRow } from './protocol.js';
import type { PgTarget } from './url.js';

/**
 * Reads one backup inside a REPEATABLE READ transaction: headers, statements and snapshot chunks all
 * come from the same consistent view, while the plugin keeps writing and compaction deletes.
 * An entry's `offset` is its seq (the order key); a compaction snapshot shares the seq of the last change
 * it covers, so read() tells them apart by kind.
 *
 * Statements are fetched in batches of consecutive entries (one round trip per batch, not per entry),
 * and snapshots stream chunk by chunk into the destination file.
 */
const BATCH = 256;

export class PgReader implements BackupReader {
  readonly format = 'postgresql' as const;
  readonly location: string;
  private rows: HeaderRow[] | null = null;
  private batch = new Map<number, string[]>();

  private constructor(private readonly bridge: PgBridge, target: PgTarget) {
    this.location = target.display;
    bridge.call({ op: 'openReader' });
  }

  static open(target: PgTarget, timeoutMs: number): PgReader {
    const bridge = new PgBridge(target, timeoutMs, `clnvault reader ${target.backup}`);
    try {
      return new PgReader(bridge, target);
    } catch (e) {
      bridge.close();
      throw e;
    }
  }

  private all(): HeaderRow[] {
    if (this.rows === null) this.rows = this.bridge.call<HeaderRow[]>({ op: 'headers' }, null);
    return this.rows;
  }

  headers(): EntryHeader[] {
    return this.all().map((r) => ({ kind: r.kind === 1 ? 'snapshot' : 'change', version: r.version, offset: r.seq, pragmaOnly: r.pragmaOnly }));
  }

  read(h: EntryHeader): Entry {
    if (h.kind === 'snapshot') {
      const row = this.all().find((r) => r.seq === h.offset && r.kind === 1);
      if (row === undefined) throw new BackupError(`no snapshot at entry ${h.offset}`, this.location, h.offset);
      const bridge = this.bridge;
      return {
        kind: 'snapshot',
        version: row.version,
        offset: row.seq,
        size: row.bytes,
        parts: row.chunks,
        writeTo(path: string): void {
          bridge.call({ op: 'snapshotTo', seq: row.seq, chunks: row.chunks, path }, null);
        },
      };
    }
    let statements = this.batch.get(h.offset);
    if (statements === undefined) {
      this.batch = new Map(this.bridge.call<Array<[number, string[]]>>({ op: 'changes', fromSeq: h.offset, limit: BATCH }, null));
      statements = this.batch.get(h.offset);
      if (statements === undefined) throw new BackupError(`entry ${h.offset} is gone from the backup`, this.location, h.offset);
    }
    this.batch.delete(h.offset);
    const e: ChangeEntry = { kind: 'change', version: h.version, offset: h.offset, statements };
    return e;
  }

  problems(): Problem[] {
    return [];
  }

  stats(): BackupStats {
    const rows = this.all();
    let bytes = 0;
    for (const r of rows) bytes += r.bytes;
    const head = rows.length === 0 ? 0 : planRestore(this.headers()).head;
    return { format: 'postgresql', location: this.location, head, entries: rows.length, bytes };
  }

  close(): void {
    this.bridge.close();
  }
}
