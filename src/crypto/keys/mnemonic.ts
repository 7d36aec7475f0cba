import { createHash, pbkdf2Sync } from 'node:crypto';
import { validateMnemonic } from '@scure/bip39';
import { wordlist } from '@scure/bip39/wordlists/english.js';
import { KEY_BYTES, KeyError } from './base.js';

/**
 * BIP39 as Core Lightning uses it (common/hsm_secret.c, v25.12 and later, through libwally): English
 * words only; seed = PBKDF2-HMAC-SHA512(words, "mnemonic" + passphrase, 2048 rounds, 64 bytes); the
 * node's 32-byte secret (the one hsmd derives its node key and bip32 root from) is the first half of
 * that seed. libwally hashes the strings as given, without NFKD: for the English words it makes no
 * difference; for a passphrase it does, so the passphrase's bytes are used as given, like lightningd.
 * The word list and checksum check come from @scure/bip39 (audited), not a copy of our own.
 */

/** BIP39 allows 12, 15, 18, 21 or 24 words; the longest English word has 8 letters. */
const WORD_COUNTS = new Set([12, 15, 18, 21, 24]);
export const MAX_MNEMONIC_CHARS = 24 * 9;
/** no BIP39 bound; this one keeps a hostile input from costing more than a normal one */
export const MAX_PASSPHRASE_BYTES = 1024;

let words: Set<string> | null = null;

/**
 * Checks typed words and returns them the way lightningd writes them (lower case, single spaces).
 * `where` names the source in errors ("the words given with --mnemonic", "PATH"). Errors say which
 * word number is wrong, never the word: a mistyped word is most of the secret word.
 */
export function canonicalMnemonic(input: string, where: string): string {
  if (input.length > MAX_MNEMONIC_CHARS * 2) throw new KeyError(`${where}: ${input.length} characters is too long for BIP39 words (24 words at most)`);
  const list = input.normalize('NFKD').trim().toLowerCase().split(/\s+/).filter((w) => w !== '');
  if (!WORD_COUNTS.has(list.length)) {
    throw new KeyError(`${where}: ${list.length} words; a BIP39 mnemonic has 12, 15, 18, 21 or 24 words separated by spaces`);
  }
  words ??= new Set(wordlist);
  const unknown = list.map((w, i) => (words!.has(w) ? 0 : i + 1)).filter((n) => n !== 0);
  if (unknown.length > 0) {
    throw new KeyError(
      `${where}: word${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} (counting from 1) ${unknown.length > 1 ? 'are' : 'is'} not in the BIP39 English word list; check the spelling`,
    );
  }
  const canonical = list.join(' ');
  if (!validateMnemonic(canonical, wordlist)) {
    throw new KeyError(`${where}: the words' checksum does not match: a word is wrong or two are swapped; check them against the written copy`);
  }
  return canonical;
}

export function checkPassphrase(passphrase: string, where: string): void {
  if (Buffer.byteLength(passphrase, 'utf8') > MAX_PASSPHRASE_BYTES) {
    throw new KeyError(`${where}: the BIP39 passphrase is longer than ${MAX_PASSPHRASE_BYTES} bytes; check what was given`);
  }
}

/** The 64-byte BIP39 seed, computed as libwally does (no normalisation of either string). */
export function bip39Seed(mnemonic: string, passphrase: string): Buffer {
  return pbkdf2Sync(Buffer.from(mnemonic, 'utf8'), Buffer.from(`mnemonic${passphrase}`, 'utf8'), 2048, 64, 'sha512');
}

/**
 * What lightningd stores in the first 32 bytes of a mnemonic hsm_secret: zeros without a passphrase,
 * else SHA-256 of the 64-byte seed (so a wrong passphrase is told apart from a right one).
 */
export function passphraseCheck(seed: Buffer): Buffer {
  return createHash('sha256').update(seed).digest();
}

/** The node's 32-byte secret from a BIP39 seed: its first half (hsm_secret.c's `secret` field). */
export function nodeSecretOfSeed(seed: Buffer): Buffer {
  return Buffer.from(seed.subarray(0, KEY_BYTES));
}
