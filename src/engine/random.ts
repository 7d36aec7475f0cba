import { createRequire } from 'node:module';

/**
 * Random bytes for file ids, with node:crypto loaded only when one is needed: loading it initialises
 * OpenSSL's tables, which the plugin would otherwise pay on every lightningd start for files it
 * creates rarely (a new backup or segment).
 */
const require = createRequire(import.meta.url);

export function randomBytes(n: number): Buffer {
  return (require('node:crypto') as typeof import('node:crypto')).randomBytes(n);
}
