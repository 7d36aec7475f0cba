import { RefusedError, type Conn } from './conn.js';
import { openConnection } from './connect.js';
import { PKT, packet, packetName, parseMetadata, parseMetadataWithId, parseU32, ProtocolError, reqMetadataPacket, type Metadata } from './protocol.js';
import { sendSnapshotFile } from './snapshot.js';
import type { SocketUrl } from './url.js';
import { askHello, encryptPacket, parseServedHeader, refusal, sealedChangePacket, sendSealedSnapshot, XPKT } from './sealed.js';
import { cryptFor, type KeyLike } from '../../crypto/backup-crypt.js';
import { keyKindCode, type KeyKindName, type RecordCrypt } from '../../crypto/records.js';

/**
 * The client side of one backup on a socket server, with the reference client's flows (metadata,
 * change, snapshot, rewind) and what the reference lacks: a deadline on everything, reconnection with
 * backoff within that deadline, and an exact "did my write land?" check after a reconnect.
 */

export { RefusedError };

/** Packets the server sends outside a restore are ACK/NACK/METADATA/COMPACT_RES: small. */
const MAX_REPLY = 16 << 20;
const FIRST_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 5_000;
/** one attempt's wait for an answer; shorter than the whole budget so a hung server gets a reconnect */
const ATTEMPT_MS = 15_000;
const START_BUDGET_MS = 45_000;

export type Note = { level: 'info' | 'warn' | 'error'; message: string };

/**
 * An encrypted clnvault:// backup: the node seals every record itself (src/backends/socket/sealed.ts).
 * `encryptEmpty`: an empty, plain backup on the server may be made an encrypted one (init --encrypt).
 */
export interface SealOptions {
  key: KeyLike;
  encryptEmpty: boolean;
}

export class SocketSession {
  private conn: Conn | null = null;
  meta: Metadata | null = null;
  /**
   * the backup id a clnvault:// server reported (hex), null while none did (an older clnvault server, a
   * socket: server): a reconnection that finds another one reached another backup, and fails
   */
  backupId: string | null = null;
  readonly notes: Note[] = [];

  /** the record cipher and the server file's record seed, learnt at the first connection */
  private sealer: { crypt: RecordCrypt; seed: number; backupId: Buffer } | null = null;

  constructor(
    readonly url: SocketUrl,
    /** "remote_timeout": how long one operation may take, reconnects included, before it fails */
    readonly budgetMs: number,
    readonly seal: SealOptions | null = null,
  ) {}

  /**
   * HELLO (and, for init, ENCRYPT): the server's backup must be encrypted under this node's key. The chain
   * link is taken from the server only at the first connection (and after a rewind); within a session the
   * node keeps its own, so a server cannot make it chain past records it dropped.
   */
  private async sealedHello(conn: Conn, ms: number): Promise<void> {
    const seal = this.seal!;
    let hello = await askHello(conn, ms);
    if (hello.header === null) {
      throw new RefusedError(`${conn.peer}: the server keeps this node's backup in format v1, which cannot be encrypted; re-create the node on the server (add-node makes format v2)`);
    }
    let info = parseServedHeader(hello.header);
    if (info.encryption === null && seal.encryptEmpty) {
      const enc = { kind: keyKindCode(seal.key.kind as KeyKindName), fingerprint: Buffer.from(seal.key.fingerprint, 'hex') };
      await conn.write(encryptPacket(enc), ms);
      const r = await conn.readPacket(ms, ms, MAX_REPLY);
      if (r === null) throw new ProtocolError(`${conn.peer}: connection closed before the answer to ENCRYPT`);
      if (r.type === XPKT.ERROR) throw refusal(conn, r.payload);
      if (r.type !== PKT.ACK) throw new RefusedError(`${conn.peer}: answered ENCRYPT with ${packetName(r.type)}`);
      hello = await askHello(conn, ms);
      info = parseServedHeader(hello.header!);
    }
    let crypt: RecordCrypt;
    try {
      crypt = cryptFor(this.url.url, info.encryption, info.backupId, seal.key, true)!;
    } catch (e) {
      throw new RefusedError((e as Error).message);
    }
    if (this.sealer === null) {
      crypt.link = hello.tailLink;
      this.sealer = { crypt, seed: info.seed, backupId: info.backupId };
    } else if (!this.sealer.backupId.equals(info.backupId)) {
      throw new RefusedError(`${conn.peer}: after reconnecting, the server holds another backup for this node (backup id ${info.backupId.toString('hex')}): refusing to chain records into it`);
    } else {
      this.sealer.seed = info.seed;
    }
  }

  /** Seals a change (the same construction as the v2 file writer) and sends it; resolves once ACKed. */
  async sealedChange(version: number, statements: readonly string[]): Promise<number> {
    const s = this.sealer!;
    const pkt = sealedChangePacket(s.crypt, s.seed, version, statements);
    await this.change(version, pkt);
    s.crypt.committed();
    return pkt.length;
  }

