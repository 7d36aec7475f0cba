import Database from 'better-sqlite3';
import { accessSync, closeSync, constants, existsSync, linkSync, openSync, renameSync, rmSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { BackupReader } from '../backends/backend.js';
import { fsyncDir } from '../backends/file/fsutil.js';
import type { EntryHeader, Problem } from '../engine/entries.js';
import { planBackup, type Planner, type RestorePlan } from '../engine/plan.js';
import { isValidDataVersion, serialDiff } from '../engine/versions.js';
import { Replayer, ReplayError } from './replay.js';
import { Writeback } from './writeback.js';

export interface RestoreOptions {
  /** replace an existing destination (kept as `<dest>.replaced-<time>`) */
  force?: boolean;
  /**
   * With force: allow replacing a database whose data_version is newer than the restored one. Never
   * implied by force: a stale database under a node broadcasts revoked states.
   */
  allowOlder?: boolean;
  /** point-in-time: stop after the newest kept entry with version <= toVersion */
  toVersion?: number;
  /**
   * On a backup with a damaged record in the middle, restore the history before the first damaged record
   * instead of refusing. Only ever on request: the result lacks acknowledged transactions, so it is for
   * salvage, never a silent fallback.
   */
  stopAtDamage?: boolean;
  /**
   * An encrypted backup's change records are decrypted in a worker thread ahead of the replay when enough
   * of them follow and (auto, the default) the process may use two CPUs (src/crypto/decrypt-ahead.ts).
   * 'always' even on one CPU, 'never' decrypts inline (benches compare the two, interleaved).
   */
  decryptAhead?: 'auto' | 'always' | 'never';
  /** called at most ~10x/s, and once more at the end with applied == total */
  onProgress?: (p: { applied: number; total: number; bytes: number }) => void;
}

export interface RestoreResult {
  path: string;
  /** data_version of the restored database */
  head: number;
  /** entries applied (the snapshot counts as one) */
  applied: number;
  statements: number;
  snapshotVersion: number | null;
  /** set when stopAtDamage cut the restore short: the first damaged record */
  stoppedAtDamage?: { offset: number; message: string };
  /** with stopAtDamage: every damaged place in the backup (stoppedAtDamage, and damage that cut nothing, e.g. a v2 file header) */
  damage?: Array<{ offset: number; message: string }>;
  /**
   * What the backup holds after its last complete entry and the restore therefore left out: a torn tail
   * (an append cut short, by a crash or by a truncated copy), unfinished snapshot parts, v1 orphans. Empty
   * when nothing was left out. A crash leaves one such record, which is normal, but a copy cut short looks
   * the same, so it is always reported, with the version the restore stopped at (`head`).
   */
  cut: Array<{ kind: Problem['kind']; offset: number; bytes: number | null; message: string }>;
  /** set when force replaced an existing file: where the old one was kept, and its data_version if readable */
  replaced?: { keptAs: string; dataVersion: number | null; readError?: string };
  /** stale entries in the backup (superseded by a later entry with the same or a lower version), skipped */
  dropped: number;
  elapsedMs: number;
  integrity: 'ok';
  foreignKeyViolations: 0;
}

export class RestoreError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RestoreError';
  }
}

/** A post-replay check failed: the replay ran, but its result must not become the node's database. */
class CheckError extends Error {}

const DB_NAME = 'lightningd.sqlite3';
const PROGRESS_INTERVAL_MS = 100;
/** files SQLite keeps next to a database; a leftover one would be played back into the restored file */
const SIDE_SUFFIXES = ['-journal', '-wal', '-shm'];

/** lightningd looks for `lightningd.sqlite3` in its network directory, so a directory means that file. */
export function resolveDestination(dest: string): string {
  const p = resolve(dest);
  let isDir = false;
  try {
    isDir = statSync(p).isDirectory();
  } catch {
    isDir = /[\\/]$/.test(dest);
  }
  return isDir ? join(p, DB_NAME) : p;
}

