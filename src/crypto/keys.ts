/**
 * Where clnvault's backup key comes from: the node's own seed (hsm_secret, or its BIP39 words on a
 * machine that has lost it), a key file made by `clnvault keygen`, or a passphrase through scrypt.
 * Whatever the source, the result is a 32-byte master key with a fingerprint that names it safely.
 * Recovery needs only what the operator already keeps: the words (or hsm_secret) plus the backup.
 */
export { KeyError, type BackupKey, type KeyKind } from './keys/base.js';
export { hsmSecretLayout, keyFromHsmSecret, type HsmSecretLayout } from './keys/hsm-secret.js';
export { keyFromMnemonic, keyFromMnemonicFile } from './keys/from-words.js';
export { keyFromKeyFile, writeKeyFile } from './keys/key-file.js';
export { DEFAULT_SCRYPT, keyFromPassphrase, MAX_SCRYPT_MEMORY, MIN_PASSPHRASE_CHARS, newPassphraseParams, type PassphraseParams } from './keys/passphrase.js';
