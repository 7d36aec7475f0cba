import { randomBytes, scryptSync } from 'node:crypto';
import { KEY_BYTES, KeyError, makeKey, type BackupKey } from './base.js';

/**
 * A key from a passphrase through scrypt (memory-hard: a thief who copies the backup pays memory, not
 * just CPU, for every guess). The default costs 64 MiB and about 0.19 s of CPU on an AMD EPYC vCPU (bench/keys.ts), an estimated
 * 1 s on a Raspberry Pi 4; N = 2^16, r = 8, p = 1 (128 * N * r bytes = 64 MiB).
 * The parameters come back from the backup's header, which a hostile server can alter: they are bounded
 * here (altered ones only give a wrong key, which authentication then refuses, but must not make the
 * restore allocate gigabytes or run for hours).
 */
export interface PassphraseParams {
  salt: Buffer;
  N: number;
  r: number;
  p: number;
}

export const DEFAULT_SCRYPT = { N: 1 << 16, r: 8, p: 1 } as const;
/** 128 * N * r * p at most: the default's 64 MiB */
export const MAX_SCRYPT_MEMORY = 64 * 1024 * 1024;
const MIN_N = 1 << 14;
const MAX_WORK = (1 << 16) * 8 * 4;
export const MIN_PASSPHRASE_CHARS = 8;
const MAX_PASSPHRASE_BYTES = 1024;

export function newPassphraseParams(): PassphraseParams {
  return { salt: randomBytes(16), ...DEFAULT_SCRYPT };
}

export function keyFromPassphrase(pass: string, params: PassphraseParams): BackupKey {
  checkParams(params);
  // NFKD: the same passphrase typed on another system (composed or decomposed accents) gives the same key
  const norm = pass.normalize('NFKD');
  if ([...norm].length < MIN_PASSPHRASE_CHARS) {
    throw new KeyError(`the passphrase is too short (${MIN_PASSPHRASE_CHARS} characters at least); choose a longer one`);
  }
  if (Buffer.byteLength(norm, 'utf8') > MAX_PASSPHRASE_BYTES) throw new KeyError(`the passphrase is longer than ${MAX_PASSPHRASE_BYTES} bytes; choose a shorter one`);
  const { N, r, p, salt } = params;
  const pw = Buffer.from(norm, 'utf8');
  try {
    // maxmem a little above 128 * N * r: scrypt's own small buffers come on top
    return makeKey(scryptSync(pw, salt, KEY_BYTES, { N, r, p, maxmem: 128 * N * r + 4 * 1024 * 1024 }), 'passphrase');
  } finally {
    pw.fill(0);
  }
}

function checkParams(params: PassphraseParams): void {
  const { N, r, p, salt } = params;
  const bad = (what: string): never => {
    throw new KeyError(`the backup's passphrase parameters are out of bounds (${what}): the header is damaged or was altered; use an intact copy`);
  };
  if (!Buffer.isBuffer(salt) || salt.length < 16 || salt.length > 64) bad(`salt of ${Buffer.isBuffer(salt) ? salt.length : '?'} bytes, expected 16 to 64`);
  if (!Number.isInteger(N) || N < MIN_N || N > MAX_SCRYPT_MEMORY / 128 || (N & (N - 1)) !== 0) bad(`N ${N}, expected a power of 2 from ${MIN_N}`);
  if (!Number.isInteger(r) || r < 1 || r > 32) bad(`r ${r}, expected 1 to 32`);
  if (!Number.isInteger(p) || p < 1 || p > 4) bad(`p ${p}, expected 1 to 4`);
  if (128 * N * r > MAX_SCRYPT_MEMORY) bad(`128 * N * r = ${128 * N * r} bytes, more than ${MAX_SCRYPT_MEMORY}`);
  if (N * r * p > MAX_WORK) bad(`N * r * p = ${N * r * p}, more than ${MAX_WORK}`);
}