export function restoreBackup(reader: BackupReader, dest: string, opts: RestoreOptions = {}): RestoreResult {
  const started = performance.now();
  const path = resolveDestination(dest);
  const force = opts.force === true;
  checkDestination(path, force);

  // The plan comes from the reader's open scan (or a walk of the headers), in memory bounded whatever
  // the backup's size; then one walk from the start entry replays (docs/restore.md, "How").
  let planner: Planner;
  try {
    planner = planBackup(reader, { beforeDamage: opts.stopAtDamage === true });
  } catch (e) {
    throw new RestoreError(
      `cannot read ${reader.location}: ${(e as Error).message}. Nothing was written to ${path}.`,
      { cause: e },
    );
  }
  const damage = reader.problems().filter((p) => p.kind === 'corrupt');
  if (!opts.stopAtDamage) refuseCorruption(reader);
  // Stale entries are counted against the whole history, so a point-in-time restore reports the same figure.
  const full = planner.plan();
  const dropped = full.stale;
  if (opts.toVersion !== undefined) checkToVersion(reader, full, opts.toVersion);
  const plan = opts.toVersion === undefined ? full : planner.plan(opts.toVersion);
  const existing = force ? existingVersion(path) : null;
  if (existing !== null && existing.dataVersion === null && !existing.notADatabase && !opts.allowOlder) {
    throw new RestoreError(
      `cannot read the data_version of ${path} (${existing.readError}), so restore cannot tell whether the backup's ` +
        `version ${plan.head} is older than it. If you are sure it must be replaced, pass --allow-older as well (it is ` +
        `kept as ${path}.replaced-<time>). Nothing was written`,
    );
  }
  if (existing !== null && existing.dataVersion !== null && serialDiff(plan.head, existing.dataVersion) < 0 && !opts.allowOlder) {
    throw new RestoreError(
      `refusing to go backwards: ${path} is at data_version ${existing.dataVersion}, newer than the backup's ` +
        `${plan.head}${opts.toVersion !== undefined ? ` (--to-version ${opts.toVersion})` : ''}. A node started on the older database ` +
        `would broadcast revoked states. If you are sure ${path} is wrong, pass --allow-older as well (it is kept as ` +
        `${path}.replaced-<time>). Nothing was written`,
    );
  }

  const tmp = `${path}.clnvault-tmp-${process.pid}`;
  removeFiles(tmp);
  // (as: assigned inside the walk's callback, which TypeScript's narrowing does not follow)
  let db = null as Database.Database | null;
  let replayer = null as Replayer | null;
  // the scratch file's writeback, started during the replay (writeback.ts); its fsync comes before the rename
  let writeback = null as Writeback | null;
  let snapshotVersion: number | null = null;
  let applied = 0;
  // totals of replayers already replaced by a later snapshot, plus snapshot sizes
  let doneStatements = 0;
  let doneBytes = 0;
  let lastProgress = performance.now();
  let current = null as EntryHeader | null;
  let keptAs: string | null = null;
  try {
    const applies = plan.cursor();
    let index = plan.start;
    const apply = (h: EntryHeader): void => {
      current = h;
      const entry = reader.read(h);
      if (entry.kind === 'snapshot') {
        // A snapshot supersedes everything before it: start over from its bytes.
        if (replayer) {
          doneStatements += replayer.statements;
          doneBytes += replayer.chars;
        }
        db?.close();
        db = null;
        replayer = null;
        writeback?.abandon();
        writeback = null;
        removeFiles(tmp);
        entry.writeTo(tmp);
        db = openForReplay(tmp, false);
        replayer = new Replayer(db);
        writeback = new Writeback(tmp);
        snapshotVersion = entry.version;
        doneBytes += entry.size;
      } else {
        if (db === null) {
          db = openForReplay(tmp, true);
          replayer = new Replayer(db);
          writeback = new Writeback(tmp);
        }
        const before = replayer!.chars;
        replayer!.apply(entry);
        writeback!.replayed(replayer!.chars - before);
      }
      applied++;
      if (opts.onProgress) {
        const now = performance.now();
        if (now - lastProgress >= PROGRESS_INTERVAL_MS) {
          lastProgress = now;
          opts.onProgress({ applied, total: plan.applied, bytes: doneBytes + (replayer?.chars ?? 0) });
        }
      }
    };
    if (plan.end > plan.start) {
      if (opts.decryptAhead !== 'never') reader.decryptAhead?.(opts.decryptAhead === 'always' ? { always: true } : {});
      reader.forEachHeader(
        (h) => {
          if (index >= plan.end) return false;
          if (applies.applies(index++)) apply(h);
          return true;
        },
        { beforeDamage: opts.stopAtDamage === true, ...(plan.startOffset !== null ? { from: plan.startOffset } : {}) },
      );
    }
    if (applied !== plan.applied) {
      // the second walk saw other entries than the first: the file changed underneath the reader
      throw new Error(`the backup changed while it was read (planned ${plan.applied} entries, found ${applied}); run the restore again`);
    }
    current = null;
    if (db === null) db = openForReplay(tmp, true);
    writeback ??= new Writeback(tmp);
    replayer?.finish();
    // the last transaction's pages go out while the checks read
    writeback.start();
    finishAndCheck(db, tmp, plan.head);
    db.close();
    db = null;
    writeback.syncAndClose();
    writeback = null;
    keptAs = place(tmp, path, force);
  } catch (e) {
    replayer?.abandon();
    writeback?.abandon();
    try {
      db?.close();
    } catch {
      // the file is deleted next; nothing to save
    }
    removeFiles(tmp);
    if (e instanceof RestoreError) throw e;
    // The destination failing (permissions, a read-only or full disk) says nothing about the backup.
    if (isDestinationError(e, tmp, path)) {
      throw new RestoreError(
        `restore into ${path} failed writing ${dirname(path)}: ${destinationProblem(dirname(path), e)}. Nothing was written ` +
          `to ${path}; the backup ${reader.location} was read without error up to there`,
        { cause: e },
      );
    }
    let what: string;
    if (e instanceof ReplayError) what = `at entry ${e.message}`;
    else if (e instanceof CheckError) what = `its final check: ${e.message}`;
    else if (current) what = `at the ${current.kind} entry version ${current.version} at offset ${current.offset}: ${(e as Error).message}`;
    else what = (e as Error).message;
    throw new RestoreError(
      `restore of ${reader.location} into ${path} failed ${what}. Nothing was written to ${path}. ` +
        `Check the backup with 'clnvault verify ${reader.location}'.`,
      { cause: e },
    );
  }
  // the damage that ended the history: a damaged v2 file header (offset 0) ends nothing, every record
  // checks itself and the walk goes on past it (V2Reader.forEachHeader)
  const cutBy = opts.stopAtDamage ? damage.find((p) => !(reader.format === 'v2' && p.offset === 0)) : undefined;
  if (opts.onProgress) opts.onProgress({ applied, total: plan.applied, bytes: doneBytes + (replayer?.chars ?? 0) });
  return {
    path,
    head: plan.head,
    applied,
    statements: doneStatements + (replayer?.statements ?? 0),
    snapshotVersion,
    dropped,
    ...(cutBy ? { stoppedAtDamage: { offset: cutBy.offset, message: cutBy.message } } : {}),
    ...(opts.stopAtDamage && damage.length > 0 ? { damage: damage.map((p) => ({ offset: p.offset, message: p.message })) } : {}),
    cut: reader
      .problems()
      .filter((p) => p.kind !== 'corrupt')
      .map((p) => ({ kind: p.kind, offset: p.offset, bytes: p.bytes ?? null, message: p.message })),
    ...(keptAs !== null
      ? { replaced: { keptAs, dataVersion: existing?.dataVersion ?? null, ...(existing?.readError ? { readError: existing.readError } : {}) } }
      : {}),
    elapsedMs: performance.now() - started,
    integrity: 'ok',
    foreignKeyViolations: 0,
  };
}

