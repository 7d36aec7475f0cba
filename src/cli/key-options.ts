import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { keyFromHsmSecret, keyFromKeyFile, keyFromMnemonicFile, type BackupKey } from '../crypto/keys.js';
import { keyForPassphraseBackup, readPassphraseFile } from '../crypto/passphrase-backup.js';
import { CliError, EXIT } from './common.js';

/**
 * The key options of the commands that read an encrypted backup (restore, verify, inspect, compact):
 * one of --hsm-secret, --key-file, --mnemonic-file, --passphrase-file (docs/encryption.md, "Recovery").
 */
export const KEY_OPTIONS = {
  'hsm-secret': { type: 'string' },
  'key-file': { type: 'string' },
  'mnemonic-file': { type: 'string' },
  'mnemonic-passphrase-file': { type: 'string' },
  'passphrase-file': { type: 'string' },
} as const;

export const KEY_OPTIONS_HELP = `Keys (an encrypted backup, docs/encryption.md; one of):
  --hsm-secret PATH    the node's hsm_secret (a backup encrypted with the node seed)
  --mnemonic-file PATH a file holding the node's BIP39 seed words (a machine without
                       hsm_secret); the seed's passphrase, if any, from
                       --mnemonic-passphrase-file PATH or CLNVAULT_MNEMONIC_PASSPHRASE
  --key-file PATH      the key file the backup was encrypted with
  --passphrase-file PATH  a file holding the passphrase the backup was made with
                       ('clnvault init --encrypt --passphrase-file'), - for standard input;
                       file: backups only (the salt is in the backup's header)`;

/**
 * The key the options name, or null when none is given. One clear line (CliError) when it cannot be read.
 * `backupFile`: the backup's first file, where a passphrase key's salt is (null: not a file backup).
 */
export function keyFromOptions(values: Record<string, string | boolean | undefined>, env: NodeJS.ProcessEnv = process.env, backupFile: string | null = null): BackupKey | null {
  const given = (['hsm-secret', 'key-file', 'mnemonic-file', 'passphrase-file'] as const).filter((k) => typeof values[k] === 'string');
  if (given.length > 1) throw new CliError(`give one key: ${given.map((g) => `--${g}`).join(' and ')} were both given`, EXIT.usage);
  if (values['mnemonic-passphrase-file'] !== undefined && given[0] !== 'mnemonic-file') {
    throw new CliError('--mnemonic-passphrase-file goes with --mnemonic-file', EXIT.usage);
  }
  if (given.length === 0) return null;
  const raw = String(values[given[0]!]);
  const path = given[0] === 'passphrase-file' && raw === '-' ? '-' : resolve(raw);
  try {
    switch (given[0]) {
      case 'hsm-secret':
        return keyFromHsmSecret(path, env.CLNVAULT_MNEMONIC_PASSPHRASE);
      case 'key-file':
        return keyFromKeyFile(path);
      case 'passphrase-file':
        if (backupFile === null) throw new Error('passphrase keys are for file: backups (the salt is in the backup file); give the key another way');
        return keyForPassphraseBackup(backupFile, readPassphraseFile(path));
      default: {
        const ppFile = values['mnemonic-passphrase-file'];
        const pass = typeof ppFile === 'string' ? readFileSync(resolve(ppFile), 'utf8').replace(/\r?\n$/, '') : env.CLNVAULT_MNEMONIC_PASSPHRASE;
        return keyFromMnemonicFile(path, pass);
      }
    }
  } catch (e) {
    throw new CliError(`cannot read the key from --${given[0]} ${path}: ${(e as Error).message}`);
  }
}
