import { closeSync, openSync, readSync } from 'node:fs';
import { FILE_HEADER_LEN, FILE_MAGIC } from './v2/codec.js';

/**
 * The 16-byte backup id in a v2 file's header (bytes 16..31; compaction keeps it), null for a file
 * without one (v1) or that cannot be read (its opening says why). The plugin records it to tell the same
 * backup from a replacement, and clnvault server reports it to a client that asks (socket/protocol.ts).
 */
export function v2BackupId(path: string): Buffer | null {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return null;
  }
  try {
    const h = Buffer.alloc(FILE_HEADER_LEN);
    if (readSync(fd, h, 0, FILE_HEADER_LEN, 0) < FILE_HEADER_LEN || !h.subarray(0, 8).equals(FILE_MAGIC)) return null;
    return Buffer.from(h.subarray(16, 32));
  } finally {
    closeSync(fd);
  }
}