function checkDestination(path: string, force: boolean): void {
  const dir = dirname(path);
  let dirOk = false;
  try {
    dirOk = statSync(dir).isDirectory();
  } catch {
    dirOk = false;
  }
  if (!dirOk) throw new RestoreError(`cannot restore into ${path}: the directory ${dir} does not exist; create it first`);
  try {
    accessSync(dir, constants.W_OK | constants.X_OK);
  } catch (e) {
    throw new RestoreError(`cannot restore into ${path}: ${destinationProblem(dir, e)}. Nothing was written`);
  }
  if (force) return;
  if (existsSync(path)) {
    throw new RestoreError(`destination ${path} exists; move it aside or pass --force`);
  }
  for (const suffix of SIDE_SUFFIXES) {
    if (existsSync(path + suffix)) {
      throw new RestoreError(
        `${path + suffix} exists without its database: SQLite would play it back into the restored file; ` +
          `move it aside or pass --force (which deletes it)`,
      );
    }
  }
}

const DEST_FS_CODES = ['EACCES', 'EPERM', 'EROFS', 'ENOSPC', 'EDQUOT'];
const DEST_SQLITE_CODES = ['SQLITE_READONLY', 'SQLITE_FULL', 'SQLITE_CANTOPEN', 'SQLITE_PERM'];

function isDestinationError(e: unknown, tmp: string, path: string): boolean {
  const err = e as NodeJS.ErrnoException;
  if (typeof err?.code !== 'string') return false;
  if (DEST_FS_CODES.includes(err.code)) return err.path === undefined || err.path.startsWith(tmp) || err.path.startsWith(path);
  // SQLite only ever writes the temp database here (the backup is read through node:fs)
  return DEST_SQLITE_CODES.some((c) => err.code!.startsWith(c));
}

