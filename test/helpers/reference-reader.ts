import { readFileSync } from 'node:fs';

/**
 * An independent re-statement of the reference plugin's reader (FileBackend.read_metadata +
 * stream_changes, docs reference-plugin.md §2.2/§2.7), deliberately sharing no code with
 * src/backends/file/v1.ts so that it can judge files written by clnvault: whatever this returns is
 * what `backup-cli restore` would apply.
 *
 * Rules, as the reference has them:
 * - the header must be 512 bytes with file_version 1 (otherwise initialize() fails);
 * - entries are read from 512 *while the last version read < header.version* (plain integer
 *   comparison, starting from -1), so an empty backup still reads once and hits EOF;
 * - each record is unpacked as "!IIb" from 9 bytes (struct.error on fewer), then `length` payload
 *   bytes are read with f.read(), which silently returns fewer at EOF;
 * - type 1 = statements split on 0x00, strict UTF-8; type 2 = snapshot bytes; anything else raises;
 * - finally the last version must equal header.version.
 * The header offsets are never used.
 */

export type ReferenceEntry =
  | { kind: 'change'; version: number; offset: number; statements: string[] }
  | { kind: 'snapshot'; version: number; offset: number; snapshot: Buffer };

export function referenceStream(path: string): ReferenceEntry[] {
  const file = readFileSync(path);
  const header = file.subarray(0, 512);
  if (header.length !== 512) {
    throw new Error(`Corrupt FileBackend header, expected 512 bytes, got ${header.length} bytes`);
  }
  const fileVersion = header.readUInt32BE(0);
  if (fileVersion !== 1) throw new Error(`Unknown FileBackend version ${fileVersion}`);
  const headerVersion = header.readUInt32BE(4);

  const out: ReferenceEntry[] = [];
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  let pos = 512;
  let version = -1;
  while (version < headerVersion) {
    if (file.length - pos < 9) {
      throw new Error(`struct.error: unpack requires a buffer of 9 bytes (got ${Math.max(0, file.length - pos)})`);
    }
    const offset = pos;
    const length = file.readUInt32BE(pos);
    version = file.readUInt32BE(pos + 4);
    const typ = file.readInt8(pos + 8);
    pos += 9;
    const payload = file.subarray(pos, Math.min(pos + length, file.length));
    pos += payload.length;
    if (typ === 1) {
      const statements = splitOnNul(payload).map((p) => utf8.decode(p));
      out.push({ kind: 'change', version, offset, statements });
    } else if (typ === 2) {
      out.push({ kind: 'snapshot', version, offset, snapshot: Buffer.from(payload) });
    } else {
      throw new Error(`Unknown FileBackend entry type ${typ}`);
    }
  }
  if (version !== headerVersion) {
    throw new Error(`Versions do not match up: restored version ${version}, backend version ${headerVersion}`);
  }
  return out;
}

/** bytes.split(b'\0'): an empty input gives one empty part. */
function splitOnNul(b: Buffer): Buffer[] {
  const parts: Buffer[] = [];
  let start = 0;
  for (;;) {
    const i = b.indexOf(0, start);
    if (i < 0) break;
    parts.push(b.subarray(start, i));
    start = i + 1;
  }
  parts.push(b.subarray(start));
  return parts;
}
