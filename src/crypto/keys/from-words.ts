import { keyFromNodeSecret, type BackupKey } from './base.js';
import { readSmallFile } from './files.js';
import { bip39Seed, canonicalMnemonic, checkPassphrase, MAX_MNEMONIC_CHARS, nodeSecretOfSeed } from './mnemonic.js';

/**
 * BIP39 words (validated: word list and checksum) + optional passphrase; gives the SAME key as the
 * hsm_secret the node wrote from these words. `source` names where the words came from in errors.
 */
export function keyFromMnemonic(words: string, passphrase?: string, source = 'the BIP39 words given'): BackupKey {
  const secret = nodeSecretFromMnemonic(words, passphrase, source);
  try {
    return keyFromNodeSecret(secret);
  } finally {
    secret.fill(0);
  }
}

/** The node's 32-byte secret from its words (what lightningd --recover would write); for tests and keyFromMnemonic. */
export function nodeSecretFromMnemonic(words: string, passphrase?: string, source = 'the BIP39 words given'): Buffer {
  const mnemonic = canonicalMnemonic(words, source);
  if (passphrase) checkPassphrase(passphrase, source);
  const seed = bip39Seed(mnemonic, passphrase ?? '');
  try {
    return nodeSecretOfSeed(seed);
  } finally {
    seed.fill(0);
  }
}

/** The words from a file (as an operator keeps them: one line or one word a line; # comments allowed). */
export function keyFromMnemonicFile(path: string, passphrase?: string): BackupKey {
  const { bytes } = readSmallFile(path, MAX_MNEMONIC_CHARS * 4, 'a file of BIP39 words');
  const text = bytes.toString('utf8').split('\n').map((l) => l.replace(/#.*$/, '')).join(' ');
  bytes.fill(0);
  return keyFromMnemonic(text, passphrase, path);
}
