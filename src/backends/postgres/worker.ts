import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { parentPort, workerData } from 'node:worker_threads';
import type { Client as PgClient, ClientConfig } from 'pg';
import { PG_REPLY_IN_SAB, PG_REPLY_ON_PORT, type HeaderRow, type HeadInfo, type PgEncryption, type PgNote, type PgReply, type PgRequest, type PgWorkerData } from './protocol.js';
import { CHUNK_BYTES, checkSchema, KIND_CHANGE, KIND_SNAPSHOT, migrate, SCHEMA_VERSION, schemaVersion } from './schema.js';
import { describeHolder, releaseLease, takeLease } from './lease.js';
import { isConnectionError, nextDelay } from './retry.js';

/**
 * The thread that owns one PostgreSQL connection. The synchronous side posts a request and sleeps on
 * an Atomics word; this thread runs the query on its own event loop, posts the reply on the port and
 * wakes it. Because this event loop keeps running while the plugin's main thread is blocked in read(2),
 * the connection stays serviced between db_writes.
 *
 * Imported by a main thread instead (no parentPort), the same operations run there: the plugin does that
 * when PostgreSQL is its only destination (async-writer.ts: configure(), then handle() per request, on
 * its own event loop). One connection per thread either way: the state below is this module's.
 *
 * `pg` is imported here only, so a plugin writing to a file: URL never loads it.
 */

export type PgSessionConfig = Pick<PgWorkerData, 'connectionString' | 'backup' | 'applicationName' | 'timeoutMs'>;

let data: PgSessionConfig = workerData as PgWorkerData;
/** For a main thread that runs the operations itself: before its first handle(). */
export function configure(config: PgSessionConfig): void {
  data = config;
}
let Client: typeof import('pg').Client;
let Query: typeof import('pg').Query;
let importError: string | null = null;
try {
  ({ Client, Query } = (await import('pg')).default);
} catch (e) {
  importError = `cannot load the PostgreSQL client library 'pg' (${(e as Error).message}): reinstall clnvault with its dependencies`;
}

/**
 * `$3::bigint`: the parameter is a bigint that the cached plan coerces to the column's domain (schema.ts,
 * migration 5), the path bench/postgres-schema.ts measures. Typed as the domain, it would go through the
 * domain's input function, which sets itself up again at every Bind (PostgreSQL's domains.c; not measured apart).
 */
const INSERT_CHANGE =
  'INSERT INTO clnvault.entries (backup_id, seq, kind, version, pragma_only, statements, bytes) VALUES ($1, $2, 0, $3::bigint, $4, $5, $6)';
/** an encrypted change: the stored record (prefix, ciphertext, tag) instead of the statements */
const INSERT_RECORD =
  'INSERT INTO clnvault.entries (backup_id, seq, kind, version, pragma_only, record, bytes) VALUES ($1, $2, 0, $3::bigint, $4, $5, $6)';
/**
 * a header row: for an encrypted entry also the first 64 bytes of its record (the prefix) and its last 16
 * (the tag), which is all the chain check needs
 */
const HEADER_COLUMNS = `seq, kind, version, pragma_only, bytes, chunks, substring(record from 1 for 64),
  CASE WHEN record IS NULL THEN NULL ELSE substring(record from greatest(length(record) - 15, 1)) END, length(record)`;

class Refused extends Error {}

const START_BUDGET_MS = 45_000;

let client: PgClient | null = null;
/** why the session went away between operations (the server restarted, a backend killed), until said */
let lostWhileIdle: string | null = null;
let backupId: number | null = null;
/** the backup row's encryption (migration 3), read with its id */
let encryption: PgEncryption | null = null;
/** the backups row's random 16-byte id (hex; null for a backup made before schema version 3): its identity across re-creations */
let uid: string | null = null;
/** writer state: the session holds the writer lock; `pendingDrop` is a rewind waiting for its replacement */
let writer: { nextSeq: number; head: HeadInfo; pendingDrop: number | null } | null = null;
let readerOpen = false;
let compactLock = false;

function config(): ClientConfig {
  return {
    connectionString: data.connectionString,
    application_name: data.applicationName,
    connectionTimeoutMillis: data.timeoutMs,
    query_timeout: data.timeoutMs,
    keepAlive: true,
  };
}

function where(): string {
  return `backup ${JSON.stringify(data.backup)}`;
}

function dropClient(): void {
  const c = client;
  client = null;
  if (c !== null) {
    c.removeAllListeners('error');
    c.on('error', () => undefined);
    c.end().catch(() => undefined);
  }
}

