import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { LOCK_NAME } from '../engine/backup-lock.js';
import { DB_NAME } from '../engine/live-db.js';
import { CliError } from './common.js';

/**
 * lightningd's --lightning-dir is the base directory (~/.lightning) and the database lives in its network
 * subdirectory (~/.lightning/bitcoin); clnvault's --lightning-dir is that network directory. Users give
 * either, so a base directory is recognised and its one network directory used, said out loud; when
 * it could be several, nothing is guessed.
 */

/** lightningd's network names, and the subdirectory each uses */
const NETWORKS: Record<string, string> = {
  bitcoin: 'bitcoin',
  mainnet: 'bitcoin',
  testnet: 'testnet',
  testnet4: 'testnet4',
  signet: 'signet',
  regtest: 'regtest',
  liquid: 'liquid',
  'liquid-regtest': 'liquid-regtest',
};
const SUBDIRS = [...new Set(Object.values(NETWORKS))];
/** files only a network directory holds */
const NETWORK_DIR_MARKS = [DB_NAME, 'hsm_secret', LOCK_NAME];

export interface NetworkDir {
  dir: string;
  /** set when the given directory was a base directory: what was chosen and why */
  note: string | null;
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** The network a base directory's config names (network=X, or a bare network option), if any. */
function configNetwork(base: string): string | null {
  let text: string;
  try {
    text = readFileSync(join(base, 'config'), 'utf8');
  } catch {
    return null;
  }
  let found: string | null = null;
  for (const raw of text.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    const m = /^network=(.+)$/.exec(line);
    if (m && NETWORKS[m[1]!.trim()]) found = NETWORKS[m[1]!.trim()]!;
    else if (NETWORKS[line] && line !== 'bitcoin') found = NETWORKS[line]!; // "testnet", "regtest", ... alone
    else if (line === 'mainnet') found = 'bitcoin';
  }
  return found;
}

export function resolveNetworkDir(given: string, flag = '--lightning-dir'): NetworkDir {
  const dir = resolve(given);
  if (!isDir(dir)) {
    throw new CliError(`${flag} ${dir} is not a directory (give the network directory, e.g. ~/.lightning/bitcoin)`);
  }
  if (NETWORK_DIR_MARKS.some((m) => existsSync(join(dir, m)))) return { dir, note: null };
  let subdirs: string[] = [];
  try {
    subdirs = readdirSync(dir).filter((n) => isDir(join(dir, n)));
  } catch {
    return { dir, note: null };
  }
  const withDb = subdirs.filter((n) => existsSync(join(dir, n, DB_NAME)));
  const networkNamed = subdirs.filter((n) => SUBDIRS.includes(n));
  const fromConfig = configNetwork(dir);
  if (fromConfig !== null && isDir(join(dir, fromConfig))) {
    return {
      dir: join(dir, fromConfig),
      note: `${dir} is lightningd's base directory; its config names the network ${fromConfig}, so using ${join(dir, fromConfig)}`,
    };
  }
  if (withDb.length === 1) {
    const chosen = join(dir, withDb[0]!);
    return { dir: chosen, note: `${dir} holds no ${DB_NAME}, but its network directory ${chosen} does: using ${chosen}` };
  }
  if (withDb.length > 1) {
    throw new CliError(
      `${dir} holds no ${DB_NAME} but several network directories do (${withDb.map((n) => join(dir, n)).join(', ')}); ` +
        `pass the one you mean as ${flag}`,
    );
  }
  if (networkNamed.length === 1) {
    const chosen = join(dir, networkNamed[0]!);
    return { dir: chosen, note: `${dir} looks like lightningd's base directory; using its network directory ${chosen}` };
  }
  if (networkNamed.length > 1) {
    throw new CliError(
      `${dir} looks like lightningd's base directory with several network directories ` +
        `(${networkNamed.map((n) => join(dir, n)).join(', ')}); pass the one you mean as ${flag}`,
    );
  }
  if (existsSync(join(dir, 'config'))) {
    // a base directory whose node never ran: its network directory does not exist yet
    const net = join(dir, fromConfig ?? 'bitcoin');
    throw new CliError(
      `${dir} looks like lightningd's base directory (it has a config but no ${DB_NAME}), and its network directory ` +
        `${net} does not exist yet${fromConfig ? '' : ' (bitcoin: the config names no other network)'}. Create it ('mkdir ${net}') ` +
        `and pass it as ${flag}`,
    );
  }
  return { dir, note: null };
}