function destinationProblem(dir: string, e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code ?? '';
  if (code === 'EROFS' || code.startsWith('SQLITE_READONLY')) return `${dir} is on a read-only filesystem (remount it read-write)`;
  if (code === 'ENOSPC' || code === 'EDQUOT' || code.startsWith('SQLITE_FULL')) return `no space left in ${dir} (free some, or restore elsewhere)`;
  if (code === 'EACCES' || code === 'EPERM' || code.startsWith('SQLITE_CANTOPEN') || code.startsWith('SQLITE_PERM')) {
    return `this user (uid ${process.getuid?.() ?? '?'}) may not write in ${dir} (${(e as Error).message}); run restore as its owner, or fix its permissions`;
  }
  return (e as Error).message;
}

function refuseCorruption(reader: BackupReader): void {
  // A torn tail is the unacknowledged last write and orphans were never acknowledged either; a corrupt
  // record in the middle means acknowledged transactions are unreadable, and a database missing them
  // would broadcast revoked states.
  const corrupt = reader.problems().filter((p) => p.kind === 'corrupt');
  if (corrupt.length === 0) return;
  const list = corrupt.map((p) => `offset ${p.offset}: ${p.message}`).join('; ');
  throw new RestoreError(
    `${reader.location} is damaged (${list}); restoring it would lose acknowledged transactions. ` +
      `Run 'clnvault verify ${reader.location}' and restore from another copy of the backup`,
  );
}

function checkToVersion(reader: BackupReader, full: RestorePlan, toVersion: number): void {
  if (!isValidDataVersion(toVersion)) {
    throw new RestoreError(`--to-version must be a data_version (an integer from 0 to 4294967295), not ${toVersion}`);
  }
  const oldest = full.oldest;
  const head = full.head;
  if (oldest === null) {
    if (toVersion === 0) return;
    throw new RestoreError(`${reader.location} is empty: it holds no version ${toVersion}, only the empty database (version 0)`);
  }
  const tooOld = serialDiff(toVersion, oldest) < 0;
  if (tooOld || serialDiff(toVersion, head) > 0) {
    throw new RestoreError(
      `${reader.location} cannot be restored to version ${toVersion}: it holds versions ${oldest} to ${head} ` +
        (tooOld ? '(older history was compacted away or never backed up)' : `(${head} is its newest)`) +
        `; pass a version in that range`,
    );
  }
}

function openForReplay(path: string, create: boolean): Database.Database {
  if (create) closeSync(openSync(path, 'wx'));
  const db = new Database(path, { fileMustExist: true });
  // As lightningd runs: foreign keys enforced, so ON DELETE CASCADE behaves as it did live.
  db.pragma('foreign_keys = ON');
  db.pragma('journal_mode = DELETE');
  // Safe: the file is checked, fsynced and renamed into place only at the end; a crash leaves a temp file.
  db.pragma('synchronous = OFF');
  // A node's indexes are keyed by random hashes (payment_hash, txid, ...), so inserts land all over them;
  // with SQLite's default 2 MiB page cache every one re-reads and re-writes pages. 64 MiB cut replay CPU
  // by ~15% on 200k invoices before the statement cache; since, 16 MiB costs no measurable CPU against
  // 64 (50k and 800k invoices, bench/README.md) and keeps a whole restore under 100 MiB of RSS on a
  // small board (docs/restore.md, "Memory"). Not persisted in the file.
  db.pragma('cache_size = -16384');
  return db;
}

function finishAndCheck(db: Database.Database, path: string, head: number): void {
  // A snapshot or a replayed PRAGMA may have changed it; lightningd expects a plain rollback-journal file.
  db.pragma('journal_mode = DELETE');
  // An empty backup would otherwise leave a 0-byte file; give it a real SQLite header.
  if (statSync(path).size === 0) db.pragma('user_version = 0');
  const integrity = db.pragma('integrity_check') as { integrity_check: string }[];
  if (integrity.length !== 1 || integrity[0]!.integrity_check !== 'ok') {
    const lines = integrity.slice(0, 5).map((r) => r.integrity_check).join('; ');
    throw new CheckError(`the restored database failed PRAGMA integrity_check: ${lines}`);
  }
  const fk = db.pragma('foreign_key_check') as { table: string; rowid: number; parent: string }[];
  if (fk.length > 0) {
    const first = fk.slice(0, 3).map((r) => `${r.table} rowid ${r.rowid} → ${r.parent}`).join('; ');
    throw new CheckError(`the restored database has ${fk.length} foreign key violation(s) (${first})`);
  }
  const hasVars = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'vars'`).get() !== undefined;
  if (!hasVars) return;
  const row = db.prepare(`SELECT intval FROM vars WHERE name = 'data_version'`).get() as { intval: number | null } | undefined;
  if (row === undefined || row.intval !== head) {
    throw new CheckError(
      `the restored database's vars.data_version is ${row === undefined ? 'missing' : String(row.intval)} but the ` +
        `backup's head is version ${head}: the backup does not replay to its own head`,
    );
  }
}