async function connect(): Promise<PgClient> {
  if (client !== null) return client;
  const c = new Client(config());
  // a connection dropped while idle must not crash the thread; the next query finds out and reconnects
  c.on('error', (e: Error) => {
    if (client === c) {
      client = null;
      lostWhileIdle = e.message;
    }
  });
  try {
    await c.connect();
  } catch (e) {
    c.end().catch(() => undefined);
    throw e;
  }
  client = c;
  return c;
}

async function lookupBackup(c: PgClient): Promise<number> {
  if (backupId !== null) return backupId;
  await checkSchema(c, 'the database');
  const r = await c.query('SELECT id, uid, enc_kind, enc_fingerprint FROM clnvault.backups WHERE name = $1', [data.backup]);
  if (r.rows.length === 0) {
    throw new Refused(
      `the database has no ${where()} that this role can see: create it with 'clnvault init' (as the role the node connects ` +
        `with), or check the backup= name and the user in the URL`,
    );
  }
  const row = r.rows[0];
  encryption =
    row.enc_kind === null
      ? null
      : { uid: (row.uid as Buffer).toString('hex'), kind: Number(row.enc_kind), fingerprint: (row.enc_fingerprint as Buffer).toString('hex') };
  uid = row.uid === null ? null : (row.uid as Buffer).toString('hex');
  backupId = Number(row.id);
  return backupId;
}

/** The chain link of the entry (seq, kind): a change's tag; a snapshot's link field, or its tag when that is zeros. */
async function linkOf(c: PgClient, id: number, seq: number, kind: number): Promise<string | null> {
  if (encryption === null) return null;
  const r = await c.query(
    `SELECT substring(record from 49 for 16) AS link, substring(record from greatest(length(record) - 15, 1)) AS tag
       FROM clnvault.entries WHERE backup_id = $1 AND seq = $2 AND kind = $3`,
    [id, seq, kind],
  );
  const row = r.rows[0];
  if (row === undefined || row.tag === null) return null;
  const link = row.link as Buffer | null;
  if (kind === KIND_SNAPSHOT && link !== null && link.length === 16 && !link.equals(Buffer.alloc(16))) return link.toString('hex');
  return (row.tag as Buffer).toString('hex');
}

async function readHead(c: PgClient, id: number): Promise<HeadInfo> {
  const r = await c.query(
    'SELECT seq, kind, version FROM clnvault.entries WHERE backup_id = $1 ORDER BY seq DESC, kind DESC LIMIT 1',
    [id],
  );
  if (r.rows.length === 0) return { empty: true, head: 0, headIsSnapshot: false, nextSeq: 1, link: null };
  const row = r.rows[0];
  return {
    empty: false,
    head: Number(row.version),
    headIsSnapshot: Number(row.kind) === KIND_SNAPSHOT,
    nextSeq: Number(row.seq) + 1,
    link: await linkOf(c, id, Number(row.seq), Number(row.kind)),
  };
}

/** The writer lease (lease.ts): '' when this session now holds it, else who does. */
async function takeWriterLease(c: PgClient, id: number): Promise<string | null> {
  const r = await takeLease(c, id, 'writer');
  return r.ok ? null : describeHolder(r.holder);
}

/** notes for the operator's log, taken with each operation's result (takeNotes) */
const notes: PgNote[] = [];

const NO_NOTES: readonly PgNote[] = [];

export function takeNotes(): readonly PgNote[] {
  // every db_write asks: no allocation when there is nothing to say
  return notes.length === 0 ? NO_NOTES : notes.splice(0);
}

/**
 * Runs `fn` on a live connection, reconnecting after connection loss with growing pauses until the
 * deadline; then gives up, so that the hook answers (with a refusal) instead of hanging lightningd.
 * `onReconnect` restores session state (the writer lock) before `fn` is retried.
 */
