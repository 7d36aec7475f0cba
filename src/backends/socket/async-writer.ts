import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { AsyncBackupWriter, BackupStats } from '../backend.js';
import { copyAtHead, DB_NAME } from '../../engine/live-db.js';
import { BackupError, type Problem } from '../../engine/entries.js';
import { Backstop } from '../backstop.js';
import { changePacket, type Metadata } from './protocol.js';
import { SocketSession } from './session.js';
import { parseSocketUrl } from './url.js';
import { DEFAULT_REMOTE_TIMEOUT_MS, remoteFailure, sealOptions, type SocketWriterOptions } from './writer.js';

/**
 * The plugin's socket: / clnvault:// writer when that server is its only destination: the session runs
 * on the plugin's own event loop, so a db_write costs one wake-up for lightningd's request and one for
 * the server's ACK. The worker path (writer.ts, sync.ts) adds a post to the worker, the worker's wake-up
 * and a futex wake back per write (docs/remote.md, "Latency"). Same session code, same rules: every
 * call resolves once the server acknowledged, or fails within remote_timeout.
 */

/** beyond remote_timeout: only a bug in the session could get here; refusing then beats hanging lightningd */
const BACKSTOP_MS = 10_000;
/**
 * compactAside: how long a second connection may take to get METADATA. `clnvault server` answers at once;
 * `backup-cli server` serves one connection at a time, so the second one waits in its backlog.
 */
const ASIDE_PROBE_MS = 3000;
/** compactAside: a compaction on the server may take as long as its backup is large; the writes go on meanwhile */
const ASIDE_BUDGET_MS = 6 * 3600_000;
/** compactSealed: how long copies of the database are taken until one is at the backup's head (lightningd commits the last write soon after its hook) */
const SNAPSHOT_WAIT_MS = 5000;

export class AsyncSocketWriter implements AsyncBackupWriter {
  readonly format = 'v1' as const;
  private meta: Metadata = { protocol: 1, version: 0, prevVersion: 0, versionCount: 0 };
  private snapshotHead = false;
  private closed = false;
  /** set when an operation outlived its backstop: its late result must not be mistaken for the next one's */
  private broken: string | null = null;
  /** the last bound on each operation (src/backends/backstop.ts) */
  private readonly backstop = new Backstop((ms) => {
    this.broken = `no answer within ${Math.round(ms / 1000)} s; the connection is given up`;
    this.session.drop();
    return new Error(this.broken);
  });

  private constructor(
    readonly location: string,
    private readonly session: SocketSession,
    private readonly budgetMs: number,
    private readonly log: (level: 'info' | 'warn' | 'error', message: string) => void,
    /** the plugin's directory, which holds the node's database */
    private readonly cwd: string,
  ) {}

  static async open(url: string, opts: SocketWriterOptions = {}): Promise<AsyncSocketWriter> {
    const budgetMs = opts.remoteTimeoutMs ?? DEFAULT_REMOTE_TIMEOUT_MS;
    const u = parseSocketUrl(url, opts.cwd);
    const session = new SocketSession(u, budgetMs, sealOptions(u, opts));
    const w = new AsyncSocketWriter(url, session, budgetMs, opts.log ?? (() => {}), opts.cwd ?? process.cwd());
    w.meta = await w.run(() => session.open(), 'connecting to the backup server', budgetMs + BACKSTOP_MS);
    return w;
  }

  /** Runs one session operation; its notes (reconnections) go to the log, its failure becomes the writer's error. */
  private async run<T>(op: () => Promise<T>, what: string, backstopMs: number): Promise<T> {
    if (this.closed) throw new BackupError(`${this.location}: the connection to the backup server was closed`, this.location);
    if (this.broken !== null) throw remoteFailure(this.location, what, this.broken, true, this.budgetMs);
    try {
      return await this.backstop.run(op, backstopMs);
    } catch (e) {
      const err = e as Error;
      throw remoteFailure(this.location, what, err.message, err.name === 'RefusedError', this.budgetMs);
    } finally {
      for (const n of this.session.notes.splice(0)) this.log(n.level, n.message);
    }
  }

  head(): number {
    return this.meta.version;
  }

  isEmpty(): boolean {
    return this.meta.version === 0 && this.meta.versionCount === 0;
  }

  /** As SocketWriter.headIsSnapshot: only a snapshot sent by this writer is known to be one. */
  headIsSnapshot(): boolean {
    return this.snapshotHead;
  }

  repaired(): Problem[] {
    return [];
  }

