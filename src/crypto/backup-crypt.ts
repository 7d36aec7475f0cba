import { BackupError } from '../engine/entries.js';
import type { FileEncryption } from '../backends/file/v2/codec.js';
import { keyKindName, RecordCrypt } from './records.js';

/** The key material a backup is opened with (src/crypto/keys.ts produces it). */
export interface KeyLike {
  readonly key: Buffer;
  readonly kind: string;
  readonly fingerprint: string;
}

/** How an encrypted backup's header describes its key, for messages and `inspect`. */
export function describeKey(enc: FileEncryption): { kind: string; fingerprint: string } {
  return { kind: keyKindName(enc.kind) ?? `unknown kind ${enc.kind}`, fingerprint: enc.fingerprint.toString('hex') };
}

/** What to pass to read an encrypted backup, per key kind. */
export function keyAdvice(enc: FileEncryption): string {
  const d = describeKey(enc);
  const how =
    d.kind === 'node-seed'
      ? `--hsm-secret PATH (the node's hsm_secret) or --mnemonic-file PATH (its seed words)`
      : d.kind === 'passphrase'
        ? `--passphrase-file PATH`
        : `--key-file PATH (the file 'clnvault keygen' or 'clnvault init --encrypt --key-file' wrote)`;
  return `it is encrypted with a ${d.kind} key (fingerprint ${d.fingerprint}): give it with ${how}`;
}

/**
 * The record cipher for a backup whose file header says `enc`, or null for a plain backup. A missing or
 * wrong key is refused here, before any record is read or written, with one line saying which key is
 * needed. `forWriting`: a key for a plain backup is refused too (never mix plaintext and ciphertext).
 */
export function cryptFor(path: string, enc: FileEncryption | null, backupId: Buffer, key: KeyLike | null | undefined, forWriting: boolean): RecordCrypt | null {
  if (enc === null) {
    if (key && forWriting) {
      throw new BackupError(`${path} is not an encrypted backup, but a key was given: refusing to write encrypted records into a plaintext backup`, path, 12);
    }
    return null;
  }
  if (!key) throw new BackupError(`${path}: no key given, and ${keyAdvice(enc)}`, path, 12);
  const want = enc.fingerprint.toString('hex');
  if (key.fingerprint !== want) {
    // a passphrase always gives a key: a mistyped one shows up here
    const what = key.kind === 'passphrase' && describeKey(enc).kind === 'passphrase' ? 'wrong passphrase' : 'wrong key';
    throw new BackupError(
      `${path}: ${what}: the key given (${key.kind}, fingerprint ${key.fingerprint}) is not the backup's; ${keyAdvice(enc)}`,
      path,
      52,
    );
  }
  return new RecordCrypt(key.key, backupId, key.fingerprint);
}
