import { closeSync, fdatasyncSync, openSync, readSync, rmSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { FILE_HEADER_LEN, RECORD_HEADER_LEN, type RecordHeader } from '../backends/file/v2.js';
import { RECORD_TRAILER_LEN, writeU64 } from '../backends/file/v2/codec.js';
import { writeFully } from '../backends/file/fsutil.js';
import { SNAPSHOT_PREFIX_LEN } from '../crypto/records.js';

/**
 * The keyless half of compacting an encrypted clnvault:// backup (docs/encryption.md, "clnvault's own
 * server"). The node, which has the key, seals a snapshot of its database at the backup's head version as
 * a chain start (prev zeros) whose link is the link of the backup's newest record, and sends it; the
 * server checks from the record's plaintext parts that it can stand alone in a new file (a whole snapshot,
 * at the head version, starting a chain, naming the newest record's link) and writes a file of its header
 * and that one record. The next record names that link, so the chain goes on; a snapshot that is not what
 * it claims fails authentication at restore like any other record, and cannot be made without the key.
 */

/** Why `h` (with its payload's first bytes `prefix`) cannot replace the backup, or null. */
export function rebaseRefusal(h: RecordHeader, prefix: Buffer, head: number, tailLink: Buffer | null, type: number): string | null {
  if (h.type !== type) return 'a compaction record must be a whole snapshot';
  if (h.version !== head) return `the snapshot is of version ${h.version}, the backup is at ${head}: it must cover the backup's newest version exactly`;
  if (prefix.length < SNAPSHOT_PREFIX_LEN) return 'the snapshot is shorter than its encryption frame';
  if (prefix.subarray(32, 48).some((b) => b !== 0)) return 'the snapshot does not start a chain (its prev is not zeros)';
  const link = prefix.subarray(48, 64);
  if (tailLink === null || !link.equals(tailLink)) return "the snapshot's link is not the link of the backup's newest record (the node and the server disagree on the chain)";
  return null;
}

/**
 * Writes `tmp` (created here: it must not exist): the backup's file header, then the record (its header
 * `header`, its `stored` payload bytes copied from `payloadPath`, its trailer), fdatasynced. Throws when
 * the payload does not match the header's checksum.
 */
export function writeRebasedFile(tmp: string, fileHeader: Buffer, header: Buffer, h: RecordHeader, payloadPath: string, stored: number): number {
  const out = openSync(tmp, 'wx', 0o600);
  let done = false;
  try {
    writeFully(out, fileHeader, 0);
    const src = openSync(payloadPath, 'r');
    let crc = 0;
    try {
      const buf = Buffer.allocUnsafe(1 << 20);
      for (let at = 0; at < stored; ) {
        const n = readSync(src, buf, 0, Math.min(buf.length, stored - at), at);
        if (n <= 0) throw new Error(`the scratch file ${payloadPath} ended early`);
        crc = crc32(buf.subarray(0, n), crc);
        writeFully(out, buf.subarray(0, n), FILE_HEADER_LEN + RECORD_HEADER_LEN + at);
        at += n;
      }
    } finally {
      closeSync(src);
    }
    if (crc !== h.payloadCrc) throw new Error("the snapshot's payload does not match its checksum (damaged on the way)");
    const t = Buffer.allocUnsafe(RECORD_TRAILER_LEN);
    writeU64(t, stored, 0);
    writeFully(out, t, FILE_HEADER_LEN + RECORD_HEADER_LEN + stored);
    // the header last: a crash before it leaves no valid record (and the file is not the backup yet anyway)
    writeFully(out, header, FILE_HEADER_LEN);
    fdatasyncSync(out);
    done = true;
    return FILE_HEADER_LEN + RECORD_HEADER_LEN + stored + RECORD_TRAILER_LEN;
  } finally {
    closeSync(out);
    if (!done) rmSync(tmp, { force: true });
  }
}
