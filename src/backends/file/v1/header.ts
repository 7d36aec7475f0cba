import { closeSync, fsyncSync, openSync, unlinkSync } from 'node:fs';
import { BackupError } from '../../../engine/entries.js';
import { fsyncDir, writeFully } from '../fsutil.js';

/**
 * The reference plugin's FileBackend format ("file_version 1"), read and written byte-compatibly.
 * See docs/format-v1.md for the layout and for where clnvault deliberately differs from the reference
 * (it never trusts the header offsets, writes at the acknowledged end instead of O_APPEND, truncates
 * on rewind, and fdatasyncs the entry before the header).
 */

export const V1_HEADER_SIZE = 512;
export const V1_ENTRY_HEADER_SIZE = 9;
export const TYPE_CHANGE = 1;
export const TYPE_SNAPSHOT = 2;
export const MAX_PAYLOAD = 0xffff_ffff;
/** PRAGMA-only batches are tiny (`PRAGMA foreign_keys = OFF;`); larger payloads are not worth reading during a scan. */
export const PRAGMA_PROBE_LIMIT = 256;
export const COPY_CHUNK = 1 << 20;
export const SCAN_WINDOW = 64 * 1024;
export const SQLITE_MAGIC = Buffer.from('SQLite format 3\0', 'latin1');

export interface V1Header {
  fileVersion: number;
  version: number;
  offsets0: number;
  prevVersion: number;
  offsets1: number;
  versionCount: number;
}

export function isV1(head: Buffer, fileSize: number): boolean {
  return head.length >= 4 && head.readUInt32BE(0) === 1 && fileSize >= V1_HEADER_SIZE;
}

/** The whole 512-byte block, padding included, so that a rewrite leaves no stale bytes from an older header. */
export function writeV1Header(h: Omit<V1Header, 'fileVersion'>): Buffer {
  const b = Buffer.alloc(V1_HEADER_SIZE);
  b.writeUInt32BE(1, 0);
  b.writeUInt32BE(h.version, 4);
  b.writeBigUInt64BE(BigInt(h.offsets0), 8);
  b.writeUInt32BE(h.prevVersion, 16);
  b.writeBigUInt64BE(BigInt(h.offsets1), 20);
  b.writeBigUInt64BE(BigInt(h.versionCount), 28);
  return b;
}

/** Parses the first 512 bytes; `path` is only used in error messages. */
export function readV1Header(buf: Buffer, path: string): V1Header {
  if (buf.length < V1_HEADER_SIZE) {
    throw new BackupError(
      `${path}: corrupt v1 backup header: expected ${V1_HEADER_SIZE} bytes, got ${buf.length}`,
      path,
      0,
    );
  }
  const fileVersion = buf.readUInt32BE(0);
  if (fileVersion !== 1) {
    throw new BackupError(`${path}: not a v1 backup: file_version is ${fileVersion}, expected 1`, path, 0);
  }
  const u64 = (at: number): number => {
    const v = buf.readBigUInt64BE(at);
    // Offsets beyond 2^53 cannot describe a real file; treating them as numbers would silently round.
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new BackupError(`${path}: corrupt v1 backup header: u64 field at byte ${at} is ${v}`, path, at);
    }
    return Number(v);
  };
  return {
    fileVersion,
    version: buf.readUInt32BE(4),
    offsets0: u64(8),
    prevVersion: buf.readUInt32BE(16),
    offsets1: u64(20),
    versionCount: u64(28),
  };
}

/** Creates an empty backup exactly as `backup-cli init` does for a node that never ran: 512 bytes, (1,0,512,0,0,0). */
export function createV1(path: string): void {
  let fd: number;
  try {
    // 0600: the change log holds the node's whole channel state.
    fd = openSync(path, 'wx', 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new BackupError(`${path} already exists; refusing to overwrite an existing backup`, path);
    }
    throw new BackupError(`cannot create ${path}: ${(e as Error).message}`, path);
  }
  try {
    writeFully(fd, writeV1Header({ version: 0, offsets0: V1_HEADER_SIZE, prevVersion: 0, offsets1: 0, versionCount: 0 }), 0);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    try {
      unlinkSync(path);
    } catch {
      // nothing more to undo
    }
    throw new BackupError(`cannot write ${path}: ${(e as Error).message}`, path);
  }
  closeSync(fd);
  fsyncDir(path);
}
