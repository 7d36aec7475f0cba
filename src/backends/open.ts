import { closeSync, existsSync, fstatSync, openSync, readSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { BackupError, type BackupFormat } from '../engine/entries.js';
import type { BackupReader, BackupWriter } from './backend.js';
import { createV1, isV1, V1Reader, V1Writer } from './file/v1.js';
import { createV2, FILE_HEADER_LEN, isV2, PREALLOC_VERSION, RECORD_HEADER_LEN, RECORD_MAGIC, recordSeedOf, V2Reader, type FileEncryption } from './file/v2.js';
import type { KeyLike } from '../crypto/backup-crypt.js';
import { crc32 } from 'node:zlib';
import { discoverSegments, listSegmentFiles, sealOf, SegmentedReader, SegmentedWriter } from './file/segments.js';
import { openLive } from './file/live-read.js';
import { parseBackupUrl, UrlError } from './url.js';
import { isPostgresUrl, openPgReader, openPgWriter } from './postgres/index.js';
import { listHistory } from '../compact/files.js';
import { planBackup } from '../engine/plan.js';
import { serialDiff } from '../engine/versions.js';
import { SocketWriter } from './socket/writer.js';
import { openSocketReader } from './socket/reader.js';
import { parseSocketUrl } from './socket/url.js';

/**
 * Picks the destination from the URL scheme (file: or socket:), and for files the format from the
 * file's first bytes (never its name). Each destination lives in its own folder under backends/.
 */

export type Destination = 'file' | 'socket' | 'postgresql';

export function destinationOf(url: string, cwd: string): Destination {
  return parseBackupUrl(url, cwd).scheme;
}

function filePathOf(url: string, cwd: string): string {
  const u = parseBackupUrl(url, cwd);
  if (u.scheme === 'postgresql') throw new UrlError(`${url.replace(/:[^:@/]*@/, ':***@')} is a PostgreSQL backup, not a file`);
  if (u.scheme !== 'file') {
    throw new UrlError(
      `${url} is a socket: URL, and this needs the backup file itself: run it on the server, against its file: URL`,
    );
  }
  return u.path;
}

/**
 * Where temporary copies of the database (snapshots on their way into the backup) go: beside a backup
 * file (same disk, known to be mounted); the network directory for a remote backup.
 */
export function scratchDir(url: string, cwd: string): string {
  return destinationOf(url, cwd) === 'file' ? dirname(filePathOf(url, cwd)) : cwd;
}

export function detectFormat(path: string): BackupFormat {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') {
      const missing = missingFirstFile(path);
      if (missing !== null) throw new BackupError(missing, path);
      throw new BackupError(
        `backup file ${path} does not exist (is the backup disk mounted?); create it with 'clnvault init <url>'`,
        path,
      );
    }
    throw new BackupError(`cannot open backup ${path}: ${(e as Error).message}`, path);
  }
  try {
    const st = fstatSync(fd);
    if (st.isDirectory()) {
      throw new BackupError(`${path} is a directory; the backup URL must name the backup file itself`, path);
    }
    const head = Buffer.alloc(8);
    const n = readSync(fd, head, 0, 8, 0);
    if (n === 8 && isV2(head)) return 'v2';
    if (n >= 4 && isV1(head, st.size)) return 'v1';
    // a v2 file whose header magic is damaged: its first record still says what it is (magic and header checksum)
    if (v2RecordAt(fd, FILE_HEADER_LEN)) return 'v2';
    throw new BackupError(
      `${path} is not a clnvault or reference backup file (${st.size} bytes, unrecognised first bytes ${head.subarray(0, n).toString('hex')})`,
      path,
    );
  } finally {
    closeSync(fd);
  }
}

export function backupPath(url: string, cwd: string): string {
  return filePathOf(url, cwd);
}

export interface WriterOptions {
  /** the size limit of a v2 backup's segment files (backup.lock's "segment_bytes") */
  segmentBytes?: number;
  /** remote destinations: how long an outage is ridden out before a write fails (backup.lock's "remote_timeout") */
  remoteTimeoutMs?: number;
  /** remote destinations report reconnections here */
  log?: (level: 'info' | 'warn' | 'error', message: string) => void;
  /** the key of an encrypted backup (docs/encryption.md): required for one, refused for anything else */
  key?: KeyLike | null;
  /** clnvault server: hold an encrypted v2 backup without its key (only ready-made records are appended) */
  keyless?: boolean;
  /** clnvault://: an empty backup on the server may be made an encrypted one under `key` (init --encrypt) */
  encryptEmpty?: boolean;
}

/**
 * Encryption is implemented for file: v2, postgresql: and clnvault:// backups; elsewhere it is refused
 * rather than silently dropped. socket: can never have it: the reference protocol carries SQL statements, and a
 * `backup-cli server` (or `clnvault server FILE HOST:PORT`) stores them as such.
 */
