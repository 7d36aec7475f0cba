import { rmSync } from 'node:fs';
import { join } from 'node:path';
import type { BackupKey } from '../crypto/keys.js';
import { openWriter } from '../backends/open.js';
import { lockPath, writeBackupLock, type BackupLock } from '../engine/backup-lock.js';
import { snapshotDatabase } from '../engine/live-db.js';
import { CliError, EXIT, out } from './common.js';

/**
 * `clnvault init` for a socket: or clnvault:// URL: the backup file lives on the server; here only the
 * snapshot is sent and backup.lock written. With a key (clnvault:// only), the server's empty backup is
 * made an encrypted one under it and every record is sealed here (docs/encryption.md).
 */
export async function initRemote(
  url: string,
  netDir: string | null,
  dbPath: string | null,
  noRebaseline: boolean,
  enc: { key: BackupKey; keyFile: string | null; keyMade: boolean } | null,
): Promise<number> {
  const writer = openWriter(url, netDir ?? process.cwd(), { log: (_l, m) => out(m), ...(enc ? { key: enc.key, encryptEmpty: true } : {}) });
  try {
    out(`Connected to ${url}: the server's backup is at version ${writer.head()} (${writer.stats().entries} entries)`);
    if (enc) {
      const source = enc.keyFile !== null ? `the key file ${enc.keyFile}${enc.keyMade ? ' (created now: keep a copy away from the node, the backup cannot be restored without it)' : ''}` : "the node's seed (hsm_secret)";
      out(`Encrypting with ${source}, key fingerprint ${enc.key.fingerprint}: the server stores only ciphertext`);
    }
    if (dbPath !== null) {
      if (!writer.isEmpty()) {
        throw new CliError(
          `the server's backup at ${url} is not empty (version ${writer.head()}); create a fresh one on the server ('clnvault init file:///path/new.bkp' and serve that) before initializing a node with an existing database`,
        );
      }
      out(`Found an existing database at ${dbPath}, initializing the backup with a snapshot`);
      const tmp = join(netDir!, `.clnvault-init-${process.pid}.sqlite3`);
      try {
        const version = await snapshotDatabase(dbPath, tmp);
        writer.appendSnapshotFile(version, tmp);
        out(`Successfully written initial snapshot (data_version ${version}) to ${url}`);
      } finally {
        rmSync(tmp, { force: true });
        rmSync(`${tmp}-journal`, { force: true });
      }
    } else if (netDir !== null) {
      out('Database does not exist yet');
    }
  } finally {
    writer.close();
  }
  if (netDir !== null) {
    const lock: BackupLock = noRebaseline ? { backend_url: url, rebaseline: false } : { backend_url: url };
    if (enc) lock.encrypt = enc.keyFile !== null ? { key_file: enc.keyFile } : { key: 'hsm_secret' };
    writeBackupLock(netDir, lock);
    out(`Wrote ${lockPath(netDir)}`);
  }
  out(`Initialized backup backend ${url}, you can now start Core Lightning`);
  return EXIT.ok;
}