async function withRetry<T>(
  fn: (c: PgClient, retry: boolean) => Promise<T>,
  onReconnect?: (c: PgClient) => Promise<void>,
  budgetMs: number = data.timeoutMs,
): Promise<T> {
  const started = Date.now();
  const deadline = started + budgetMs;
  let attempt = 0;
  let lastError: unknown = null;
  for (;;) {
    let c: PgClient;
    try {
      // a new session (after a failure, or because the old one died while idle) holds no lock yet, and a
      // write may have been in flight when the old one went
      const fresh = client === null;
      c = await connect();
      if (fresh && onReconnect) await onReconnect(c);
      const r = await fn(c, attempt > 0 || fresh);
      if (attempt > 0) {
        notes.push({ level: 'warn', message: `reconnected to PostgreSQL (${where()}) after ${((Date.now() - started) / 1000).toFixed(1)} s` });
      } else if (fresh && lostWhileIdle !== null) {
        notes.push({ level: 'warn', message: `lost the connection to PostgreSQL (${where()}) while idle (${lostWhileIdle}); reconnected at once` });
      }
      lostWhileIdle = null;
      return r;
    } catch (e) {
      lastError = e;
      if (!isConnectionError(e)) throw e;
      dropClient();
      const left = deadline - Date.now();
      if (attempt === 0 && left > 0) {
        const why = lostWhileIdle ?? (e as Error).message;
        notes.push({ level: 'warn', message: `lost the connection to PostgreSQL (${where()}): ${why}; reconnecting (giving up after ${Math.ceil(left / 1000)} s)` });
      }
      lostWhileIdle = null;
      if (left <= 0) {
        throw new Error(
          `lost the connection to PostgreSQL and could not get it back within ${Math.round(budgetMs / 1000)} s ` +
            `("remote_timeout" in backup.lock): ${(lastError as Error).message}`,
        );
      }
      await new Promise((r) => setTimeout(r, Math.min(nextDelay(attempt), left)));
      attempt++;
    }
  }
}

async function relock(c: PgClient): Promise<void> {
  // The old session may not be gone on the server yet (a half-open TCP connection): its lock then is
  // still held, which counts as a connection problem to wait out, not as another writer, until the deadline.
  const held = await takeWriterLease(c, backupId!);
  if (held !== null) {
    const e = new Error(`the writer lease of ${where()} is still held by another session${held}`);
    (e as { retryable?: boolean }).retryable = true;
    throw e;
  }
}

type AppendReq = { version: number; statements: readonly string[]; pragmaOnly: boolean; record?: Uint8Array };

/**
 * A named (prepared) statement run as a Query object: pg's query(config) copies a config object through
 * Object.defineProperties on every call (utils.cloneQueryConfig), ~8 us per db_write in a profile of the
 * plugin; a Query made from the text and then named takes the same path without the copy.
 */
export function runNamed(c: PgClient, name: string, text: string, values: unknown[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const q = new Query(text, values, (err) => (err ? reject(err) : resolve()));
    // the field Query's constructor fills from config.name (test/postgres-query.test.ts checks it stays a prepared statement)
    (q as unknown as { name: string }).name = name;
    c.query(q);
  });
}

async function insertChange(c: PgClient, seq: number, req: AppendReq, bytes: number): Promise<void> {
  // named: parsed once per connection, then each write is one Bind/Execute/Sync round trip in autocommit
  if (req.record !== undefined) {
    const rec = Buffer.from(req.record.buffer, req.record.byteOffset, req.record.byteLength);
    await runNamed(c, 'clnvault_append_record', INSERT_RECORD, [backupId, seq, req.version, req.pragmaOnly, rec, bytes]);
    return;
  }
  await runNamed(c, 'clnvault_append', INSERT_CHANGE, [backupId, seq, req.version, req.pragmaOnly, req.statements, bytes]);
}

function statementBytes(statements: readonly string[]): number {
  let n = 0;
  for (const s of statements) n += Buffer.byteLength(s, 'utf8');
  return n;
}

async function append(req: AppendReq): Promise<number> {
  const w = writer!;
  const seq = w.nextSeq;
  // never plaintext into an encrypted backup, nor ciphertext into a plaintext one (the writer checks too)
  if ((req.record !== undefined) !== (encryption !== null)) {
    throw new Refused(`internal: ${req.record !== undefined ? 'an encrypted record for a plaintext' : 'plaintext statements for an encrypted'} ${where()}`);
  }
  const bytes = req.record !== undefined ? req.record.byteLength : statementBytes(req.statements);
  await withRetry(async (c, retry) => {
    if (retry) {
      // the write in flight when the connection broke either committed or did not: look before writing again
      const r = await c.query('SELECT version FROM clnvault.entries WHERE backup_id = $1 AND seq = $2 AND kind = 0', [backupId, seq]);
      if (r.rows.length > 0) {
        if (Number(r.rows[0].version) !== req.version) throw new Refused(`entry ${seq} of ${where()} holds another version: another writer?`);
        return;
      }
    }
    if (w.pendingDrop === null) {
      await insertChange(c, seq, req, bytes);
      return;
    }
    // rewind: the never-committed version goes and its replacement comes in one transaction
    await c.query('BEGIN');
    try {
      await c.query('DELETE FROM clnvault.entries WHERE backup_id = $1 AND seq >= $2', [backupId, w.pendingDrop]);
      await insertChange(c, seq, req, bytes);
      await c.query('COMMIT');
    } catch (e) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw e;
    }
  }, relock);
  w.pendingDrop = null;
  w.nextSeq = seq + 1;
  w.head = { empty: false, head: req.version, headIsSnapshot: false, nextSeq: w.nextSeq };
  return bytes;
}

