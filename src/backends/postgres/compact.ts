import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BackupReader } from '../backend.js';
import type { EntryHeader } from '../../engine/entries.js';
import { restoreBackup } from '../../restore/restore.js';
import type { KeyLike } from '../../crypto/backup-crypt.js';
import { PgBridge } from './bridge.js';
import { encryptSnapshotFile, pgCrypt, rowLink } from './crypt.js';
import type { HeaderRow } from './protocol.js';
import { PgReader } from './reader.js';
import { remoteTimeoutMs } from './timeout.js';
import { parsePgUrl } from './url.js';

/**
 * Compaction inside the database, safe while the plugin writes: it never takes the writer lock.
 *
 * 1. In one consistent view (the reader's REPEATABLE READ transaction), every entry before the trailing
 *    entries of the head version is restored into a scratch SQLite file. The head version stays as it is,
 *    so that the plugin can still rewind it.
 * 2. That database is stored as a snapshot row, in chunks, committed in its own transaction. It takes the
 *    seq of the last entry it covers and sorts right after it, so the backup restores to the same state
 *    whether or not step 3 has run yet.
 * 3. One transaction deletes the entries the snapshot covers (their chunks go by cascade).
 *
 * The plugin's appends only ever add seqs above the covered ones, and its rewind only removes entries
 * of the head version, which are never covered: the two do not touch the same rows.
 *
 * An encrypted backup needs its key: the chain is checked and every entry replayed is decrypted and
 * authenticated (a record dropped or forged is not baked into a snapshot), and the snapshot is encrypted
 * in a new session (a new salt) as a chain start whose link is the link of the last entry it covers, so
 * that the entries after it still chain (crypt.ts).
 */

export interface PgCompactStats {
  compacted: boolean;
  before: { entries: number; bytes: number; head: number };
  after: { entries: number; bytes: number; head: number };
  snapshotVersion: number | null;
  deleted: number;
}

export function compactPg(url: string, opts: { tmpDir?: string; netDir?: string | null; log?: (msg: string) => void; key?: KeyLike | null } = {}): PgCompactStats {
  const target = parsePgUrl(url);
  const timeout = remoteTimeoutMs(opts.netDir ?? null).ms;
  const control = new PgBridge(target, timeout, `clnvault compact ${target.backup}`);
  let reader: PgReader | null = null;
  const scratch = mkdtempSync(join(opts.tmpDir ?? tmpdir(), 'clnvault-pgcompact-'));
  try {
    if (!control.call<boolean>({ op: 'tryCompactLock' })) {
      throw new Error(`another compaction of backup ${JSON.stringify(target.backup)} is running; try again when it is done`);
    }
    reader = PgReader.open(target, timeout);
    if (reader.encryption !== null) {
      const auth = reader.unlock(opts.key, 'chain');
      if (auth?.problem) throw new Error(`${target.display}: ${auth.problem.message}; nothing was compacted`);
    }
    const before = reader.stats();
    const result: PgCompactStats = {
      compacted: false,
      before: { entries: before.entries, bytes: before.bytes, head: before.head },
      after: { entries: before.entries, bytes: before.bytes, head: before.head },
      snapshotVersion: null,
      deleted: 0,
    };
    const cut = coveredPrefix(reader, before.head);
    // nothing to gain: no entries, or the prefix is a single snapshot already
    if (cut === null || (cut.count === 1 && cut.last.kind === 'snapshot')) return result;
    const last = cut.last;
    /** entries are (seq, kind) in the database; a header's offset is seq * 2 + kind */
    const lastSeq = Math.floor(last.offset / 2);
    const r = reader;
    const prefixReader: BackupReader = {
      format: r.format,
      location: r.location,
      forEachHeader: (visit, o) => r.forEachHeader((h) => (h.offset > last.offset ? false : visit(h)), o),
      read: (h) => r.read(h),
      problems: () => [],
      stats: () => before,
      close: () => undefined,
    };
    if (last.kind === 'snapshot') {
      // a newer snapshot (a re-baseline) already supersedes what precedes it: only the deletion is left
      result.deleted = control.call<number>({ op: 'deleteSuperseded', seq: lastSeq }, null);
      result.compacted = result.deleted > 0;
      result.snapshotVersion = last.version;
    } else {
      let chainStart: { link: Buffer } | null = null;
      if (reader.encryption !== null) {
        let row: HeaderRow | null = null;
        reader.forEachRow((x) => {
          if (x.seq * 2 + x.kind !== last.offset) return x.seq * 2 + x.kind < last.offset;
          row = x;
          return false;
        });
        if (row === null) throw new Error(`internal: entry ${last.offset} vanished from the reader's view`);
        chainStart = { link: rowLink(row) };
      }
      const seal = chainStart === null ? null : { crypt: pgCrypt(target.display, reader.pgEncryption, opts.key, true)!, ...chainStart };
      result.snapshotVersion = storeCoveringSnapshot(control, prefixReader, join(scratch, 'snapshot.sqlite3'), lastSeq, opts.log, seal);
      result.deleted = control.call<number>({ op: 'deleteSuperseded', seq: lastSeq }, null);
      result.compacted = true;
    }
    reader.close();
    reader = PgReader.open(target, timeout);
    const after = reader.stats();
    result.after = { entries: after.entries, bytes: after.bytes, head: after.head };
    return result;
  } finally {
    reader?.close();
    control.close();
    rmSync(scratch, { recursive: true, force: true });
  }
}

function storeCoveringSnapshot(
  control: PgBridge,
  prefix: BackupReader,
  db: string,
  seq: number,
  log: ((msg: string) => void) | undefined,
  seal: { crypt: NonNullable<ReturnType<typeof pgCrypt>>; link: Buffer } | null,
): number {
  const restored = restoreBackup(prefix, db);
  log?.(`restored the history up to entry ${seq} (version ${restored.head}) into a scratch database`);
  if (seal === null) {
    control.call({ op: 'snapshot', version: restored.head, path: db, seq }, null);
  } else {
    const ct = `${db}.ciphertext`;
    const envelope = encryptSnapshotFile(seal.crypt, restored.head, db, ct, { link: seal.link });
    control.call({ op: 'snapshot', version: restored.head, path: ct, seq, envelope }, null);
    rmSync(ct, { force: true });
  }
  return restored.head;
}

/**
 * The last entry the snapshot may cover: the one before the trailing run of entries of the head version
 * (the plugin may still rewind those), with the number of entries up to it. null when there is none.
 */
export function coveredPrefix(reader: BackupReader, head: number): { last: EntryHeader; count: number } | null {
  let last: EntryHeader | null = null;
  let count = 0;
  let n = 0;
  reader.forEachHeader((h) => {
    n++;
    if (h.version !== head) {
      last = h;
      count = n;
    }
  });
  return last === null ? null : { last, count };
}
