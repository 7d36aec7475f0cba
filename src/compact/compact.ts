import Database from '../engine/sqlite.js';
import { closeSync, fdatasyncSync, fstatSync, linkSync, openSync, renameSync, rmSync, statSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { fsyncDir, writeFully } from '../backends/file/fsutil.js';
import { V1_HEADER_SIZE } from '../backends/file/v1.js';
import { encodeSealRecord, FILE_HEADER_LEN, recordSeedOf, SEAL_RECORD_LEN } from '../backends/file/v2.js';
import { BackupError, type BackupFormat } from '../engine/entries.js';
import type { FileIdentity } from './sync.js';
export { identityOf } from './sync.js';
import { serialDiff } from '../engine/versions.js';
import { Replayer } from '../restore/replay.js';
import { compactingPath, historyPath, pruneHistory, removeDebris, scratchPath } from './files.js';
import { releaseGently, removeGently } from './pacing.js';
import { EntryWalker, firstEntryOffset, readFully, type EntryDesc, type ReadAt } from './scan.js';
import { encodeSegmentHeader, listSegmentFiles, readSegmentHeader, SegmentedSource, segmentPath, withNewSetId } from '../backends/file/segments.js';
import { FILE_FLAG_ENCRYPTED } from '../backends/file/v2/codec.js';
import { cryptFor, type KeyLike } from '../crypto/backup-crypt.js';
import { ChainCheck, keyKindCode, RecordCrypt, type KeyKindName } from '../crypto/records.js';
import { copyEntries, TailTracker, writeSnapshot, writeSnapshotRecords } from './output.js';

/**
 * Compaction: replaces a backup by an equivalent, shorter one — a snapshot of the database at version V
 * followed by the entries after V, copied byte for byte — while the writer keeps appending to the live
 * file. The new file is built beside the backup (`<b>.compacting`), catches up with what was appended
 * meanwhile, and replaces the backup with one rename inside the writer's critical section. A crash at any
 * moment leaves the old backup (the rename did not happen) or the new one (it did), both complete.
 *
 * The newest version group (the head entry and its PRAGMA companion) stays a record, not part of the
 * snapshot, so that a rewind (dropHead: lightningd died between the hook and its commit) still works
 * after compaction, as in the reference, which keeps snapshot(v-1) + change(v).
 */

export interface CompactHooks {
  /** end of the data the writer has made durable; nothing past it is read */
  committedEnd(): number;
  /** the file `committedEnd()` belongs to; read under `exclusive`, where end and file agree */
  committedFile(): FileIdentity;
  /** changes whenever the writer cut its end (dropHead) */
  truncations(): number;
  /**
   * Runs `fn` while the writer cannot append. `fn` calls `swapped()` right after the rename, with the new
   * file's end and identity, so the writer reopens the file (and a later compaction starts from the new
   * end) even if a later step (the directory fsync) throws.
   */
  exclusive(fn: (swapped: (end: number, file: FileIdentity) => void) => void): void;
  /**
   * A step after the rename failed: the backup's name now holds the new file, which may not be durable
   * under it. The writer must refuse every later write (lightningd then stops without committing) rather
   * than acknowledge writes that a crash could lose. Called under `exclusive` when the failure happens
   * there, so no write slips in between.
   */
  failedAfterSwap(message: string): void;
  log(level: 'info' | 'warn' | 'error', message: string): void;
}

export interface CompactOptions {
  format: BackupFormat;
  /** pre-compaction backups to keep (0: none) */
  history: number;
  /** v2: the new backup's files hold at most this many bytes (more go to segment files); absent: one file */
  segmentBytes?: number;
  /**
   * Swap only when the new backup is smaller than the old one (compared just before the rename, with
   * everything built): otherwise it is thrown away and the outcome says `noGain`. A small backup's
   * snapshot can outweigh the entries it replaces.
   */
  onlyIfSmaller?: boolean;
  /** the key of an encrypted backup (required for one: the entries are decrypted to be replayed) */
  key?: KeyLike | null;
  /** key rotation (`clnvault compact --new-key-file`): the new backup is encrypted with this key, every record re-encrypted */
  newKey?: KeyLike | null;
}

export interface CompactStats {
  before: { backupsize: number; version_count: number };
  after: { version_count: number; backupsize: number };
}

export interface CompactOutcome {
  /** the reference's RPC result shape */
  stats: CompactStats;
  compacted: boolean;
  /** version of the snapshot the new backup starts with, null when none was needed */
  snapshotVersion: number | null;
  head: number;
  historyFile: string | null;
  elapsedMs: number;
  /** bytes appended by the writer while compaction ran, carried over */
  caughtUp: number;
  /** set when onlyIfSmaller kept the old backup: the size the compacted one would have had */
  noGain?: { wouldBeBytes: number };
}

/** onlyIfSmaller: the built file is not smaller; the catch below cleans up and reports it as no gain. */
class NoGain extends Error {
  constructor(readonly outcome: CompactOutcome) {
    super('no gain');
  }
}

/** Entries kept back before they are applied, so a rewind in a reference (v1) file can still drop them. */
const PENDING_MAX = 4096;
/** Catch up outside the lock until less than this is left, so the locked part stays a few milliseconds. */
const CATCH_UP_SLACK = 256 * 1024;
const PROGRESS_MS = 5000;
class Aborted extends Error {}

export function compactFile(path: string, hooks: CompactHooks, opts: CompactOptions): CompactOutcome {
  const started = performance.now();
  const format = opts.format;
  const debris = removeDebris(path);
  if (debris.length > 0) hooks.log('info', `compaction: removed ${debris.length} file(s) left by an interrupted compaction: ${debris.join(', ')}`);
  // a compaction that failed after its rename never pruned: history must not pile up over such failures
  const oldHistory = pruneHistory(path, opts.history);
  if (oldHistory.length > 0) hooks.log('info', `compaction: removed old history left by an earlier compaction: ${oldHistory.join(', ')}`);
  const truncations0 = hooks.truncations();
  const first = firstEntryOffset(format);
  // v2: the backup may be segmented; it is walked as one virtual file (global offsets, as the writer's end)
  const source = format === 'v2' ? new SegmentedSource(path) : null;
  const src = source ? -1 : openSync(path, 'r');
  const readAt: ReadAt = source ? (b, n, p) => source.readAt(b, n, p) : (b, n, p) => readFully(src, b, n, p);
  // The end is only trusted for the file it was published for: taken under the write mutex (where end and
  // identity agree), and checked against the file this compaction reads. A stale end (another file's)
  // that happened to fall on a record boundary would silently drop every record after it.
  let e0 = 0;
  try {
    hooks.exclusive(() => {
      e0 = hooks.committedEnd();
      checkCommitted(path, format, source, src, e0, hooks.committedFile());
    });
  } catch (e) {
    if (source) source.close();
    else closeSync(src);
    const why = e instanceof Aborted ? `${e.message}; the backup is unchanged, run the compaction again` : (e as Error).message;
    throw new BackupError(`compaction of ${path} failed: ${why}`, path);
  }
  const scratch = scratchPath(path);
  let out: number | null = null;
  /** the output file being appended to: `out`, or the newest extra segment */
  let cur: number | null = null;
  const extras: string[] = [];
  /** after the swap: the old set's files, held open so that we free their blocks gradually, not a close */
  const oldFds: number[] = [];
  let outBefore = 0;
  /** set at the rename: from then on the new set is the live backup and nothing of it may be removed */
  let renamed = false;
  /** set in the catch: the error being thrown is the one reported */
  let failing = false;
  let db: Database.Database | null = null;
  let replayer: Replayer | null = null;
  const outPath = compactingPath(path);
  try {
    // an encrypted backup: the key is checked against the header before anything is read or made
    let crypt: RecordCrypt | null = null;
    let ncrypt: RecordCrypt | null = null;
    // format 4: every record header CRC is seeded with the set id; copies into the new set are re-sealed
    let oldSeed = 0;
    let newSeed = 0;
    if (format === 'v2') {
      const h = Buffer.allocUnsafe(FILE_HEADER_LEN);
      readAt(h, FILE_HEADER_LEN, 0);
      oldSeed = recordSeedOf(h);
      const enc = h.readUInt32BE(12) & FILE_FLAG_ENCRYPTED ? { kind: h[48]!, fingerprint: Buffer.from(h.subarray(52, 60)) } : null;
      crypt = cryptFor(path, enc, Buffer.from(h.subarray(16, 32)), opts.key, false);
      if (opts.newKey) {
        if (!crypt) throw new BackupError(`${path} is not an encrypted backup: there is no key to rotate`, path);
        ncrypt = new RecordCrypt(opts.newKey.key, Buffer.from(h.subarray(16, 32)), opts.newKey.fingerprint);
      }
    } else if (opts.key || opts.newKey) {
      throw new BackupError(`${path} is a reference (v1) backup, which is never encrypted`, path);
    }
    const walker = new EntryWalker(readAt, path, format, crypt, oldSeed);
    // every record is chained to the one before (docs/encryption.md): one dropped or replaced in the old
    // backup must not be baked into the snapshot, whose own chain would then look intact
    const chain = crypt ? new ChainCheck() : null;
    hooks.log('info', `compaction of ${path} started: ${e0} bytes, format ${format}`);

    // --- 1. Replay every entry before the head group into the scratch database, in constant memory.
    const pending: EntryDesc[] = [];
    let count = 0;
    let applied = 0;
    let appliedSnapshotAtStart = false;
    let lastApplied: number | null = null;
    let lastProgress = performance.now();
    const apply = (d: EntryDesc): void => {
      if (d.kind === 'snapshot') {
        replayer?.finish();
        db?.close();
        db = null;
        rmSync(scratch, { force: true });
        rmSync(`${scratch}-journal`, { force: true });
        const fd = openSync(scratch, 'wx', 0o600);
        let at = 0;
        try {
          walker.snapshotChunks(d, (c) => {
            writeFully(fd, c, at);
            at += c.length;
          });
        } finally {
          closeSync(fd);
        }
        db = openScratch(scratch);
        replayer = new Replayer(db);
        appliedSnapshotAtStart = applied === 0 && d.offset === first;
      } else {
        if (db === null) {
          rmSync(scratch, { force: true });
          rmSync(`${scratch}-journal`, { force: true });
          closeSync(openSync(scratch, 'wx', 0o600));
          db = openScratch(scratch);
          replayer = new Replayer(db);
        }
        replayer!.apply({ kind: 'change', version: d.version, offset: d.offset, statements: walker.statements(d) });
      }
      applied++;
      lastApplied = d.version;
    };
    let stale = 0;
    for (let off = first; off < e0; ) {
      const d = walker.entryAt(off, e0);
      count++;
      if (chain) {
        for (const r of d.records ?? [d]) {
          const c = walker.chainOf(r);
          const why = chain.follows(c.prefix);
          if (why !== null) {
            throw new BackupError(`${path}: cannot compact: the record at offset ${r.offset} (version ${r.version}) breaks the chain: ${why}. Run 'clnvault verify' with the key; nothing was changed`, path, r.offset);
          }
          chain.accept(c.prefix, c.tag, r.version);
        }
      }
      // decoded only when a version does not move on, as the readers do
      let po: boolean | null = null;
      const pragma = (): boolean => (po ??= walker.pragmaOnly(d));
      // planRestore's rule, on a bounded stack: a later entry with the same or a lower version makes the
      // earlier one stale (never committed), except a PRAGMA-only batch that repeats its version.
      while (pending.length > 0) {
        const top = pending[pending.length - 1]!;
        const diff = serialDiff(top.version, d.version);
        if (diff < 0 || (diff === 0 && pragma())) break;
        pending.pop();
        stale++;
      }
      if (pending.length === 0 && lastApplied !== null) {
        const diff = serialDiff(lastApplied, d.version);
        if (diff > 0 || (diff === 0 && !pragma())) {
          throw new BackupError(
            `${path}: cannot compact: the entry at offset ${d.offset} (version ${d.version}) rewinds further back than ` +
              `${PENDING_MAX} entries; the backup still restores, but compaction cannot tell which entries it supersedes`,
            path,
            d.offset,
          );
        }
      }
      pending.push(d);
      if (pending.length > PENDING_MAX) apply(pending.shift()!);
      off = d.end;
      const now = performance.now();
      if (now - lastProgress >= PROGRESS_MS) {
        lastProgress = now;
        hooks.log('info', `compaction: replayed ${mib(off - first)} of ${mib(e0 - first)} MiB (${count} entries)`);
      }
    }
    const before = { backupsize: e0, version_count: count };
    let hg = pending.length;
    if (hg > 0) {
      const head = pending[hg - 1]!.version;
      while (hg > 0 && pending[hg - 1]!.version === head) hg--;
    }
    for (let i = 0; i < hg; i++) apply(pending[i]!);
    const tailStart = hg < pending.length ? pending[hg]!.offset : e0;
    const headVersion = pending.length > 0 ? pending[pending.length - 1]!.version : 0;
    const alreadyCompact = tailStart === first || (applied === 1 && appliedSnapshotAtStart && stale === 0);
    // a key rotation rewrites every record even when there is nothing to compact
    if (alreadyCompact && !ncrypt) {
      (replayer as Replayer | null)?.finish();
      (db as Database.Database | null)?.close();
      db = null;
      rmSync(scratch, { force: true });
      // retention applies even when there is nothing to compact (e.g. `compact --history 0` to free space)
      const pruned = pruneHistory(path, opts.history);
      hooks.log(
        'info',
        `compaction: nothing to compact (${count} entries, already a snapshot and the newest version)` +
          (pruned.length > 0 ? `; removed old history ${pruned.join(', ')}` : ''),
      );
      return {
        stats: { before, after: { version_count: count, backupsize: e0 } },
        compacted: false,
        snapshotVersion: null,
        head: headVersion,
        historyFile: null,
        elapsedMs: performance.now() - started,
        caughtUp: 0,
      };
    }
    const snapshotVersion: number | null = applied > 0 ? lastApplied : null;
    if (db !== null) {
      (replayer as Replayer | null)!.finish();
      finishScratch(db, scratch, snapshotVersion!);
      (db as Database.Database).close();
      db = null;
    }

    // --- 2. The new file: header, snapshot at V, then the head group and everything after, verbatim.
    out = openSync(outPath, 'wx', 0o600);
    const tracker = new TailTracker(format);
    let oldSet = -1;
    let newSet = -1;
    let backupId: Buffer | null = null;
    let at: number;
    if (format === 'v2') {
      const header = Buffer.allocUnsafe(FILE_HEADER_LEN);
      readAt(header, FILE_HEADER_LEN, 0);
      oldSet = header.readUInt32BE(44);
      // the same backup id and creation time: it is the same backup, only shorter. A new segment set id, so
      // the rename below switches the whole set of segments at once (docs/format-v2.md, "Segments")
      const fresh = withNewSetId(header);
      if (ncrypt) {
        // the new key's description, readable without it
        fresh[48] = keyKindCode(opts.newKey!.kind as KeyKindName);
        // the old key's scrypt cost, if it was a passphrase: a key file has none
        fresh.fill(0, 49, 52);
        Buffer.from(opts.newKey!.fingerprint, 'hex').copy(fresh, 52);
        fresh.writeUInt32BE(crc32(fresh.subarray(0, 60)), 60);
      }
      newSet = fresh.readUInt32BE(44);
      newSeed = recordSeedOf(fresh);
      backupId = Buffer.from(fresh.subarray(16, 32));
      writeFully(out, fresh, 0);
      at = FILE_HEADER_LEN;
    } else {
      writeFully(out, Buffer.alloc(V1_HEADER_SIZE), 0);
      at = V1_HEADER_SIZE;
    }
    // v2 with a size limit: records go on in new segment files of the new set (named for it, so invisible
    // to the live backup until the rename); a record never spans two files, and a snapshot larger than a
    // segment is chunked into part records (docs/format-v2.md, "Chunked snapshots")
    // room for the seal that ends every segment but the last (the new set is written with seals)
    const limit = format === 'v2' && opts.segmentBytes !== undefined ? opts.segmentBytes - SEAL_RECORD_LEN : null;
    cur = out;
    if (snapshotVersion !== null) {
      const size = statSync(scratch).size;
      hooks.log('info', `compaction: writing the snapshot at version ${snapshotVersion} (${mib(size)} MiB)`);
      const start = at;
      const nextSegment = (end: number): { fd: number; at: number } => {
        at = end;
        startSegment();
        return { fd: cur!, at };
      };
      if (crypt) {
        // the snapshot starts the new file's chain; without rotation the records copied after it keep their
        // bytes, so the snapshot's link is what the first of them names as its predecessor
        const w = ncrypt ?? new RecordCrypt(opts.key!.key, crypt.backupId, crypt.fingerprint);
        w.link = Buffer.alloc(16);
        const link = !ncrypt && tailStart < e0 ? Buffer.from(walker.chainOf(walker.recordAt(tailStart, e0)).prefix.prev) : null;
        at = writeSnapshotRecords(out, at, snapshotVersion, scratch, newSeed, limit, limit !== null ? nextSegment : null, { crypt: w, link });
      } else {
        at = writeSnapshot(out, at, format, snapshotVersion, scratch, path, newSeed, limit, nextSegment);
      }
      tracker.add(snapshotVersion, start);
      removeGently(scratch);
    }
    // a function declaration: the snapshot above starts segments with it too
    function startSegment(): void {
      const index = extras.length + 2;
      // "segment `index` follows": the new set is invisible until the rename, so the order of files does not matter here
      writeFully(cur!, encodeSealRecord({ next: index, setId: newSet, backupId: backupId! }, newSeed), at);
      fdatasyncSync(cur!);
      if (cur !== out) closeSync(cur!);
      cur = null;
      const p = segmentPath(path, newSet, index);
      const first = readSegmentHeader(outPath);
      extras.push(p);
      cur = openSync(p, 'wx', 0o600);
      writeFully(cur, encodeSegmentHeader({ ...first, index, setId: newSet }), 0);
      outBefore += at - FILE_HEADER_LEN;
      at = FILE_HEADER_LEN;
    }
    let copied = tailStart;
    const copy = (to: number): void => {
      let runFrom = copied;
      if (limit !== null) {
        // record by record: a chunked snapshot's parts may go to different segments
        for (let off = copied; off < to; ) {
          const d = walker.recordAt(off, to);
          const pos = at + (d.offset - runFrom);
          if (pos + (d.end - d.offset) > limit && pos > FILE_HEADER_LEN) {
            at = copyEntries(walker, readAt, cur!, runFrom, d.offset, at, tracker, oldSeed, newSeed, ncrypt);
            runFrom = d.offset;
            startSegment();
          }
          off = d.end;
        }
      }
      at = copyEntries(walker, readAt, cur!, runFrom, to, at, tracker, oldSeed, newSeed, ncrypt);
      copied = to;
    };
    copy(e0);
    // Catch up with appends in large steps without the lock; the locked step then copies very little.
    for (;;) {
      if (hooks.truncations() !== truncations0) throw new Aborted('the writer rewound the backup meanwhile');
      const e = hooks.committedEnd();
      if (e - copied <= CATCH_UP_SLACK) break;
      copy(e);
    }
    fdatasyncSync(cur!);
    let dirSynced = extras.length;
    if (dirSynced > 0) fsyncDir(path);

    // --- 3. The swap: the writer waits only for this block.
    let historyFile: string | null = null;
    let lockedMs = 0;
    const caughtFrom = e0;
    let finalEnd = 0;
    let oldSegments: string[] = [];
    hooks.exclusive((swapped) => {
      const t0 = performance.now();
      if (hooks.truncations() !== truncations0) throw new Aborted('the writer rewound the backup meanwhile');
      const e = hooks.committedEnd();
      if (e < copied) throw new Aborted(`the backup shrank from ${copied} to ${e} bytes meanwhile`);
      copy(e);
      finalEnd = e;
      if (opts.onlyIfSmaller && outBefore + at >= e) {
        throw new NoGain({
          stats: { before: { backupsize: e, version_count: before.version_count }, after: { version_count: before.version_count, backupsize: e } },
          compacted: false,
          snapshotVersion: null,
          head: tracker.last ?? headVersion,
          historyFile: null,
          elapsedMs: performance.now() - started,
          caughtUp: 0,
          noGain: { wouldBeBytes: outBefore + at },
        });
      }
      if (format === 'v1') writeFully(out!, tracker.v1Header(at), 0);
      fdatasyncSync(cur!);
      if (cur !== out) fdatasyncSync(out!);
      // the new set's extra segments must be durable under their names before its first file is
      if (extras.length > dirSynced) fsyncDir(path);
      dirSynced = extras.length;
      if (opts.history > 0) {
        const h = historyPath(path, Date.now());
        try {
          // the old inode keeps this name after the rename: the pre-compaction backup, for --to-version
          linkSync(path, h);
          historyFile = h;
          // a segmented backup's history keeps its segments, named after the history file
          for (const f of listSegmentFiles(path)) if (f.setId === oldSet) linkSync(f.path, `${h}${f.path.slice(path.length)}`);
        } catch (err) {
          // a history copy missing some of its segments must not stay: take back what was linked
          if (historyFile !== null) {
            for (const f of listSegmentFiles(historyFile)) rmSync(f.path, { force: true });
            rmSync(historyFile, { force: true });
            historyFile = null;
          }
          hooks.log('warn', `compaction: cannot keep the old backup as history (${(err as Error).message}); continuing without`);
        }
      }
      if (oldSet >= 0) oldSegments = listSegmentFiles(path).filter((f) => f.setId === oldSet).map((f) => f.path);
      for (const p of [path, ...oldSegments]) {
        try {
          oldFds.push(openSync(p, 'r+'));
        } catch {
          // not held: its blocks are then freed at once by whoever closes it last, as before
        }
      }
      const st = fstatSync(out!, { bigint: true });
      renameSync(outPath, path);
      renamed = true;
      swapped(outBefore + at, { dev: st.dev, ino: st.ino });
      try {
        fsyncDir(path);
      } catch (err) {
        // still under the mutex: no write is acknowledged into a file whose name may not survive a crash
        hooks.failedAfterSwap(afterSwapMessage(path, err as Error));
        throw err;
      }
      lockedMs = performance.now() - t0;
    });
    // the old set's extra segments stopped belonging to the backup at the rename (the new first file has a
    // new set id); a crash before this line leaves them for the next compaction's debris removal
    for (const p of oldSegments) rmSync(p, { force: true });
    if (oldSegments.length > 0) fsyncDir(path);
    while (oldFds.length > 0) releaseGently(oldFds.pop()!);
    const pruned = pruneHistory(path, opts.history);
    const after = { version_count: tracker.count, backupsize: outBefore + at };
    hooks.log(
      'info',
      `compaction done: ${before.version_count} entries / ${before.backupsize} bytes -> ${after.version_count} entries / ` +
        `${after.backupsize} bytes${extras.length > 0 ? ` in ${extras.length + 1} segments` : ''} (snapshot at version ${snapshotVersion ?? 'none'}, head ${tracker.last ?? headVersion}, ` +
        `${finalEnd - caughtFrom} bytes appended meanwhile carried over, writer paused ${lockedMs.toFixed(1)} ms)` +
        (historyFile ? `; the old backup is kept as ${historyFile}` : '') +
        (pruned.length > 0 ? `; removed old history ${pruned.join(', ')}` : ''),
    );
    return {
      stats: { before, after },
      compacted: true,
      snapshotVersion,
      head: tracker.last ?? headVersion,
      historyFile,
      elapsedMs: performance.now() - started,
      caughtUp: finalEnd - caughtFrom,
    };
  } catch (e) {
    failing = true;
    try {
      (replayer as Replayer | null)?.abandon();
      (db as Database.Database | null)?.close();
    } catch {
      // the scratch file is removed next
    }
    // an extra segment's descriptor first, compared while `out` still holds its number: closing a number
    // twice could close a file the main thread has just opened under it
    if (cur !== null && cur !== out) {
      try {
        closeSync(cur);
      } catch {
        // removed next
      }
    }
    cur = null;
    if (out !== null) {
      try {
        closeSync(out);
      } catch {
        // removed next
      }
      out = null;
    }
    if (renamed) {
      // the new set is the live backup now: its segments are never removed. The writer refuses from here
      // on (the first call, under the mutex, wins when the failure happened there)
      hooks.failedAfterSwap(afterSwapMessage(path, e as Error));
    } else {
      rmSync(outPath, { force: true });
      for (const p of extras) rmSync(p, { force: true });
    }
    rmSync(scratch, { force: true });
    rmSync(`${scratch}-journal`, { force: true });
    if (e instanceof NoGain) {
      hooks.log('info', `compaction: nothing to gain (the compacted backup would be ${e.outcome.noGain!.wouldBeBytes} bytes, not less than ${e.outcome.stats.before.backupsize}); the backup is unchanged`);
      return e.outcome;
    }
    const why = e instanceof Aborted ? `${e.message}; the backup is unchanged, run the compaction again` : (e as Error).message;
    throw new BackupError(
      renamed
        ? `compaction of ${path} replaced the backup, then failed: ${why}. ${AFTER_SWAP_FIX}`
        : `compaction of ${path} failed: ${why}`,
      path,
    );
  } finally {
    let closeError: Error | null = null;
    const close = (fn: () => void): void => {
      try {
        fn();
      } catch (e) {
        closeError ??= e as Error;
      }
    };
    // a swap that failed after they were opened
    for (const fd of oldFds.splice(0)) close(() => closeSync(fd));
    if (cur !== null && cur !== out) close(() => closeSync(cur!));
    if (out !== null) close(() => closeSync(out!));
    if (source) close(() => source.close());
    else close(() => closeSync(src));
    // a failure already being thrown keeps its message (and was reported); otherwise a close that failed
    // after the rename is a failure after the rename like any other
    if (closeError !== null && !failing) {
      if (renamed) {
        hooks.failedAfterSwap(afterSwapMessage(path, closeError));
        throw new BackupError(`compaction of ${path} replaced the backup, then failed: ${(closeError as Error).message}. ${AFTER_SWAP_FIX}`, path);
      }
      throw new BackupError(`compaction of ${path} failed: ${(closeError as Error).message}`, path);
    }
  }
}

const AFTER_SWAP_FIX =
  'No further write is accepted (lightningd stops without committing); check the disk, then restart lightningd: ' +
  'the plugin reopens whichever backup the name holds, and both hold every acknowledged write';

function afterSwapMessage(path: string, e: Error): string {
  return `a compaction replaced the backup ${path}, then failed (${e.message}). ${AFTER_SWAP_FIX}`;
}

/**
 * Refuses an end that is not the file's: the identity published with it must be the file at the backup's
 * name, which must be the file this compaction opened, and the end must lie within that file's data.
 */
function checkCommitted(path: string, format: BackupFormat, source: SegmentedSource | null, src: number, end: number, file: FileIdentity): void {
  const named = statSync(path, { bigint: true });
  const opened = source ? source.identity() : fstatSync(src, { bigint: true });
  const size = source ? source.size() : Number(fstatSync(src, { bigint: true }).size);
  const why =
    named.dev !== opened.dev || named.ino !== opened.ino
      ? `${path} was replaced while the compaction opened it`
      : named.dev !== file.dev || named.ino !== file.ino
        ? `the writer's end (${end}) was published for another file (device ${file.dev}, inode ${file.ino}) than ${path} (device ${named.dev}, inode ${named.ino})`
        : end > size
          ? `the writer's end (${end}) lies past the ${size} bytes of ${path}`
          : end < firstEntryOffset(format)
            ? `the writer's end (${end}) lies inside the file header of ${path}`
            : null;
  if (why !== null) throw new Aborted(why);
}

function mib(n: number): string {
  return (n / (1024 * 1024)).toFixed(1);
}

function openScratch(path: string): Database.Database {
  const db = new Database(path, { fileMustExist: true });
  db.pragma('foreign_keys = ON');
  db.pragma('journal_mode = DELETE');
  // NORMAL, not OFF, although a crash throws the file away: a sync per replay commit keeps the dirty page
  // cache small, so the writer's fdatasync on the same disk never has to wait for a huge writeback
  db.pragma('synchronous = NORMAL');
  return db;
}

/** The same checks a restore makes: the snapshot must be the database the entries describe. */
function finishScratch(db: Database.Database, path: string, version: number): void {
  db.pragma('journal_mode = DELETE');
  if (statSync(path).size === 0) db.pragma('user_version = 0');
  const integrity = db.pragma('integrity_check') as { integrity_check: string }[];
  if (integrity.length !== 1 || integrity[0]!.integrity_check !== 'ok') {
    throw new Error(`the compacted database fails integrity_check: ${integrity.slice(0, 3).map((r) => r.integrity_check).join('; ')}`);
  }
  const hasVars = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'vars'`).get() !== undefined;
  if (!hasVars) return;
  const row = db.prepare(`SELECT intval FROM vars WHERE name = 'data_version'`).get() as { intval: number } | undefined;
  if (row?.intval !== version) {
    throw new Error(`the compacted database's data_version is ${row?.intval ?? 'missing'}, not ${version}`);
  }
}

