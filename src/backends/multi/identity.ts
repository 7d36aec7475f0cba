import type { BackupWriter } from '../backend.js';
import { v2BackupId } from '../file/backup-id.js';
import { backupPath, isRemoteUrl } from '../open.js';
import { isPostgresUrl, openPgReader } from '../postgres/index.js';

/**
 * The backup id of a file destination (hex), null for a format without one (v1, a remote URL) or a file
 * that cannot be read (its opening says why).
 */
export function fileIdentity(url: string, cwd: string): string | null {
  if (isRemoteUrl(url)) return null;
  return v2BackupId(backupPath(url, cwd))?.toString('hex') ?? null;
}

/**
 * The backup id of any destination, `w` its writer just opened: a v2 file's header id, a PostgreSQL
 * backup's row uid (read on a connection of its own: the writer's is not reshaped for it), what a
 * clnvault:// server reports (its stored v2 file's id). Null where there is none: a v1 file, a socket:
 * reference server, an older clnvault server, a PostgreSQL backup made before schema version 3. Throws
 * when PostgreSQL cannot be asked (the caller retries as for a failed open).
 */
export function destinationIdentity(url: string, cwd: string, w: BackupWriter): string | null {
  if (isPostgresUrl(url)) {
    const r = openPgReader(url, cwd);
    try {
      return r.uid;
    } finally {
      r.close();
    }
  }
  if (isRemoteUrl(url)) return w.backupId?.() ?? null;
  return fileIdentity(url, cwd);
}


/**
 * What a destination whose recorded backup id is `known` and which now shows `now` is: the same backup,
 * one re-created empty (it holds nothing to distrust: re-seeded, its new id recorded), or REPLACED.
 */
export function compareIdentity(known: string | undefined, now: string | null, empty: boolean): 'same' | 'recreated' | 'replaced' {
  if (known === undefined || now === null || known === now) return 'same';
  return empty ? 'recreated' : 'replaced';
}

export function replacedMessage(known: string, now: string): string {
  return (
    `REPLACED: its backup id is ${now}, but the one recorded in clnvault-destinations.json when it was first seen is ${known}: ` +
    `it is another backup (another node's, or a copy from elsewhere), whatever versions it holds`
  );
}