  private async connect(deadline: number): Promise<Conn> {
    const left = Math.max(1, deadline - Date.now());
    const conn = await openConnection(this.url, Math.min(left, ATTEMPT_MS));
    try {
      if (this.seal !== null) await this.sealedHello(conn, Math.min(left, ATTEMPT_MS));
      // only a clnvault:// server is asked for the backup id: the reference server is never sent a payload it does not expect
      await conn.write(reqMetadataPacket(this.url.tls !== null), Math.min(left, ATTEMPT_MS));
      const r = await conn.readPacket(Math.min(left, ATTEMPT_MS), Math.min(left, ATTEMPT_MS), MAX_REPLY);
      if (r === null) throw new ProtocolError(`${conn.peer}: connection closed before METADATA`);
      if (r.type === XPKT.ERROR) throw refusal(conn, r.payload);
      if (r.type !== PKT.METADATA) throw new RefusedError(`${conn.peer}: answered REQ_METADATA with ${packetName(r.type)}; is this a backup server?`);
      const { meta, id } = parseMetadataWithId(r.payload);
      if (id !== null && this.backupId !== null && id !== this.backupId) {
        throw new RefusedError(
          `${conn.peer}: after reconnecting, the server's backup id is ${id}, but it was ${this.backupId}: the backup was ` +
            `replaced on the server (another backup, or a copy from elsewhere) and is not written to`,
        );
      }
      this.meta = meta;
      this.backupId = id ?? this.backupId;
    } catch (e) {
      conn.close();
      throw e;
    }
    this.conn = conn;
    return conn;
  }

  drop(): void {
    this.conn?.close();
    this.conn = null;
  }

  /**
   * Runs `attempt` on a live connection, reconnecting with backoff until `budgetMs` has passed.
   * `before` is the server's state before the operation; after a reconnect, `landed` decides from the
   * fresh METADATA whether the lost attempt already took effect, and `same` whether it did not.
   */
  async withRetry<T>(
    what: string,
    attempt: (conn: Conn, deadline: number) => Promise<T>,
    afterReconnect?: (m: Metadata) => 'landed' | 'resend' | string,
    landedResult?: () => T,
    budgetMs = this.budgetMs,
  ): Promise<T> {
    const start = Date.now();
    const deadline = start + budgetMs;
    let delay = FIRST_BACKOFF_MS;
    let tries = 0;
    let lastError: Error | null = null;
    for (;;) {
      tries++;
      try {
        let conn = this.conn;
        if (conn === null) {
          conn = await this.connect(deadline);
          if (lastError !== null) {
            this.notes.push({ level: 'warn', message: `reconnected to ${conn.peer} after ${((Date.now() - start) / 1000).toFixed(1)} s (${lastError.message})` });
            if (afterReconnect) {
              const d = afterReconnect(this.meta!);
              if (d === 'landed') return landedResult!();
              if (d !== 'resend') throw new RefusedError(d);
            }
          }
        }
        return await attempt(conn, deadline);
      } catch (e) {
        const err = e as Error;
        this.drop();
        if (err instanceof RefusedError) throw err;
        lastError = err;
        const left = deadline - Date.now();
        if (left <= 0 || tries > 10_000) {
          throw new Error(
            `${what}: the backup server ${formatUrl(this.url)} could not be reached within remote_timeout ` +
              `(${Math.round(budgetMs / 1000)} s, ${tries} attempt(s)); last error: ${err.message}`,
          );
        }
        if (tries === 1) this.notes.push({ level: 'warn', message: `${what}: ${err.message}; reconnecting (giving up after ${Math.round(left / 1000)} s)` });
        await new Promise((r) => setTimeout(r, Math.min(delay, Math.max(0, left))));
        delay = Math.min(delay * 2, MAX_BACKOFF_MS);
      }
    }
  }

  /** REQ_METADATA on this session's connection: its version and entry count are the ones the next write is checked against. */
  async refreshMetadata(): Promise<Metadata> {
    return this.withRetry('reading the server\'s metadata', async (conn, deadline) => {
      await conn.write(reqMetadataPacket(this.url.tls !== null), attemptMs(deadline));
      const r = await conn.readPacket(attemptMs(deadline), attemptMs(deadline), MAX_REPLY);
      if (r === null) throw new ProtocolError(`${conn.peer}: connection closed before METADATA`);
      if (r.type !== PKT.METADATA) throw new RefusedError(`${conn.peer}: answered REQ_METADATA with ${packetName(r.type)}`);
      this.meta = parseMetadataWithId(r.payload).meta;
      return this.meta;
    });
  }

