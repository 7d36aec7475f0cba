import type { AsyncBackupWriter, BackupStats } from '../backend.js';
import type { Problem } from '../../engine/entries.js';
import type { KeyLike } from '../../crypto/backup-crypt.js';
import { Backstop } from '../backstop.js';
import { PgBridgeError } from './bridge.js';
import { configure, handle, takeNotes } from './worker.js';
import type { HeadInfo, PgEncryption, PgRequest } from './protocol.js';
import type { PgTarget } from './url.js';
import { PgWriteState } from './write-state.js';

/**
 * The plugin's writer when PostgreSQL is its only destination: the connection (worker.ts's operations, run
 * on this thread) lives on the plugin's own event loop, so a db_write is lightningd's request, one
 * Bind/Execute/Sync round trip and the answer, with no thread hand-off (the bridge, bridge.ts, adds a post
 * to its worker, that thread's wake-up and a futex wake back). Same operations, same bounded reconnection
 * (remote_timeout), same writer lease, and the same sealing of an encrypted backup (write-state.ts) as
 * PgWriter.
 */

/** beyond the operations' own bound (remote_timeout): only a stuck session could get here (as bridge.ts) */
const GRACE_MS = 5_000;

export class AsyncPgWriter implements AsyncBackupWriter {
  readonly format = 'postgresql' as const;
  readonly location: string;
  private state: PgWriteState | null = null;
  private broken: string | null = null;

  private constructor(
    target: PgTarget,
    private readonly timeoutMs: number,
    /** the worker's notes (lost connection, reconnected): the plugin's log */
    private readonly log: (level: 'warn' | 'info', message: string) => void,
  ) {
    this.location = target.display;
  }

  static async open(
    target: PgTarget,
    timeoutMs: number,
    key: KeyLike | null = null,
    log: (level: 'warn' | 'info', message: string) => void = () => {},
  ): Promise<AsyncPgWriter> {
    configure({ connectionString: target.connectionString, backup: target.backup, applicationName: `clnvault writer ${target.backup}`, timeoutMs });
    const w = new AsyncPgWriter(target, timeoutMs, log);
    try {
      w.state = new PgWriteState(w.location, await w.call<HeadInfo & { enc: PgEncryption | null }>({ op: 'openWriter' }), key);
    } catch (e) {
      await w.close();
      throw e;
    }
    return w;
  }

  private get s(): PgWriteState {
    return this.state!;
  }

  /** the last bound on each call (src/backends/backstop.ts) */
  private readonly backstop = new Backstop((ms) => {
    // its late result must not be taken for a later operation's: this writer is done
    this.broken = `no answer from the PostgreSQL connection within ${Math.round(ms / 1000)} s; giving up on it`;
    return new PgBridgeError(this.broken);
  });

  /** `waitMs` null: an operation whose length grows with the data (snapshots); worker.ts bounds each query. */
  private async call<T>(req: PgRequest, waitMs: number | null = this.timeoutMs + GRACE_MS): Promise<T> {
    if (this.broken !== null) throw new PgBridgeError(this.broken);
    try {
      const op = (): Promise<T> => handle(req) as Promise<T>;
      return await (waitMs === null ? op() : this.backstop.run(op, waitMs));
    } catch (e) {
      if (e instanceof PgBridgeError) throw e;
      const err = e as Error & { code?: string };
      throw new PgBridgeError(err instanceof Error ? err.message : String(e), typeof err.code === 'string' ? err.code : undefined);
    } finally {
      for (const n of takeNotes()) this.log(n.level, n.message);
    }
  }

  head(): number {
    return this.s.info.head;
  }
  isEmpty(): boolean {
    return this.s.info.empty;
  }
  headIsSnapshot(): boolean {
    return this.s.info.headIsSnapshot;
  }
  repaired(): Problem[] {
    return [];
  }
  get encrypted(): boolean {
    return this.s.encrypted;
  }

  async appendChange(version: number, statements: readonly string[]): Promise<number> {
    const n = await this.call<number>(this.s.appendRequest(version, statements));
    this.s.appended(version, n);
    return n;
  }

  async appendSnapshotFile(version: number, dbPath: string): Promise<void> {
    const { req, cleanup } = this.s.snapshotRequest(version, dbPath);
    try {
      this.s.snapshotStored(version, await this.call<number>(req, null));
    } finally {
      cleanup();
    }
  }

  async dropHead(): Promise<number> {
    return this.s.dropped(await this.call<HeadInfo>({ op: 'dropHead' }));
  }

  stats(): BackupStats {
    return this.s.stats();
  }

  async close(): Promise<void> {
    if (this.broken === null) {
      try {
        await this.call({ op: 'close' });
      } catch {
        // closing: nothing left to protect
      }
    }
    this.broken = 'closed';
    this.backstop.close();
  }
}