/**
 * The head after removing the trailing entries of the head version. The removal itself waits for the
 * replacement, so that both happen in one transaction (see append); a close() before that performs it.
 */
async function dropHead(): Promise<HeadInfo> {
  const w = writer!;
  if (w.head.empty) return w.head;
  const below = w.pendingDrop ?? w.nextSeq;
  const r = await withRetry((c) =>
    c.query(
      `SELECT seq, kind, version FROM clnvault.entries WHERE backup_id = $1 AND seq < $3 AND version <> $2
        ORDER BY seq DESC, kind DESC LIMIT 1`,
      [backupId, w.head.head, below],
    ), relock);
  const row = r.rows[0];
  w.pendingDrop = row === undefined ? 0 : Number(row.seq) + 1;
  const link = row === undefined ? null : await withRetry((c) => linkOf(c, backupId!, Number(row.seq), Number(row.kind)), relock);
  w.head = row === undefined
    ? { empty: true, head: 0, headIsSnapshot: false, nextSeq: w.nextSeq, link: null }
    : { empty: false, head: Number(row.version), headIsSnapshot: Number(row.kind) === KIND_SNAPSHOT, nextSeq: w.nextSeq, link };
  return w.head;
}

/** A rewind that no replacement followed (the plugin stops): applied on its own. */
async function flushDrop(): Promise<void> {
  const w = writer;
  if (w === null || w.pendingDrop === null || client === null) return;
  await client.query('DELETE FROM clnvault.entries WHERE backup_id = $1 AND seq >= $2', [backupId, w.pendingDrop]);
  w.pendingDrop = null;
}

/** Streams the SQLite file into chunk rows inside one transaction: memory holds one chunk at a time. */
async function storeSnapshot(c: PgClient, seq: number, version: number, path: string, envelope?: Uint8Array): Promise<number> {
  if ((envelope !== undefined) !== (encryption !== null)) {
    throw new Refused(`internal: ${envelope !== undefined ? 'an encrypted snapshot for a plaintext' : 'a plaintext snapshot for an encrypted'} ${where()}`);
  }
  const env = envelope === undefined ? null : Buffer.from(envelope.buffer, envelope.byteOffset, envelope.byteLength);
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const chunks = Math.ceil(size / CHUNK_BYTES);
    await c.query('BEGIN');
    try {
      await c.query(
        'INSERT INTO clnvault.entries (backup_id, seq, kind, version, pragma_only, statements, bytes, chunks, record) VALUES ($1, $2, 1, $3, false, NULL, $4, $5, $6)',
        [backupId, seq, version, size, chunks, env],
      );
      const buf = Buffer.allocUnsafe(CHUNK_BYTES);
      for (let i = 0; i < chunks; i++) {
        const want = Math.min(CHUNK_BYTES, size - i * CHUNK_BYTES);
        let got = 0;
        while (got < want) {
          const { bytesRead } = await fh.read(buf, got, want - got, i * CHUNK_BYTES + got);
          if (bytesRead === 0) throw new Error(`${path} shrank while it was being stored`);
          got += bytesRead;
        }
        await c.query('INSERT INTO clnvault.snapshot_chunks (backup_id, seq, chunk, data) VALUES ($1, $2, $3, $4)', [backupId, seq, i, buf.subarray(0, want)]);
      }
      await c.query('COMMIT');
    } catch (e) {
      await c.query('ROLLBACK').catch(() => undefined);
      throw e;
    }
    return size;
  } finally {
    await fh.close();
  }
}

