import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import { FILE_HEADER_LEN, recordSeedOf, V2Reader } from '../../src/backends/file/v2.js';

/**
 * A format-4 v2 file keeps reserved zeros after its records (docs/format-v2.md, "Preallocation"), so its
 * size no longer says how much was written: these read what the records say.
 */

/** The record header CRC seed of the v2 file `path` (0 for format 3 and earlier), for tests that write records by hand. */
export function seedOf(path: string): number {
  const fd = openSync(path, 'r');
  try {
    const h = Buffer.alloc(FILE_HEADER_LEN);
    readSync(fd, h, 0, FILE_HEADER_LEN, 0);
    return recordSeedOf(h);
  } finally {
    closeSync(fd);
  }
}

/** End of the records of the v2 file `path` (what `stats().bytes` says), after checking only zeros follow it. */
export function recordsEnd(path: string): number {
  const r = V2Reader.open(path);
  let end: number;
  try {
    end = r.stats().bytes;
  } finally {
    r.close();
  }
  const rest = readFileSync(path).subarray(end);
  assert.ok(rest.equals(Buffer.alloc(rest.length)), `${path}: bytes other than reserved zeros after the records' end ${end}`);
  return end;
}

/**
 * Recomputes the checksums of the record [start, end) in the v2 file bytes `b` after a test changed its
 * payload: what a forger does, so that only authentication can tell.
 */
export function fixChecksums(b: Buffer, start: number, end: number): void {
  const len = end - start - 40;
  b.writeUInt32BE(crc32(b.subarray(start + 32, start + 32 + len)), start + 24);
  // format 4: the header CRC is seeded with the file header's ids, which a forger reads as easily
  b.writeUInt32BE(crc32(b.subarray(start, start + 28), recordSeedOf(b.subarray(0, 64))), start + 28);
}