  /**
   * At start-up the plugin has not answered getmanifest yet, and lightningd gives up on a plugin after
   * its --plugin-timeout (60 s): waiting longer would lose the log line that says why. The first
   * connection therefore waits at most START_BUDGET_MS even with a larger remote_timeout.
   */
  async open(): Promise<Metadata> {
    return this.withRetry('connecting', async () => this.meta!, undefined, undefined, Math.min(this.budgetMs, START_BUDGET_MS));
  }

  /** Sends a ready CHANGE packet; resolves with the server's version once it ACKed. */
  async change(version: number, pkt: Buffer): Promise<number> {
    const before = { ...this.meta! };
    return this.withRetry(
      `sending version ${version}`,
      async (conn, deadline) => {
        await conn.write(pkt, attemptMs(deadline));
        return this.expectAck(conn, attemptMs(deadline), version, before);
      },
      (m) => this.landedOrResend(m, version, before),
      () => version,
    );
  }

  /** Streams a SNAPSHOT of the SQLite file `path`. */
  async snapshot(version: number, path: string): Promise<number> {
    const before = { ...this.meta! };
    return this.withRetry(
      `sending the snapshot of version ${version}`,
      async (conn, deadline) => {
        // each chunk gets its own deadline: a large snapshot over Tor takes as long as it takes
        if (this.sealer !== null) await sendSealedSnapshot(conn, this.sealer.crypt, this.sealer.seed, version, path, ATTEMPT_MS);
        else await sendSnapshotFile(conn, version, path, ATTEMPT_MS);
        // the server inflates and fdatasyncs the whole database before it answers
        return this.expectAck(conn, Math.max(attemptMs(deadline), 4 * ATTEMPT_MS), version, before);
      },
      (m) => this.landedOrResend(m, version, before),
      () => version,
    ).then((v) => {
      this.sealer?.crypt.committed();
      return v;
    });
  }

  /**
   * An encrypted backup compacted by this node, which has the key (the server has not): the snapshot of
   * the database at `path`, which is at the backup's head `version`, sealed as a chain start that names
   * the newest record's link, sent as COMPACT_STREAM; the server makes it the whole backup
   * (server/sealed-compact.ts) and answers its statistics. The chain's link does not change. Resent after
   * a lost connection: a second one replaces the first, which is equally whole.
   */
  async compactSealed(version: number, path: string, budgetMs: number): Promise<string> {
    const s = this.sealer;
    if (s === null) throw new RefusedError('internal: compactSealed on a session without a key');
    return this.withRetry(
      'compacting the encrypted backup',
      async (conn, deadline) => {
        await sendSealedSnapshot(conn, s.crypt, s.seed, version, path, ATTEMPT_MS, true);
        // the server writes and fdatasyncs the new file before it answers
        const r = await conn.readPacket(Math.max(attemptMs(deadline), 4 * ATTEMPT_MS), attemptMs(deadline), MAX_REPLY);
        if (r === null) throw new ProtocolError(`${conn.peer}: connection closed before the answer to the compaction`);
        if (r.type === XPKT.ERROR) throw refusal(conn, r.payload);
        if (r.type !== PKT.COMPACT_RES) throw new RefusedError(`${conn.peer}: answered the compaction with ${packetName(r.type)}`);
        s.crypt.committed();
        await conn.write(reqMetadataPacket(true), attemptMs(deadline));
        const m = await conn.readPacket(attemptMs(deadline), attemptMs(deadline), MAX_REPLY);
        if (m === null || m.type !== PKT.METADATA) throw new RefusedError(`${conn.peer}: no METADATA after the compaction`);
        this.meta = parseMetadataWithId(m.payload).meta;
        return r.payload.toString('utf8');
      },
      () => 'resend',
      undefined,
      budgetMs,
    );
  }

  /** REWIND to `target` (the version before the head); the server answers ACK or NACK. */
  async rewind(target: number): Promise<Metadata> {
    return this.withRetry(`rewinding to version ${target}`, async (conn, deadline) => {
      await conn.write(u32(PKT.REWIND, target), attemptMs(deadline));
      const r = await conn.readPacket(attemptMs(deadline), attemptMs(deadline), MAX_REPLY);
      if (r === null) throw new ProtocolError(`${conn.peer}: connection closed before the answer to REWIND`);
      if (r.type === PKT.NACK) {
        throw new RefusedError(`the server refused to rewind to version ${target} (it is at version ${parseU32(r.type, r.payload)})`);
      }
      if (r.type !== PKT.ACK) throw new RefusedError(`${conn.peer}: answered REWIND with ${packetName(r.type)}`);
      // the ACK carries the new version but not the entry count: ask, so a later reconnect check is exact
      await conn.write(packet(PKT.REQ_METADATA), attemptMs(deadline));
      const m = await conn.readPacket(attemptMs(deadline), attemptMs(deadline), MAX_REPLY);
      if (m === null || m.type !== PKT.METADATA) throw new ProtocolError(`${conn.peer}: no METADATA after REWIND`);
      this.meta = parseMetadata(m.payload);
      // the records after the new head are gone: the next one chains to the server's newest
      if (this.sealer !== null) this.sealer.crypt.link = (await askHello(conn, attemptMs(deadline))).tailLink;
      return this.meta;
    });
  }

