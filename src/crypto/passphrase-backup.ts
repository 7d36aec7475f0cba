import { randomBytes } from 'node:crypto';
import { readSync } from 'node:fs';
import { readSegmentHeader } from '../backends/file/segments.js';
import { FILE_FLAG_ENCRYPTED, type FileEncryption } from '../backends/file/v2/codec.js';
import { DEFAULT_SCRYPT, KeyError, keyFromPassphrase, type BackupKey } from './keys.js';
import { readSmallFile } from './keys/files.js';
import { keyKindCode, keyKindName } from './records.js';

/**
 * Passphrase keys for file backups (docs/keys.md, "From a passphrase"). The key is scrypt(passphrase,
 * salt) with a salt derived from the backup id, which every segment's header carries and compaction
 * keeps: so the backup itself holds everything but the passphrase, and no two backups share a salt
 * (a thief cannot attack many backups with one table). The scrypt cost sits in header bytes 49..51.
 */

const SALT_LABEL = Buffer.from('clnvault passphrase salt v1\0', 'latin1');
/** a passphrase file is a line of text, not a document: anything bigger is the wrong file */
const MAX_PASSPHRASE_FILE = 4096;

export function passphraseSalt(backupId: Buffer): Buffer {
  return Buffer.concat([SALT_LABEL, backupId]);
}

export interface NewPassphraseBackup {
  /** the id the new backup must be created with (its salt) */
  backupId: Buffer;
  key: BackupKey;
  /** the file header's key description */
  enc: FileEncryption;
}

/** The id and key of a backup about to be created with a passphrase key (scrypt at the default cost: ~0.2 s, 64 MiB). */
export function newPassphraseBackup(passphrase: string): NewPassphraseBackup {
  const backupId = randomBytes(16);
  const { N, r, p } = DEFAULT_SCRYPT;
  const key = keyFromPassphrase(passphrase, { salt: passphraseSalt(backupId), N, r, p });
  return {
    backupId,
    key,
    enc: { kind: keyKindCode('passphrase'), fingerprint: Buffer.from(key.fingerprint, 'hex'), scrypt: { logN: Math.log2(N), r, p } },
  };
}

/**
 * The key of the passphrase-encrypted backup whose first file is `backupFile`, from its header's salt and
 * cost. The cost is bounded by keyFromPassphrase before scrypt runs (a header altered to ask for
 * gigabytes fails its CRC first, and a forged one is refused by the bounds). A wrong passphrase gives
 * another key, which the fingerprint check then refuses.
 */
export function keyForPassphraseBackup(backupFile: string, passphrase: string): BackupKey {
  const h = readSegmentHeader(backupFile);
  if (((h.flags ?? 0) & FILE_FLAG_ENCRYPTED) === 0) throw new KeyError(`${backupFile} is not an encrypted backup: it needs no passphrase`);
  const ext = h.ext!;
  if (ext[0] !== keyKindCode('passphrase')) {
    throw new KeyError(`${backupFile} is encrypted with a ${keyKindName(ext[0]!) ?? `kind ${ext[0]}`} key, not a passphrase: give that key instead`);
  }
  const logN = ext[1]!;
  if (logN < 1 || logN > 30) throw new KeyError(`${backupFile}: the passphrase cost in its header (log2 N = ${logN}) is out of bounds: the header is damaged or was altered; use an intact copy`);
  return keyFromPassphrase(passphrase, { salt: passphraseSalt(h.backupId), N: 2 ** logN, r: ext[2]!, p: ext[3]! });
}

/**
 * The passphrase held in `path` ("-": standard input), one line: a single trailing newline is not part
 * of it (echo and editors add one), anything else is, spaces included.
 */
export function readPassphraseFile(path: string): string {
  let bytes: Buffer;
  if (path === '-') {
    bytes = Buffer.alloc(MAX_PASSPHRASE_FILE + 1);
    let n = 0;
    for (;;) {
      let got: number;
      try {
        got = readSync(0, bytes, n, bytes.length - n, null);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EAGAIN') continue;
        if ((e as NodeJS.ErrnoException).code === 'EOF') break;
        throw new KeyError(`cannot read the passphrase from standard input: ${(e as Error).message}`);
      }
      if (got === 0) break;
      n += got;
      if (n > MAX_PASSPHRASE_FILE) throw new KeyError(`standard input holds more than ${MAX_PASSPHRASE_FILE} bytes: not a passphrase`);
    }
    bytes = bytes.subarray(0, n);
  } else {
    bytes = readSmallFile(path, MAX_PASSPHRASE_FILE, 'a passphrase file').bytes;
  }
  const where = path === '-' ? 'standard input' : path;
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    throw new KeyError(`${where} is not UTF-8 text: give the file that holds the passphrase`);
  } finally {
    bytes.fill(0);
  }
  text = text.replace(/\r?\n$/, '');
  if (text.length === 0) throw new KeyError(`${where} holds no passphrase (it is empty)`);
  if (/[\r\n]/.test(text)) throw new KeyError(`${where} holds more than one line: a passphrase file holds the passphrase alone, on one line`);
  return text;
}
