import type { BackupStats, BackupWriter } from '../backend.js';
import { BackupError, type Problem } from '../../engine/entries.js';
import { changePacket, type Metadata } from './protocol.js';
import type { Note } from './session.js';
import { SyncWorker, type WorkerReply } from './sync.js';
import { parseSocketUrl, type SocketUrl } from './url.js';
import type { KeyLike } from '../../crypto/backup-crypt.js';
import type { SealOptions } from './session.js';
import { changePayloadLength, RECORD_OVERHEAD } from '../file/v2/codec.js';
import { encOverhead } from '../../crypto/records.js';

/**
 * A backup held by a socket server (`backup-cli server` or `clnvault server`). Each call returns once
 * the server acknowledged, i.e. (for clnvault server) once the entry is fdatasynced on its disk. A call
 * that cannot complete within remote_timeout throws, and the plugin refuses the write: lightningd stops
 * without committing, instead of hanging forever inside the hook as with the reference.
 */

export const DEFAULT_REMOTE_TIMEOUT_MS = 60_000;

export interface SocketWriterOptions {
  /** relative key files (clnvault: URLs) resolve against this: the network directory for the plugin */
  cwd?: string;
  remoteTimeoutMs?: number;
  log?: (level: 'info' | 'warn' | 'error', message: string) => void;
  /** clnvault:// only: the key of an encrypted backup; the node seals every record (docs/encryption.md) */
  key?: KeyLike | null;
  /** with `key`: an empty, plain backup on the server becomes an encrypted one (init --encrypt) */
  encryptEmpty?: boolean;
}

/** The session's sealing options from the writer's, refusing a key where the protocol cannot carry records. */
export function sealOptions(u: SocketUrl, opts: SocketWriterOptions): SealOptions | null {
  if (!opts.key) return null;
  if (u.tls === null) throw new BackupError(`${u.url}: a socket: backup cannot be encrypted (the reference protocol carries the statements themselves); use clnvault://`, u.url);
  return { key: opts.key, encryptEmpty: opts.encryptEmpty === true };
}

/** The error a failed remote operation throws; the same words from the worker path and the event-loop path (async-writer.ts). */
export function remoteFailure(location: string, what: string, error: string, refused: boolean, budgetMs: number): BackupError {
  const advice = refused
    ? ''
    : `. Check that the server (clnvault server or backup-cli server) is running and reachable from this machine ` +
      `(tunnel, Tor, firewall), then start lightningd again; "remote_timeout" in backup.lock (seconds, now ` +
      `${Math.round(budgetMs / 1000)}) sets how long an outage is ridden out before the node is stopped`;
  return new BackupError(`${location}: ${what} failed: ${error}${advice}`, location);
}

export class SocketWriter implements BackupWriter {
  /** the protocol carries the reference's entries; the server stores them in whatever format its file has */
  readonly format = 'v1' as const;
  private meta: Metadata;
  private snapshotHead = false;
  private closed = false;
  /** what the server said at the first connection (clnvault:// servers only; the session checks reconnections) */
  private id: string | null = null;

  private constructor(
    readonly location: string,
    private readonly worker: SyncWorker,
    private readonly budgetMs: number,
    private readonly sealed: boolean,
  ) {
    this.meta = { protocol: 1, version: 0, prevVersion: 0, versionCount: 0 };
  }

  static open(url: string, opts: SocketWriterOptions = {}): SocketWriter {
    const u = parseSocketUrl(url, opts.cwd);
    const budgetMs = opts.remoteTimeoutMs ?? DEFAULT_REMOTE_TIMEOUT_MS;
    const log = opts.log ?? (() => {});
    const seal = sealOptions(u, opts);
    const worker = new SyncWorker(u, budgetMs, (n: Note) => log(n.level, n.message), seal);
    const w = new SocketWriter(url, worker, budgetMs, seal !== null);
    try {
      const r = worker.call({ op: 'open' }, budgetMs + 10_000);
      w.meta = w.check(r, 'connecting to the backup server')!;
      w.id = r.ok ? (r.id ?? null) : null;
    } catch (e) {
      worker.terminate();
      throw e;
    }
    return w;
  }

  private check(r: WorkerReply, what: string): Metadata | null {
    if (r.ok) return r.meta;
    throw remoteFailure(this.location, what, r.error, r.refused, this.budgetMs);
  }

