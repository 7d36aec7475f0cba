import { isAbsolute, join, resolve } from 'node:path';
import type { EncryptSetting } from '../engine/backup-lock.js';
import { keyFromHsmSecret, keyFromKeyFile, type BackupKey } from './keys.js';

/**
 * The key backup.lock names (its "encrypt" setting), read at plugin start-up, before lightningd's first
 * db_write: the node's hsm_secret in the network directory, or a key file (relative to it). Throws the
 * key module's error (one line naming the file and the fix) when it cannot be read.
 */
export function keyFromLock(netDir: string, enc: EncryptSetting): BackupKey {
  if ('key' in enc) return keyFromHsmSecret(join(netDir, 'hsm_secret'));
  return keyFromKeyFile(isAbsolute(enc.key_file) ? enc.key_file : resolve(netDir, enc.key_file));
}

export function describeSetting(enc: EncryptSetting): string {
  return 'key' in enc ? 'the node seed (hsm_secret)' : `the key file ${enc.key_file}`;
}
