import { BackupError, type ChangeEntry, type Entry, type EntryHeader, type Problem } from '../../engine/entries.js';
import type { BackupReader, BackupStats, HeaderVisitor, HeaderWalkOptions } from '../backend.js';
import { planBackup } from '../../engine/plan.js';
import { PgBridge } from './bridge.js';
import type { HeaderRow } from './protocol.js';
import type { PgTarget } from './url.js';

/**
 * Reads one backup inside a REPEATABLE READ transaction: headers, statements and snapshot chunks all
 * come from the same consistent view, while the plugin keeps writing and compaction deletes.
 *
 * An entry's `offset` is seq * 2 + kind: unique, and in the entries' order, also while a compaction
 * snapshot shares the seq of the last change it covers (it sorts right after it).
 *
 * Memory stays bounded like the file readers': headers are walked in pages, statements fetched in batches
 * of consecutive entries (one round trip per batch, not per entry), snapshots streamed chunk by chunk
 * into the destination file.
 */
const HEADER_PAGE = 8192;
const BATCH = 256;

export function offsetOf(seq: number, kind: 0 | 1): number {
  return seq * 2 + kind;
}

export class PgReader implements BackupReader {
  readonly format = 'postgresql' as const;
  readonly location: string;
  private batch = new Map<number, string[]>();
  /** snapshots met by walks (few), so that read() needs no extra round trip for them */
  private snapshots = new Map<number, HeaderRow>();
  private cachedStats: BackupStats | null = null;

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

  forEachHeader(visit: HeaderVisitor, opts: HeaderWalkOptions = {}): void {
    let from = opts.from ?? 0;
    for (;;) {
      const rows = this.bridge.call<HeaderRow[]>({ op: 'headers', from, limit: HEADER_PAGE }, null);
      for (const r of rows) {
        if (r.kind === 1) this.snapshots.set(offsetOf(r.seq, 1), r);
        const h: EntryHeader = { kind: r.kind === 1 ? 'snapshot' : 'change', version: r.version, offset: offsetOf(r.seq, r.kind), pragmaOnly: r.pragmaOnly };
        if (visit(h) === false) return;
      }
      if (rows.length < HEADER_PAGE) return;
      const last = rows[rows.length - 1]!;
      from = offsetOf(last.seq, last.kind) + 1;
    }
  }

  read(h: EntryHeader): Entry {
    const seq = Math.floor(h.offset / 2);
    if (h.kind === 'snapshot') {
      let row = this.snapshots.get(h.offset);
      if (row === undefined) {
        row = this.bridge.call<HeaderRow | null>({ op: 'entryRow', seq, kind: 1 }) ?? undefined;
        if (row === undefined) throw new BackupError(`no snapshot at entry ${h.offset}`, this.location, h.offset);
      }
      const bridge = this.bridge;
      const r = row;
      return {
        kind: 'snapshot',
        version: r.version,
        offset: h.offset,
        size: r.bytes,
        parts: r.chunks,
        writeTo(path: string): void {
          bridge.call({ op: 'snapshotTo', seq: r.seq, chunks: r.chunks, path }, null);
        },
      };
    }
    let statements = this.batch.get(seq);
    if (statements === undefined) {
      this.batch = new Map(this.bridge.call<Array<[number, string[]]>>({ op: 'changes', fromSeq: seq, limit: BATCH }, null));
      statements = this.batch.get(seq);
      if (statements === undefined) throw new BackupError(`entry ${h.offset} is gone from the backup`, this.location, h.offset);
    }
    this.batch.delete(seq);
    const e: ChangeEntry = { kind: 'change', version: h.version, offset: h.offset, statements };
    return e;
  }

  problems(): Problem[] {
    return [];
  }

  stats(): BackupStats {
    if (this.cachedStats === null) {
      const { entries, bytes } = this.bridge.call<{ entries: number; bytes: number }>({ op: 'stats' }, null);
      const head = entries === 0 ? 0 : planBackup(this).plan().head;
      this.cachedStats = { format: 'postgresql', location: this.location, head, entries, bytes };
    }
    return this.cachedStats;
  }

  close(): void {
    this.bridge.close();
  }
}
