import { timingSafeEqual } from 'node:crypto';
import { KEY_BYTES, KeyError, keyFromNodeSecret, type BackupKey } from './base.js';
import { readSmallFile } from './files.js';
import { bip39Seed, canonicalMnemonic, checkPassphrase, MAX_MNEMONIC_CHARS, nodeSecretOfSeed, passphraseCheck } from './mnemonic.js';

/**
 * The three hsm_secret layouts Core Lightning v26.06.6 reads (common/hsm_secret.c, told apart by size
 * alone, as lightningd does):
 *   32 bytes            the secret itself (nodes made before v25.12)
 *   73 bytes            that secret encrypted under a passphrase (--encrypted-hsm, before v25.12; v26 reads it
 *                       with --hsm-passphrase but no longer makes it: on a new node that option gives words
 *                       with a passphrase, on a 32-byte file it leaves the file as it is): libsodium
 *                       secretstream header 24 + 32 + tag 17; unreadable without the passphrase
 *   anything else > 32  32 bytes that are zero when the seed has no BIP39 passphrase, else SHA-256 of the
 *                       64-byte BIP39 seed; then the words (ASCII, single spaces, no newline)
 */
export type HsmSecretLayout = 'plain' | 'encrypted' | 'mnemonic' | 'mnemonic-passphrase';

const ENCRYPTED_LEN = 73;
const MAX_HSM_SECRET = KEY_BYTES + MAX_MNEMONIC_CHARS;

export function hsmSecretLayout(path: string): HsmSecretLayout {
  return layoutOf(readHsmSecret(path), path);
}

/**
 * hsm_secret from a lightning network dir: 32-byte raw layout, or the current layout (32 bytes + BIP39
 * words). The 73-byte encrypted layout throws KeyError saying a key file is required (and how to make one).
 * `mnemonicPassphrase`: the BIP39 passphrase lightningd was given (--hsm-passphrase), when the words have one.
 */
export function keyFromHsmSecret(path: string, mnemonicPassphrase?: string): BackupKey {
  const secret = nodeSecretFromHsmSecret(path, mnemonicPassphrase);
  try {
    return keyFromNodeSecret(secret);
  } finally {
    secret.fill(0);
  }
}

/**
 * The node's 32-byte secret, the one hsmd derives the node key from (HKDF "nodeid"): the file itself in
 * the plain layout, the first half of the BIP39 seed in the mnemonic ones. Exported for the tests that
 * prove it against a real lightningd's node id; everything else takes keyFromHsmSecret.
 */
export function nodeSecretFromHsmSecret(path: string, mnemonicPassphrase?: string): Buffer {
  const bytes = readHsmSecret(path);
  try {
    return nodeSecretOf(bytes, path, mnemonicPassphrase === '' ? undefined : mnemonicPassphrase);
  } finally {
    bytes.fill(0);
  }
}

function nodeSecretOf(bytes: Buffer, path: string, pass: string | undefined): Buffer {
  const layout = layoutOf(bytes, path);
  if (layout === 'encrypted') {
    throw new KeyError(
      `${path} is an encrypted hsm_secret (73 bytes, lightningd --encrypted-hsm): clnvault cannot derive a key from it; ` +
        `make a key file with 'clnvault keygen KEYFILE' and give --key-file KEYFILE (keep a copy apart from the backup)`,
    );
  }
  if (layout === 'plain') {
    if (pass !== undefined) throw new KeyError(`${path} is a 32-byte hsm_secret, which has no passphrase; give none`);
    return Buffer.from(bytes);
  }
  // lightningd seeds from the stored words exactly as they are; the check below only refuses what it refuses
  const mnemonic = bytes.subarray(KEY_BYTES).toString('latin1');
  if (!/^[\x20-\x7e]+$/.test(mnemonic)) {
    throw new KeyError(`${path} is not a Core Lightning hsm_secret (${bytes.length} bytes that are neither 32 raw bytes nor BIP39 words); check the path`);
  }
  canonicalMnemonic(mnemonic, path);
  if (layout === 'mnemonic' && pass !== undefined) {
    throw new KeyError(`${path}: this node's words have no BIP39 passphrase (the file says so); give none`);
  }
  if (layout === 'mnemonic-passphrase' && pass === undefined) {
    throw new KeyError(
      `${path}: this node's words are protected by a BIP39 passphrase (the one lightningd --hsm-passphrase asked for); give it too, or use a key file`,
    );
  }
  if (pass !== undefined) checkPassphrase(pass, path);
  const seed = bip39Seed(mnemonic, pass ?? '');
  try {
    if (layout === 'mnemonic-passphrase') {
      const check = passphraseCheck(seed);
      const ok = timingSafeEqual(check, bytes.subarray(0, KEY_BYTES));
      check.fill(0);
      if (!ok) throw new KeyError(`${path}: wrong BIP39 passphrase (it does not match the check lightningd stored); give the passphrase lightningd was given`);
    }
    return nodeSecretOfSeed(seed);
  } finally {
    seed.fill(0);
  }
}

function readHsmSecret(path: string): Buffer {
  // on a new node the file appears only at lightningd's first start (hsmd writes it), after its plugins start
  return readSmallFile(
    path,
    MAX_HSM_SECRET,
    'a Core Lightning hsm_secret',
    "check the path; a new node has none until lightningd's first start (or lightningd --recover=<words> writes it), or use a key file",
  ).bytes;
}

function layoutOf(bytes: Buffer, path: string): HsmSecretLayout {
  if (bytes.length < KEY_BYTES) {
    throw new KeyError(`${path} is ${bytes.length} bytes: too short for a Core Lightning hsm_secret (32 bytes or more); it is damaged or not an hsm_secret`);
  }
  if (bytes.length === KEY_BYTES) return 'plain';
  if (bytes.length === ENCRYPTED_LEN) return 'encrypted';
  return bytes.subarray(0, KEY_BYTES).every((b) => b === 0) ? 'mnemonic' : 'mnemonic-passphrase';
}
