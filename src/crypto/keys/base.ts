import { hkdfSync } from 'node:crypto';

/**
 * What every key source shares: the key object, the error type and the labels that tie a key to clnvault.
 * The labels are part of the format: changing one changes every key and fingerprint (old backups would
 * no longer open), so a new construction takes a new label and keeps the old one readable.
 */

export type KeyKind = 'node-seed' | 'key-file' | 'passphrase';

export interface BackupKey {
  /** 32-byte master key for clnvault; the encrypt helper derives its subkeys from it with HKDF */
  readonly key: Buffer;
  readonly kind: KeyKind;
  /** 16 hex chars; identifies the key without revealing it (HKDF with its own label); same whatever source gave it */
  readonly fingerprint: string;
}

/** One line naming the file and the fix. It never contains a secret: no key, word or passphrase. */
export class KeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyError';
  }
}

export const KEY_BYTES = 32;

/**
 * HKDF's info for the node-seed key: a label of clnvault's own, so the backup key is independent of
 * every key lightningd's hsmd derives from the same secret ("nodeid", "bip32 seed", "peer seed", ...):
 * knowing the backup key tells nothing about the node's keys, nor the reverse.
 */
const NODE_SEED_INFO = 'clnvault backup key v1 from node hsm_secret';
const FINGERPRINT_INFO = 'clnvault key fingerprint v1';

/** The fingerprint is a one-way function of the key under its own label: it can be shown and stored freely. */
export function fingerprintOf(key: Buffer): string {
  return Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), FINGERPRINT_INFO, 8)).toString('hex');
}

export function makeKey(key: Buffer, kind: KeyKind): BackupKey {
  if (key.length !== KEY_BYTES) throw new Error(`internal: a backup key is ${KEY_BYTES} bytes, not ${key.length}`);
  return Object.freeze({ key, kind, fingerprint: fingerprintOf(key) });
}

/** node-seed key = HKDF-SHA256(ikm = the node's 32-byte secret, no salt, info = clnvault's label). */
export function keyFromNodeSecret(secret: Buffer): BackupKey {
  if (secret.length !== KEY_BYTES) throw new Error(`internal: a node secret is ${KEY_BYTES} bytes, not ${secret.length}`);
  return makeKey(Buffer.from(hkdfSync('sha256', secret, Buffer.alloc(0), NODE_SEED_INFO, KEY_BYTES)), 'node-seed');
}
