import { isAbsolute, join, resolve } from 'node:path';
import { backupPath, isRemoteUrl } from '../backends/open.js';
import type { BackupLock, EncryptSetting } from '../engine/backup-lock.js';
import { KeyError, keyFromHsmSecret, keyFromKeyFile, type BackupKey } from './keys.js';
import { keyForPassphraseBackup, readPassphraseFile } from './passphrase-backup.js';

/**
 * The key backup.lock names (its "encrypt" setting), read at plugin start-up, before lightningd's first
 * db_write: the node's hsm_secret in the network directory, a key file, or a passphrase file (relative
 * to it). A passphrase key also needs the backup's first file (its salt and scrypt cost): `backupFile`,
 * null when the backup is not a local file (passphrase keys are for file: backups). Throws the key
 * module's error (one line naming the file and the fix) when it cannot be read.
 */
export function keyFromLock(netDir: string, enc: EncryptSetting, backupFile: string | null = null): BackupKey {
  const at = (p: string): string => (isAbsolute(p) ? p : resolve(netDir, p));
  if ('key' in enc) return keyFromHsmSecret(join(netDir, 'hsm_secret'));
  if ('key_file' in enc) return keyFromKeyFile(at(enc.key_file));
  if (backupFile === null) {
    throw new KeyError('a passphrase key ("passphrase_file") is for one file: destination only; use a key file ("key_file") for other destinations');
  }
  return keyForPassphraseBackup(backupFile, readPassphraseFile(at(enc.passphrase_file)));
}

export function describeSetting(enc: EncryptSetting): string {
  if ('key' in enc) return 'the node seed (hsm_secret)';
  return 'key_file' in enc ? `the key file ${enc.key_file}` : `the passphrase in ${enc.passphrase_file}`;
}

/** The backup file a passphrase key's salt is read from: the lock's one file: destination, else null. */
export function lockBackupFile(lock: BackupLock, netDir: string): string | null {
  if (lock.destinations !== undefined || isRemoteUrl(lock.backend_url)) return null;
  return backupPath(lock.backend_url, netDir);
}