/** The data_version of a database about to be replaced; null (with why) when it cannot be read. */
function existingVersion(path: string): { dataVersion: number | null; readError?: string; notADatabase?: boolean } | null {
  if (!existsSync(path)) return null;
  try {
    const db = new Database(path, { readonly: true, fileMustExist: true, timeout: 5000 });
    try {
      const hasVars = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'vars'`).get() !== undefined;
      if (!hasVars) return { dataVersion: 0 };
      const row = db.prepare(`SELECT intval FROM vars WHERE name = 'data_version'`).get() as { intval: number | bigint | null } | undefined;
      return { dataVersion: row?.intval === undefined || row.intval === null ? 0 : Number(row.intval) };
    } finally {
      db.close();
    }
  } catch (e) {
    // Not an SQLite file at all (SQLITE_NOTADB): no version to go backwards from; it is kept aside all
    // the same. Anything else (a hot journal, a lock, no permission) leaves its version unknown.
    if ((e as { code?: string }).code === 'SQLITE_NOTADB') return { dataVersion: null, readError: (e as Error).message, notADatabase: true };
    return { dataVersion: null, readError: (e as Error).message };
  }
}

/** `lightningd.sqlite3.replaced-20261204T140102Z` (a counter added if that name is taken). */
function replacedName(path: string): string {
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  let name = `${path}.replaced-${stamp}`;
  for (let i = 2; existsSync(name) || SIDE_SUFFIXES.some((s) => existsSync(name + s)); i++) name = `${path}.replaced-${stamp}-${i}`;
  return name;
}

/**
 * Puts the finished file under its final name atomically; without force, never over an existing file.
 * With force the old file keeps a second name first (a hard link, so DEST never goes missing; a rename
 * where links are unsupported), with its journal beside it, and the directory is fsynced: a replaced
 * database must survive a power cut as surely as the new one. Returns the name the old file was kept as.
 */
function place(tmp: string, path: string, force: boolean): string | null {
  let keptAs: string | null = null;
  if (force) {
    if (existsSync(path)) {
      keptAs = replacedName(path);
      try {
        linkSync(path, keptAs);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS' && code !== 'EXDEV') throw e;
        renameSync(path, keptAs);
      }
      // a hot journal belongs to the old file: it goes with it, never replayed into the new one
      for (const suffix of SIDE_SUFFIXES) if (existsSync(path + suffix)) renameSync(path + suffix, keptAs + suffix);
      fsyncDir(path);
    } else {
      for (const suffix of SIDE_SUFFIXES) rmSync(path + suffix, { force: true });
    }
    renameSync(tmp, path);
  } else {
    // link() fails if the name exists, so a file created while we replayed is never replaced.
    let linked = false;
    try {
      linkSync(tmp, path);
      linked = true;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') throw new RestoreError(`destination ${path} exists; move it aside or pass --force`);
      if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS' && code !== 'EXDEV') throw e;
    }
    if (linked) {
      try {
        rmSync(tmp, { force: true });
      } catch {
        // the restore is in place; a leftover second name for it is only clutter
      }
    } else {
      // filesystems without hard links (FAT32, some FUSE mounts)
      if (existsSync(path)) throw new RestoreError(`destination ${path} exists; move it aside or pass --force`);
      renameSync(tmp, path);
    }
  }
  try {
    fsyncDir(path);
  } catch (e) {
    throw new RestoreError(
      `${path} was restored, but syncing its directory failed (${(e as Error).message}): a power loss now could ` +
        `lose the new name. Run 'sync' before starting lightningd.`,
      { cause: e },
    );
  }
  return keptAs;
}

function removeFiles(path: string): void {
  rmSync(path, { force: true });
  rmSync(`${path}-journal`, { force: true });
}