export function encryptionNotYet(url: string): UrlError {
  const shown = url.replace(/:[^:@/]*@/, ':***@');
  if (/^socket:/i.test(url)) {
    return new UrlError(
      `${shown}: a socket: backup cannot be encrypted: the reference protocol sends the SQL statements themselves, which the ` +
        `server stores in clear; use clnvault's own mode (clnvault://NODE@HOST:PORT, 'clnvault server --dir'), whose server ` +
        `stores only the records the node encrypted, or an encrypted file: or postgresql: backup (docs/encryption.md)`,
    );
  }
  return new UrlError(
    `${shown}: encrypted backups are not supported for this destination (only file: backups in format v2, ` +
      `postgresql: and clnvault:// backups); it would store the records in clear (docs/encryption.md)`,
  );
}

export function openWriter(url: string, cwd: string, opts: WriterOptions = {}): BackupWriter {
  if (isPostgresUrl(url)) return openPgWriter(url, cwd, opts.key ?? null, opts.log);
  if (opts.key && destinationOf(url, cwd) !== 'file' && !isClnvaultUrl(url)) throw encryptionNotYet(url);
  if (destinationOf(url, cwd) === 'socket') return SocketWriter.open(url, { ...opts, cwd });
  const path = filePathOf(url, cwd);
  if (detectFormat(path) === 'v2') return SegmentedWriter.open(path, opts);
  if (opts.key) throw new BackupError(`${path} is a reference (v1) backup, which cannot be encrypted, but a key was given: refusing to write it`, path);
  return V1Writer.open(path);
}

export function openReader(url: string, cwd: string): BackupReader {
  if (isPostgresUrl(url)) return openPgReader(url, cwd);
  if (destinationOf(url, cwd) === 'socket') return openSocketReader(url, { cwd });
  return openFileReader(filePathOf(url, cwd));
}

/** A single-file v2 backup gets the plain V2Reader, exactly as before segments existed. */
function openFileReader(path: string): BackupReader {
  if (detectFormat(path) !== 'v2') return V1Reader.open(path);
  let segmented = false;
  try {
    const set = discoverSegments(path, { allowTornLast: true, lenient: true });
    // a first file that ends with a seal, or a gap, is a set with files missing: the segmented reader reports it
    segmented = set.segments.length > 1 || set.gap !== null || set.tornLast !== null || sealOf(path) !== null;
  } catch (e) {
    // a damaged first file header is V2Reader's to describe, with its usual message; a broken set is not
    const firstHeader = e instanceof BackupError && e.path === path && (e.offset === 0 || e.offset === undefined);
    if (!firstHeader) throw e;
    // which segment files belong to it is written in that header: reading only the first file would lose the rest
    const segs = listSegmentFiles(path);
    if (segs.length > 0) {
      throw new BackupError(
        `${(e as Error).message}; and ${segs.length} segment file(s) (${segs[0]!.path}…) lie beside it, which a damaged first ` +
          `header cannot be matched with. Keep every file; restore from another copy of the backup`,
        path,
      );
    }
  }
  if (segmented) return SegmentedReader.open(path);
  // a live backup may be mid-append, or in its first roll-over (the file's reserve cut under the read, a
  // segment appearing): taken again as a segmented read of a live set is (file/live-read.ts)
  return openLive<BackupReader>(path, () => {
    try {
      return V2Reader.open(path);
    } catch (e) {
      if (listSegmentFiles(path).length === 0) throw e;
      return SegmentedReader.openOnce(path);
    }
  });
}

/**
 * For a point-in-time restore: the backup itself when it still holds `version`, otherwise the newest
 * pre-compaction copy (`<file>.hist-*`, kept by compaction) that does. When none does, the error lists
 * what each file holds, so the user sees which versions can still be restored.
 */
export function openReaderAt(url: string, cwd: string, version: number): BackupReader {
  if (isPostgresUrl(url)) return openPgReader(url, cwd);
  if (destinationOf(url, cwd) === 'socket') return socketReaderAt(url, cwd, version);
  const path = filePathOf(url, cwd);
  const held: string[] = [];
  let newest: number | null = null;
  for (const candidate of [path, ...listHistory(path).map((h) => h.path)]) {
    const reader = openFileReader(candidate);
    let keep = false;
    try {
      const plan = planBackup(reader).plan();
      const oldest = plan.oldest;
      if (oldest === null) {
        keep = version === 0;
        held.push(`${candidate}: empty`);
      } else {
        keep = serialDiff(version, oldest) >= 0 && serialDiff(version, plan.head) <= 0;
        if (candidate === path) newest = plan.head;
        held.push(`${candidate}: versions ${oldest} to ${plan.head}`);
      }
    } finally {
      if (!keep) reader.close();
    }
    if (keep) return reader;
  }
  if (newest !== null && serialDiff(version, newest) > 0) {
    throw new BackupError(`version ${version} is newer than anything backed up: ${held.join('; ')} (${newest} is the newest)`, path);
  }
  throw new BackupError(
    `version ${version} is no longer available: ${held.join('; ')}. Older versions were compacted away ` +
      `(compaction keeps as many pre-compaction copies as "compaction": {"history": K} in backup.lock says)`,
    path,
  );
}

