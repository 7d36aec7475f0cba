import type { AsyncBackupWriter, BackupWriter } from '../backends/backend.js';
import { decideFirst, decideNext, isPragmaOnly, isValidDataVersion, type Decision } from '../engine/versions.js';
import { rebaselineInHook, rebaselineInHookAsync, type DeferredRebaseline } from './rebaseline.js';

/**
 * The db_write hook: check the version against the backup, make the batch durable, and only then let
 * lightningd commit. Every refusal is an error answer, which makes lightningd abort without committing:
 * the node stops, but never with a transaction the backup does not have.
 */

export type HookOutcome = { ok: true } | { ok: false; message: string };

/** A db_write that passed the checks that need no backup: what is left is the backup's part. */
interface Checked {
  dv: number;
  statements: string[];
}

export interface HookStats {
  writes: number;
  bytesWritten: number;
  lastLatencyUs: number;
  lastVersion: number | null;
  rewinds: number;
}

export class DbWriteHandler {
  /** version of the previous write in this run; null until the first write */
  private last: number | null = null;
  /** once a write was refused the node is stopping; nothing later may be accepted either */
  private refused: string | null = null;
  readonly stats: HookStats = { writes: 0, bytesWritten: 0, lastLatencyUs: 0, lastVersion: null, rewinds: 0 };

  constructor(
    /** an AsyncBackupWriter (a lone remote destination) is served by handleAsync only */
    private readonly writer: BackupWriter | AsyncBackupWriter | null,
    private readonly startupError: string | null,
    private readonly log: (level: 'info' | 'warn' | 'error', msg: string) => void,
    /** fills the placeholders of refusal messages, so the operator gets the exact command to run */
    private readonly context: { url: string | null; netDir: string } = { url: null, netDir: '.' },
    /** a re-baseline deferred from start-up to the first write (src/plugin/rebaseline.ts), and who to tell when done */
    private deferred: { rebaseline: DeferredRebaseline; done: (r: { from: number; to: number }) => void } | null = null,
  ) {}

  handle(params: unknown): HookOutcome {
    const c = this.check(params);
    if (!('dv' in c)) return c;
    const writer = this.writer as BackupWriter;
    const { dv, statements } = c;
    if (this.deferred !== null) {
      const { rebaseline } = this.deferred;
      let to: number;
      try {
        to = rebaselineInHook(writer, rebaseline);
      } catch (e) {
        return this.rebaselineFailed(e as Error);
      }
      this.rebaselineDone(to);
    }
    const t0 = process.hrtime.bigint();
    const decision = this.decide(dv, statements);
    if (decision.action === 'refuse') return this.refuseDecision(decision.message);
    try {
      if (decision.action === 'rewind') {
        const before = writer.head();
        this.rewound(before, writer.dropHead());
      }
      this.stats.bytesWritten += writer.appendChange(dv, statements);
    } catch (e) {
      return this.writeFailed(dv, e as Error);
    }
    return this.stored(dv, t0);
  }

  /**
   * handle() for a writer driven from the event loop (a lone remote destination): the same checks and
   * rules in the same order; only the waiting for the backup is an await. The caller answers lightningd
   * when the promise settles and hands it nothing else meanwhile (main.ts queues the next messages).
   */
  async handleAsync(params: unknown): Promise<HookOutcome> {
    const c = this.check(params);
    if (!('dv' in c)) return c;
    const writer = this.writer!;
    const { dv, statements } = c;
    if (this.deferred !== null) {
      const { rebaseline } = this.deferred;
      let to: number;
      try {
        to = await rebaselineInHookAsync(writer, rebaseline);
      } catch (e) {
        return this.rebaselineFailed(e as Error);
      }
      this.rebaselineDone(to);
    }
    const t0 = process.hrtime.bigint();
    const decision = this.decide(dv, statements);
    if (decision.action === 'refuse') return this.refuseDecision(decision.message);
    try {
      if (decision.action === 'rewind') {
        const before = writer.head();
        this.rewound(before, await writer.dropHead());
      }
      this.stats.bytesWritten += await writer.appendChange(dv, statements);
    } catch (e) {
      return this.writeFailed(dv, e as Error);
    }
    return this.stored(dv, t0);
  }