  /**
   * COMPACT: the server compacts its file and answers COMPACT_RES with its statistics (JSON), as the
   * reference's does; clnvault server refuses an encrypted backup (no key), with NACK or, over clnvault://, why. The entry count
   * changes with a compaction, so the metadata is fetched again: the landed-or-resend check after a
   * later reconnect compares against it. Resent after a lost connection: compacting twice does no harm.
   */
  async compact(budgetMs = this.budgetMs): Promise<string> {
    return this.withRetry(
      'compacting',
      async (conn, deadline) => {
        await conn.write(packet(PKT.COMPACT), attemptMs(deadline));
        // the reference compacts synchronously before it answers: as long as the whole budget
        const r = await conn.readPacket(Math.max(1, deadline - Date.now()), attemptMs(deadline), MAX_REPLY);
        if (r === null) throw new ProtocolError(`${conn.peer}: connection closed before the answer to COMPACT`);
        await conn.write(packet(PKT.REQ_METADATA), attemptMs(deadline));
        const m = await conn.readPacket(attemptMs(deadline), attemptMs(deadline), MAX_REPLY);
        if (m === null || m.type !== PKT.METADATA) throw new RefusedError(`${conn.peer}: no METADATA after COMPACT`);
        this.meta = parseMetadata(m.payload);
        if (r.type === XPKT.ERROR) throw refusal(conn, r.payload);
        if (r.type === PKT.NACK) {
          throw new RefusedError(
            `the backup server did not compact (it answered NACK; its log says why). An encrypted backup cannot be compacted ` +
              `by the server, which has no key, and an older clnvault server does not compact over the protocol: run ` +
              `'clnvault compact FILE_URL' on a copy of the server's file, where the key is, while the server is stopped ` +
              `(docs/remote.md); the backup is unchanged`,
          );
        }
        if (r.type !== PKT.COMPACT_RES) throw new RefusedError(`${conn.peer}: answered COMPACT with ${packetName(r.type)}`);
        return r.payload.toString('utf8');
      },
      () => 'resend',
      undefined,
      budgetMs,
    );
  }

  private async expectAck(conn: Conn, timeoutMs: number, version: number, before: Metadata): Promise<number> {
    const r = await conn.readPacket(timeoutMs, timeoutMs, MAX_REPLY);
    if (r === null) throw new ProtocolError(`${conn.peer}: connection closed before the ACK of version ${version}`);
    if (r.type === XPKT.ERROR) throw refusal(conn, r.payload);
    if (r.type === PKT.NACK) {
      const at = r.payload.length === 4 ? r.payload.readUInt32BE(0) : null;
      throw new RefusedError(`the server refused version ${version}${at === null ? '' : ` (it holds up to version ${at})`}`);
    }
    if (r.type !== PKT.ACK) throw new RefusedError(`${conn.peer}: answered version ${version} with ${packetName(r.type)} instead of ACK`);
    this.meta = { protocol: before.protocol, version, prevVersion: before.version, versionCount: before.versionCount + 1 };
    return version;
  }

  private landedOrResend(m: Metadata, version: number, before: Metadata): 'landed' | 'resend' | string {
    // A new version tells by itself whether it landed (one writer per backup). The entry count is needed
    // only for a PRAGMA-only batch that repeats the head's version, and a compaction on the server may
    // change it while this writer goes on (compactAside, async-writer.ts), so it is not asked otherwise.
    if ((version >>> 0) !== before.version) {
      if (m.version === (version >>> 0)) return 'landed';
      if (m.version === before.version) return 'resend';
    } else {
      if (m.version === before.version && m.versionCount === before.versionCount + 1) return 'landed';
      if (m.version === before.version && m.versionCount === before.versionCount) return 'resend';
    }
    return (
      `after reconnecting, the server holds version ${m.version} (${m.versionCount} entries), but before sending version ` +
      `${version} it held ${before.version} (${before.versionCount} entries): another client wrote to this backup`
    );
  }
}

function attemptMs(deadline: number): number {
  return Math.max(1, Math.min(deadline - Date.now(), ATTEMPT_MS));
}

function u32(type: number, v: number): Buffer {
  const p = Buffer.alloc(4);
  p.writeUInt32BE(v >>> 0);
  return packet(type, p);
}


export function formatUrl(u: SocketUrl): string {
  return u.url;
}