/** A server's RESTORE streams its whole backup; compacted-away versions exist only in the server's history files. */
function socketReaderAt(url: string, cwd: string, version: number): BackupReader {
  const reader = openSocketReader(url, { cwd });
  try {
    const plan = planBackup(reader).plan();
    const oldest = plan.oldest;
    if (oldest !== null && serialDiff(version, oldest) >= 0 && serialDiff(version, plan.head) <= 0) return reader;
    throw new BackupError(
      oldest === null
        ? `version ${version} is not available: the server's backup is empty`
        : `version ${version} is not available from the server, which holds versions ${oldest} to ${plan.head}; ` +
            `for older ones restore on the server from its file: URL, which also sees the pre-compaction copies`,
      url,
    );
  } catch (e) {
    reader.close();
    throw e;
  }
}

/** Creates a new, empty backup. Refuses when the file exists; the directory must exist (a missing mount must not be papered over). */
export function createBackup(url: string, cwd: string, format: BackupFormat, enc: FileEncryption | null = null, backupId?: Buffer): string {
  if (enc && destinationOf(url, cwd) !== 'file') throw encryptionNotYet(url);
  if (enc && format !== 'v2') throw new UrlError('--format v1 cannot be encrypted: the reference format has no place for it; use --format v2');
  if (destinationOf(url, cwd) === 'socket') {
    parseSocketUrl(url, cwd);
    throw new UrlError(
      `${url}: a socket: backup is created on the server ('clnvault init file:///path/backup.bkp' there, then ` +
        `'clnvault server file:///path/backup.bkp HOST:PORT')`,
    );
  }
  const path = filePathOf(url, cwd);
  if (existsSync(path)) {
    throw new BackupError(`${path} already exists; choose another file name or remove it if it is not needed`, path);
  }
  const dir = dirname(path);
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    isDir = false;
  }
  if (!isDir) throw new BackupError(`directory ${dir} does not exist; create it (or mount the backup disk) first`, path);
  if (format === 'v2') createV2(path, enc, backupId);
  else createV1(path);
  return path;
}

/** A v2 record header (magic and header checksum right) at `at`: what identifies a v2 file whose file header is damaged. */
function v2RecordAt(fd: number, at: number): boolean {
  const h = Buffer.alloc(RECORD_HEADER_LEN);
  if (readSync(fd, h, 0, RECORD_HEADER_LEN, at) !== RECORD_HEADER_LEN) return false;
  if (h.readUInt32BE(0) !== RECORD_MAGIC) return false;
  const crc = crc32(h.subarray(0, 28));
  if (crc === h.readUInt32BE(28)) return true;
  // format 4: the header CRC is seeded with the ids in the file header, whose magic may be the damaged part
  const fh = Buffer.alloc(FILE_HEADER_LEN);
  if (readSync(fd, fh, 0, FILE_HEADER_LEN, 0) !== FILE_HEADER_LEN || fh.readUInt16BE(8) < PREALLOC_VERSION) return false;
  return crc32(h.subarray(0, 28), recordSeedOf(fh)) === h.readUInt32BE(28);
}

/**
 * When the backup's first file `path` is absent but segment files of it lie beside it: why that is a
 * damaged backup (the first file holds the oldest records and says which set is current), else null.
 */
export function missingFirstFile(path: string): string | null {
  if (existsSync(path)) return null;
  const segs = listSegmentFiles(path);
  if (segs.length === 0) return null;
  return (
    `the backup's first file ${path} is missing, but ${segs.length} of its segment file(s) exist (${segs
      .slice(0, 3)
      .map((s) => s.path)
      .join(', ')}${segs.length > 3 ? ', …' : ''}): the backup is incomplete and cannot be restored without it. ` +
    `Find ${path} (a backup is that file and every .seg-* file beside it) and copy it back`
  );
}

/** clnvault's own server (clnvault://): the one remote destination whose records the node can seal itself. */
export function isClnvaultUrl(url: string): boolean {
  return /^clnvault:/i.test(url);
}

/** True for a URL whose backup is not a local file (no path to stat, check or lock). */
export function isRemoteUrl(url: string): boolean {
  return /^(socket|clnvault|postgres|postgresql):/i.test(url);
}
