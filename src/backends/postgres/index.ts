import type { KeyLike } from '../../crypto/backup-crypt.js';
import { PgBridge } from './bridge.js';
import { PgReader } from './reader.js';
import { remoteTimeoutMs } from './timeout.js';
import { parsePgUrl, type PgTarget } from './url.js';
import { PgWriter } from './writer.js';

/** The PostgreSQL destination as open.ts and the CLI see it. */
export { isPostgresUrl, parsePgUrl } from './url.js';
export { PgReader } from './reader.js';
export { PgWriter } from './writer.js';

export function openPgWriter(url: string, netDir: string | null, key: KeyLike | null = null, log?: (level: 'warn' | 'info', message: string) => void): PgWriter {
  return PgWriter.open(parsePgUrl(url), remoteTimeoutMs(netDir).ms, key, log);
}

export function openPgReader(url: string, netDir: string | null = null): PgReader {
  return PgReader.open(parsePgUrl(url), remoteTimeoutMs(netDir).ms);
}

/**
 * Creates the schema when missing (or migrates it) and registers the backup, owned by the connecting
 * role. Returns a function that removes it again, for init's "nothing left behind on failure".
 */
export function createPgBackup(
  url: string,
  enc: { kind: number; fingerprint: string } | null = null,
): { target: PgTarget; migrated: { from: number; to: number } | null; undo: () => void } {
  const target = parsePgUrl(url);
  const bridge = new PgBridge(target, remoteTimeoutMs(null).ms, `clnvault init ${target.backup}`);
  try {
    const r = bridge.call<{ migrated: { from: number; to: number } | null }>({ op: 'create', enc });
    return {
      target,
      migrated: r.migrated,
      undo: () => {
        const b = new PgBridge(target, remoteTimeoutMs(null).ms, `clnvault init ${target.backup}`);
        try {
          b.call({ op: 'drop' });
        } finally {
          b.close();
        }
      },
    };
  } finally {
    bridge.close();
  }
}

/** Creates or migrates clnvault's tables only (the administrator's one-time step), without a backup. */
export function migratePgSchema(url: string): { from: number; to: number } | null {
  const target = parsePgUrl(url);
  const bridge = new PgBridge(target, remoteTimeoutMs(null).ms, 'clnvault init --schema-only');
  try {
    return bridge.call<{ from: number; to: number } | null>({ op: 'migrate' });
  } finally {
    bridge.close();
  }
}