  async appendChange(version: number, statements: readonly string[]): Promise<number> {
    if (this.session.seal !== null) {
      const n = await this.run(() => this.session.sealedChange(version, statements), `sending version ${version}`, this.budgetMs + BACKSTOP_MS);
      this.meta = this.session.meta!;
      this.snapshotHead = false;
      return n;
    }
    let pkt: Buffer;
    try {
      pkt = changePacket(version, statements);
    } catch (e) {
      throw new BackupError(`${this.location}: ${(e as Error).message}`, this.location);
    }
    await this.run(() => this.session.change(version, pkt), `sending version ${version}`, this.budgetMs + BACKSTOP_MS);
    this.meta = this.session.meta!;
    this.snapshotHead = false;
    return pkt.length;
  }

  async appendSnapshotFile(version: number, dbPath: string): Promise<void> {
    // each chunk has its own deadline inside the session: a large snapshot over Tor takes as long as it takes
    await this.run(() => this.session.snapshot(version, dbPath), `sending the snapshot of version ${version}`, 24 * 3600_000);
    this.meta = this.session.meta!;
    this.snapshotHead = true;
  }

  async dropHead(): Promise<number> {
    if (this.snapshotHead) throw new BackupError(`${this.location}: the newest entry is a snapshot, which is never rewound`, this.location);
    const target = this.meta.prevVersion;
    this.meta = await this.run(() => this.session.rewind(target), `rewinding to version ${target}`, this.budgetMs + BACKSTOP_MS);
    return this.meta.version;
  }

  /**
   * backup-compact without holding up the writes: COMPACT on a connection of its own, which `clnvault
   * server` answers when its online compaction is done while this writer's connection goes on storing
   * (server/store.ts). Null when that connection got no METADATA within ASIDE_PROBE_MS (`backup-cli
   * server` takes one connection at a time) or the backup is encrypted (the server refuses it at once):
   * then compactRemote() on the writer's own connection, as the reference plugin does. Either way the
   * caller then runs refreshMetadata() between writes: the server's entry count changed.
   */
  async compactAside(): Promise<string | null> {
    if (this.session.seal !== null || this.closed) return null;
    // the probe's budget bounds the connection and its METADATA (open() gives up, and closes it, by then)
    const side = new SocketSession(this.session.url, ASIDE_PROBE_MS);
    try {
      try {
        await side.open();
      } catch {
        return null;
      }
      if (side.backupId !== null && this.session.backupId !== null && side.backupId !== this.session.backupId) {
        throw new BackupError(`${this.location}: the server's backup id changed (${side.backupId}); not compacting it`, this.location);
      }
      this.log('info', `asking the backup server to compact the backup (on a second connection; writes go on meanwhile)`);
      return await side.compact(ASIDE_BUDGET_MS);
    } catch (e) {
      throw new BackupError(`${this.location}: compaction failed: ${(e as Error).message}`, this.location);
    } finally {
      side.drop();
      for (const n of side.notes.splice(0)) this.log(n.level, n.message);
    }
  }

  /** Between writes: the server's version and entry count, after a compaction changed the count. */
  async refreshMetadata(): Promise<void> {
    this.meta = await this.run(() => this.session.refreshMetadata(), "reading the server's metadata", this.budgetMs + BACKSTOP_MS);
  }

  async compactRemote(): Promise<string> {
    if (this.session.seal !== null) return this.compactSealed();
    try {
      return await this.run(() => this.session.compact(), 'compaction', this.budgetMs + BACKSTOP_MS);
    } finally {
      this.meta = this.session.meta ?? this.meta;
    }
  }

  /**
   * backup-compact of an encrypted backup: the server has no key, so this node, which has, sends a
   * snapshot of its database at the backup's head for the server to keep in place of everything
   * (session.compactSealed). Called while no db_write is pending (the plugin holds the next one back), so
   * the database is at the head version once lightningd has committed it: the copy says which version
   * it holds, and is taken again until it is the head's.
   */
  private async compactSealed(): Promise<string> {
    const dbPath = join(this.cwd, DB_NAME);
    const tmp = join(this.cwd, `.clnvault-compact-${process.pid}.sqlite3`);
    try {
      const copy = await copyAtHead(dbPath, tmp, () => this.meta.version, SNAPSHOT_WAIT_MS);
      if (!('version' in copy)) throw new BackupError(`${this.location}: ${copy.why}: not compacted (try again)`, this.location);
      const { version } = copy;
      this.log('info', `compacting the encrypted backup: sending a snapshot of version ${version} (${statSync(tmp).size} bytes) that replaces it on the server`);
      // each chunk has its own deadline inside the session, as a re-baseline snapshot's
      const text = await this.run(() => this.session.compactSealed(version, tmp, this.budgetMs), 'compacting the encrypted backup', 24 * 3600_000);
      this.meta = this.session.meta!;
      this.snapshotHead = true;
      return text;
    } finally {
      rmSync(tmp, { force: true });
    }
  }

  stats(): BackupStats {
    return { format: this.format, location: this.location, head: this.meta.version, entries: this.meta.versionCount, bytes: 0 };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.backstop.close();
    this.session.drop();
  }
}
