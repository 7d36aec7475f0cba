import { closeSync, constants, fchmodSync, fsyncSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname } from 'node:path';
import { fingerprintOf, KEY_BYTES, KeyError, makeKey, type BackupKey } from './base.js';
import { readSmallFile } from './files.js';

/**
 * A key file written by `clnvault keygen`: text, so it can be printed, copied by hand and checked by eye.
 *
 *   # clnvault backup key ... (comments)
 *   # fingerprint: 0123456789abcdef
 *   clnvault-key-v1 <64 hex digits>
 *
 * The fingerprint line, when present, must match the key: a damaged or mistyped copy is refused at once
 * instead of failing later as "wrong key" on every record.
 */

const KEY_LINE = /^clnvault-key-v1 ([0-9a-fA-F]{64})$/;
const FPR_LINE = /^# fingerprint: ([0-9a-f]{16})$/;
const MAX_KEY_FILE = 4096;

export function keyFromKeyFile(path: string): BackupKey {
  const { bytes, stat } = readSmallFile(path, MAX_KEY_FILE, 'a clnvault key file (made by clnvault keygen)');
  // like ssh with its private keys: a key others can read is no longer secret, and one others can write
  // could have been swapped; refusing tells the operator while the fix is one chmod
  if ((stat.mode & 0o077) !== 0) {
    bytes.fill(0);
    throw new KeyError(
      `${path} can be read or written by other users (mode ${(stat.mode & 0o777).toString(8).padStart(4, '0')}): run 'chmod 600 ${path}' (the key must be private)`,
    );
  }
  const lines = bytes.toString('latin1').split(/\r?\n/);
  bytes.fill(0);
  let hex: string | undefined;
  let fpr: string | undefined;
  for (const raw of lines) {
    const line = raw.trim();
    const k = KEY_LINE.exec(line);
    if (k) {
      if (hex !== undefined) throw new KeyError(`${path} holds more than one clnvault-key-v1 line; keep the one 'clnvault keygen' wrote`);
      hex = k[1]!;
      continue;
    }
    const f = FPR_LINE.exec(line);
    if (f) fpr = f[1]!;
    else if (line !== '' && !line.startsWith('#')) {
      throw new KeyError(`${path} is not a clnvault key file (a line is neither a comment nor 'clnvault-key-v1 <64 hex digits>'); give the file 'clnvault keygen' wrote`);
    }
  }
  if (hex === undefined) throw new KeyError(`${path} is not a clnvault key file (no 'clnvault-key-v1' line); give the file 'clnvault keygen' wrote`);
  const key = Buffer.from(hex, 'hex');
  if (fpr !== undefined && fingerprintOf(key) !== fpr) {
    key.fill(0);
    throw new KeyError(`${path} is damaged: its key does not match its fingerprint line (${fpr}); use an intact copy`);
  }
  return makeKey(key, 'key-file');
}

/** New random key, mode 0600, O_EXCL (never replaces a key: backups made with it would be lost), fsync file+dir. */
export function writeKeyFile(path: string): BackupKey {
  const key = makeKey(randomBytes(KEY_BYTES), 'key-file');
  const text =
    '# clnvault backup key. Anyone with this file can read the backups encrypted with it; without it\n' +
    '# they cannot be restored. Keep a copy apart from the backups (another machine, or on paper).\n' +
    `# fingerprint: ${key.fingerprint}\n` +
    `clnvault-key-v1 ${key.key.toString('hex')}\n`;
  let fd: number;
  try {
    fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') {
      throw new KeyError(`${path} already exists: a key file is never overwritten (backups encrypted with it would become unreadable); choose another path`);
    }
    if (code === 'ENOENT') throw new KeyError(`${path}: its directory does not exist; create it first`);
    if (code === 'EACCES' || code === 'EPERM') throw new KeyError(`${path}: permission denied creating the key file; choose a directory you can write`);
    throw new KeyError(`${path}: cannot create the key file: ${(e as Error).message}`);
  }
  try {
    // the umask can only remove bits; set them anyway so the mode does not depend on how the file system maps them
    fchmodSync(fd, 0o600);
    const buf = Buffer.from(text, 'latin1');
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off, off);
    buf.fill(0);
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    try {
      unlinkSync(path);
    } catch {
      // best effort: the error below names the file
    }
    throw new KeyError(`${path}: writing the key file failed (${(e as Error).message}); it was removed, try again with room on the disk`);
  }
  closeSync(fd);
  try {
    syncDir(dirname(path));
  } catch (e) {
    // the file is complete and synced; only its directory entry may not be on disk yet
    throw new KeyError(`${path} was written but its directory could not be synced (${(e as Error).message}); check the disk, then run 'sync'`);
  }
  return key;
}

function syncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