  /** The checks that need no backup: a refusal, or the write to store. */
  private check(params: unknown): HookOutcome | Checked {
    if (this.refused !== null) return { ok: false, message: this.refused };
    if (this.writer === null) return this.refuse(this.startupError ?? 'the backup is not open');
    const p = params as { data_version?: unknown; writes?: unknown } | null;
    if (typeof p !== 'object' || p === null) return this.refuse('db_write without params');
    const dv = p.data_version;
    const writes = p.writes;
    if (!isValidDataVersion(dv)) return this.refuse(`db_write with an invalid data_version ${JSON.stringify(dv)}`);
    if (!Array.isArray(writes) || !writes.every((w) => typeof w === 'string')) {
      return this.refuse('db_write whose "writes" is not a list of SQL strings');
    }
    if (writes.length === 0) {
      return this.refuse(
        `db_write for data_version ${dv} carries no statements: lightningd does this only with a non-SQLite wallet ` +
          `(PostgreSQL). clnvault backs up SQLite wallets only; remove the plugin or switch the wallet to sqlite3`,
      );
    }
    return { dv, statements: writes as string[] };
  }

  private rebaselineDone(to: number): void {
    const { rebaseline, done } = this.deferred!;
    this.deferred = null;
    done({ from: rebaseline.from, to });
    this.log(
      'warn',
      `re-baselined: the node's database was at version ${to} but the backup only at ${rebaseline.from}; stored a snapshot ` +
        `of its committed state (read while lightningd waited in this hook) so the backup is complete again`,
    );
  }

  private rebaselineFailed(e: Error): HookOutcome {
    return this.refuse(
      `the node's database is ahead of the backup and could not be snapshotted into it (${e.message}); ` +
        `lightningd stops without committing this write and the next start tries again. If this repeats, stop lightningd ` +
        `and re-create the backup with 'clnvault init'`,
    );
  }

  private decide(dv: number, statements: string[]): Decision {
    const w = this.writer!;
    if (this.last === null) {
      const decision = decideFirst(w.head(), dv, isPragmaOnly(statements), w.headIsSnapshot());
      if (decision.action === 'append') {
        this.log('info', `backup at version ${w.head()}, first write version ${dv}: versions match up`);
      }
      return decision;
    }
    return decideNext(this.last, dv, () => isPragmaOnly(statements));
  }

  private refuseDecision(message: string): HookOutcome {
    return this.refuse(
      message
        .replaceAll('<backup-url>', this.context.url ?? '<backup-url>')
        .replaceAll('<lightning-dir>', this.context.netDir)
        .replaceAll('<dir>', this.context.netDir),
    );
  }

  private rewound(before: number, after: number): void {
    this.stats.rewinds++;
    this.log(
      'info',
      `last change (version ${before}) was never committed by lightningd: removed it from the backup (now at ${after}); ` +
        `storing its replacement`,
    );
  }

  private writeFailed(dv: number, e: Error): HookOutcome {
    return this.refuse(`could not write version ${dv} to the backup ${this.writer!.location}: ${e.message}`);
  }

  private stored(dv: number, t0: bigint): HookOutcome {
    this.last = dv;
    this.stats.writes++;
    this.stats.lastVersion = dv;
    this.stats.lastLatencyUs = Number(process.hrtime.bigint() - t0) / 1000;
    return { ok: true };
  }

  /** Also used by the dispatcher for a db_write it cannot trust as a whole (its bytes are not UTF-8). */
  refuse(why: string): HookOutcome {
    const message = `clnvault refuses this database write, so lightningd stops without committing it: ${why}`;
    this.refused = message;
    this.log('error', message);
    return { ok: false, message };
  }
}