async function snapshotTo(seq: number, chunks: number, path: string): Promise<void> {
  const c = client!;
  const fh = await open(path, 'wx', 0o600);
  try {
    let pos = 0;
    for (let i = 0; i < chunks; i++) {
      const r = await c.query({
        text: 'SELECT data FROM clnvault.snapshot_chunks WHERE backup_id = $1 AND seq = $2 AND chunk = $3',
        values: [backupId, seq, i],
      });
      if (r.rows.length === 0) throw new Error(`chunk ${i} of the snapshot at entry ${seq} of ${where()} is missing`);
      const b = r.rows[0].data as Buffer;
      await fh.write(b, 0, b.length, pos);
      pos += b.length;
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export async function handle(req: PgRequest): Promise<unknown> {
  if (importError !== null) throw new Error(importError);
  switch (req.op) {
    case 'create': {
      const c = await connect();
      const v = await schemaVersion(c);
      const migrated = v === SCHEMA_VERSION ? null : await migrate(c);
      try {
        const enc = req.enc ?? null;
        const r = await c.query('INSERT INTO clnvault.backups (name, uid, enc_kind, enc_fingerprint) VALUES ($1, $2, $3, $4) RETURNING id', [
          data.backup,
          randomBytes(16),
          enc?.kind ?? null,
          enc ? Buffer.from(enc.fingerprint, 'hex') : null,
        ]);
        backupId = Number(r.rows[0].id);
      } catch (e) {
        if ((e as { code?: string }).code === '23505') {
          throw new Refused(`the database already holds a ${where()}; choose another backup= name, or restore from that one`);
        }
        throw e;
      }
      return { migrated };
    }
    case 'migrate': {
      const c = await connect();
      return (await schemaVersion(c)) === SCHEMA_VERSION ? null : migrate(c);
    }
    case 'drop': {
      const c = await connect();
      // no foreign key cascades from the backup's row (schema.ts, migration 4): its entries go first, together
      await c.query('BEGIN');
      try {
        await c.query('DELETE FROM clnvault.entries WHERE backup_id IN (SELECT id FROM clnvault.backups WHERE name = $1)', [data.backup]);
        await c.query('DELETE FROM clnvault.backups WHERE name = $1', [data.backup]);
        await c.query('COMMIT');
      } catch (e) {
        await c.query('ROLLBACK').catch(() => undefined);
        throw e;
      }
      backupId = null;
      return null;
    }
    case 'openWriter': {
      // The plugin opens its writer before answering getmanifest, and lightningd gives up on a plugin after
      // --plugin-timeout (60 s): a longer wait would lose the log line saying why the node did not start.
      const c = await withRetry((c) => Promise.resolve(c), undefined, Math.min(data.timeoutMs, START_BUDGET_MS));
      const id = await lookupBackup(c);
      const held = await takeWriterLease(c, id);
      if (held !== null) {
        throw new Refused(
          `${where()} is already being written by another clnvault plugin${held}: one node, one writer. ` +
            `Stop the other node (or point this one at its own backup= name)`,
        );
      }
      const head = await readHead(c, id);
      writer = { nextSeq: head.nextSeq, head, pendingDrop: null };
      return { ...head, enc: encryption };
    }
    case 'append':
      return append(req);
    case 'dropHead':
      return dropHead();
    case 'snapshot': {
      if (req.seq !== undefined) {
        // compaction: placed at the seq of the last entry it covers, sorting after it
        const c = await connect();
        await lookupBackup(c);
        return storeSnapshot(c, req.seq, req.version, req.path, req.envelope);
      }
      const w = writer!;
      if (w.pendingDrop !== null) throw new Refused('internal: a snapshot cannot follow a rewind');
      const seq = w.nextSeq;
      const size = await withRetry((c) => storeSnapshot(c, seq, req.version, req.path, req.envelope), relock);
      w.nextSeq = seq + 1;
      w.head = { empty: false, head: req.version, headIsSnapshot: true, nextSeq: w.nextSeq };
      return size;
    }
    case 'openReader': {
      const c = await withRetry((c) => Promise.resolve(c));
      // one consistent view for the reader's whole life, however the plugin or a compaction writes meanwhile
      await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      readerOpen = true;
      await lookupBackup(c);
      return { enc: encryption, uid };
    }
    case 'headers': {
      // one page, in order, from the entry whose offset (seq * 2 + kind) is `from`; `seq >= $2 / 2` lets the
      // primary key start the scan there (the offset alone is a filter: every page re-read the pages before it)
      const r = await client!.query({
        text: `SELECT ${HEADER_COLUMNS} FROM clnvault.entries
                WHERE backup_id = $1 AND seq >= $2::bigint / 2 AND seq * 2 + kind >= $2::bigint ORDER BY seq, kind LIMIT $3`,
        values: [backupId, req.from, req.limit],
        rowMode: 'array',
      });
      return r.rows.map(toHeaderRow);
    }
    case 'entryRow': {
      const r = await client!.query({
        text: `SELECT ${HEADER_COLUMNS} FROM clnvault.entries WHERE backup_id = $1 AND seq = $2 AND kind = $3`,
        values: [backupId, req.seq, req.kind],
        rowMode: 'array',
      });
      return r.rows.length === 0 ? null : toHeaderRow(r.rows[0]);
    }
    case 'stats': {
      const r = await client!.query('SELECT count(*) AS n, coalesce(sum(bytes), 0) AS b FROM clnvault.entries WHERE backup_id = $1', [backupId]);
      return { entries: Number(r.rows[0].n), bytes: Number(r.rows[0].b) };
    }
    case 'changes': {
      const r = await client!.query({
        text: `SELECT seq, statements, record FROM clnvault.entries WHERE backup_id = $1 AND kind = ${KIND_CHANGE} AND seq >= $2 ORDER BY seq LIMIT $3`,
        values: [backupId, req.fromSeq, req.limit],
        rowMode: 'array',
      });
      return r.rows.map((x) => [Number(x[0]), (x[1] as string[] | null) ?? (x[2] as Buffer)]);
    }
    case 'snapshotTo':
      await snapshotTo(req.seq, req.chunks, req.path);
      return null;
    case 'tryCompactLock': {
      const c = await connect();
      const id = await lookupBackup(c);
      compactLock = (await takeLease(c, id, 'compact')).ok;
      return compactLock;
    }
    case 'deleteSuperseded': {
      // one transaction: the entries the committed snapshot covers (and their chunks, by cascade)
      const c = client!;
      const r = await c.query(
        `DELETE FROM clnvault.entries WHERE backup_id = $1 AND (seq < $2 OR (seq = $2 AND kind = ${KIND_CHANGE}))`,
        [backupId, req.seq],
      );
      return r.rowCount ?? 0;
    }
    case 'close': {
      await flushDrop().catch(() => undefined);
      const c = client;
      client = null;
      if (c !== null && backupId !== null && !readerOpen) {
        // the session's end frees a lease anyway; giving it back says so at once
        if (writer !== null) await releaseLease(c, backupId, 'writer').catch(() => undefined);
        if (compactLock) await releaseLease(c, backupId, 'compact').catch(() => undefined);
      }
      if (c !== null) {
        if (readerOpen) await c.query('ROLLBACK').catch(() => undefined);
        await c.end().catch(() => undefined);
      }
      return null;
    }
  }
}

function toHeaderRow(x: unknown[]): HeaderRow {
  return {
    seq: Number(x[0]),
    kind: Number(x[1]) as 0 | 1,
    version: Number(x[2]),
    pragmaOnly: x[3] as boolean,
    bytes: Number(x[4]),
    chunks: Number(x[5]),
    head: (x[6] as Buffer | null) ?? null,
    tag: (x[7] as Buffer | null) ?? null,
    recordBytes: x[8] === null ? null : Number(x[8]),
  };
}

/** started by a PgBridge (bridge.ts), not imported by a thread that runs handle() itself */
const bridged = parentPort !== null && (workerData as Partial<PgWorkerData> | null)?.sab instanceof SharedArrayBuffer;
/** the bridge's shared words (a thread running handle() itself has none) */
const flag = bridged ? new Int32Array((workerData as PgWorkerData).sab) : new Int32Array(1);
const fast = bridged ? new Float64Array((workerData as PgWorkerData).fast) : new Float64Array(2);

function reply(r: PgReply): void {
  const n = takeNotes();
  if (n.length > 0) r.notes = [...n];
  if (r.ok && typeof r.value === 'number' && r.notes === undefined) {
    // written before the flag is raised (Atomics.store orders them), read after it is seen
    fast[0] = r.id;
    fast[1] = r.value;
    Atomics.store(flag, 0, PG_REPLY_IN_SAB);
  } else {
    (workerData as PgWorkerData).port.postMessage(r);
    Atomics.store(flag, 0, PG_REPLY_ON_PORT);
  }
  Atomics.notify(flag, 0);
}

if (bridged) {
  parentPort!.on('message', (msg: { id: number; req: PgRequest }) => {
    handle(msg.req).then(
      (value) => reply({ id: msg.id, ok: true, value }),
      (e: unknown) => {
        const err = e as Error & { code?: string };
        reply({ id: msg.id, ok: false, message: err instanceof Error ? err.message : String(e), ...(typeof err.code === 'string' ? { code: err.code } : {}) });
      },
    );
  });
}