  private usable(): void {
    if (this.closed) throw new BackupError(`${this.location}: the connection to the backup server was closed`, this.location);
  }

  head(): number {
    return this.meta.version;
  }

  /** The backup id a clnvault:// server reports (hex); null from a socket: server or an older clnvault server. */
  backupId(): string | null {
    return this.id;
  }

  isEmpty(): boolean {
    return this.meta.version === 0 && this.meta.versionCount === 0;
  }

  /**
   * The protocol does not say what the head entry is; only a snapshot sent by this writer is known to be
   * one. A rewind over an unknown snapshot is refused by clnvault server (NACK), so this errs safely.
   */
  headIsSnapshot(): boolean {
    return this.snapshotHead;
  }

  repaired(): Problem[] {
    return [];
  }

  appendChange(version: number, statements: readonly string[]): number {
    this.usable();
    if (this.sealed) {
      // sealed in the worker, which holds the session's cipher (its counter and chain)
      const r = this.worker.call({ op: 'sealedChange', version, statements: statements as string[] }, this.budgetMs + 10_000);
      this.meta = this.check(r, `sending version ${version}`)!;
      this.snapshotHead = false;
      return RECORD_OVERHEAD + encOverhead(1) + changePayloadLength(statements);
    }
    let pkt: Buffer;
    try {
      pkt = changePacket(version, statements);
    } catch (e) {
      throw new BackupError(`${this.location}: ${(e as Error).message}`, this.location);
    }
    this.meta = this.check(this.worker.call({ op: 'change', version, packet: pkt }, this.budgetMs + 10_000), `sending version ${version}`)!;
    this.snapshotHead = false;
    return pkt.length;
  }

  appendSnapshotFile(version: number, dbPath: string): void {
    this.usable();
    // a snapshot may take long to send; the worker bounds each chunk, this is only the backstop
    this.meta = this.check(this.worker.call({ op: 'snapshot', version, path: dbPath }, 24 * 3600_000), `sending the snapshot of version ${version}`)!;
    this.snapshotHead = true;
  }

  dropHead(): number {
    this.usable();
    if (this.snapshotHead) throw new BackupError(`${this.location}: the newest entry is a snapshot, which is never rewound`, this.location);
    const target = this.meta.prevVersion;
    this.meta = this.check(this.worker.call({ op: 'rewind', target }, this.budgetMs + 10_000), `rewinding to version ${target}`)!;
    return this.meta.version;
  }

  /**
   * `backup-compact` for a socket: backup: the server compacts (the reference answers with its statistics
   * as JSON text) or refuses (clnvault server: NACK); either way the answer is the server's.
   */
  compactRemote(): string {
    this.usable();
    const r = this.worker.call({ op: 'compact' }, this.budgetMs + 10_000);
    if (r.ok) {
      this.meta = r.meta ?? this.meta;
      return r.text ?? '';
    }
    throw new BackupError(`${this.location}: compaction failed: ${r.error}`, this.location);
  }

  /** An encrypted backup: its server has no key, so its compaction is the node's (compactSealed). */
  get encrypted(): boolean {
    return this.sealed;
  }

  /**
   * Compaction of an encrypted backup by the node: `path`, a copy of the node's database at exactly this
   * backup's head `version`, becomes the whole backup on the server (session.compactSealed, checked there
   * without the key). The caller makes the copy (multi/compact-dest.ts) and brings the head to its version.
   */
  compactSealed(version: number, path: string): string {
    this.usable();
    if (!this.sealed) throw new BackupError(`${this.location}: not an encrypted backup: the server compacts it itself`, this.location);
    if (version !== this.meta.version) throw new BackupError(`${this.location}: internal: a snapshot of version ${version} for a backup at ${this.meta.version}`, this.location);
    // the snapshot is sent in chunks, each with its deadline in the worker: this is only the backstop
    const r = this.worker.call({ op: 'compactSealed', version, path }, 24 * 3600_000);
    this.meta = this.check(r, 'compacting the encrypted backup')!;
    this.snapshotHead = true;
    return r.ok ? (r.text ?? '') : '';
  }

  stats(): BackupStats {
    return { format: this.format, location: this.location, head: this.meta.version, entries: this.meta.versionCount, bytes: 0 };
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.worker.call({ op: 'close' }, 5_000);
    this.worker.terminate();
  }
}
