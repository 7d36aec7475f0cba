import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createBackup, destinationOf, encryptionNotYet, isClnvaultUrl, openWriter } from '../backends/open.js';
import { keyFromHsmSecret, keyFromKeyFile, writeKeyFile, type BackupKey } from '../crypto/keys.js';
import { keyKindCode, type KeyKindName } from '../crypto/records.js';
import { createPgBackup, isPostgresUrl, openPgWriter } from '../backends/postgres/index.js';
import { redact } from '../backends/postgres/url.js';
import { listSegmentFiles } from '../backends/file/segments.js';
import { lockPath, MAX_DESTINATIONS, readBackupLock, writeBackupLock, type BackupLock } from '../engine/backup-lock.js';
import type { BackupFormat } from '../engine/entries.js';
import { DB_NAME, snapshotDatabase } from '../engine/live-db.js';
import { nodeRunning } from '../engine/node-running.js';
import { CliError, EXIT, info, out } from './common.js';
import { giveTo, ownerOf } from './ownership.js';

/**
 * `clnvault init --lightning-dir DIR [--ack K] URL URL...`: every destination created (or, for a socket:
 * server, checked empty), one snapshot of the node's database sent to each, then backup.lock with
 * "destinations" and "ack". Nothing is left behind when one of them fails.
 */
export async function initMulti(
  urls: string[],
  netDir: string | null,
  ack: 'all' | number,
  opts: { format: BackupFormat; segmentBytes?: number; noRebaseline: boolean; encrypt?: boolean; keyFile?: string | null },
): Promise<number> {
  const keyFile = opts.keyFile ?? null;
  if (keyFile !== null && opts.encrypt !== true) throw new CliError('--key-file goes with --encrypt', EXIT.usage);
  if (netDir === null) {
    throw new CliError('several destinations need --lightning-dir: they are recorded in its backup.lock, which nothing else reads', EXIT.usage);
  }
  if (urls.length > MAX_DESTINATIONS) throw new CliError(`at most ${MAX_DESTINATIONS} destinations are supported, not ${urls.length}`, EXIT.usage);
  if (new Set(urls).size !== urls.length) throw new CliError('the same URL is given twice', EXIT.usage);
  if (ack !== 'all' && (ack < 1 || ack > urls.length)) {
    throw new CliError(`--ack must be "all" or a number from 1 to ${urls.length} (the number of destinations), not ${ack}`, EXIT.usage);
  }
  if (existsSync(lockPath(netDir))) {
    let where = '';
    try {
      where = ` (it points to ${readBackupLock(netDir).backend_url})`;
    } catch {
      // an unreadable lock is still a lock we must not overwrite silently
    }
    throw new CliError(`${lockPath(netDir)} already exists${where}; the node already has a backup. Remove that file first if you really want to start a new backup`);
  }
  if (opts.encrypt === true) {
    if (opts.format !== 'v2') throw new CliError('--format v1 cannot be encrypted: the reference format has no place for it; use --format v2', EXIT.usage);
    // every destination or none: one that would store the records in clear is refused, named
    for (const url of urls) {
      if (isPostgresUrl(url)) {
        throw new CliError(`${redact(url)}: init makes encrypted postgresql: backups for one destination only so far; with several, list file: destinations (docs/destinations.md)`, EXIT.usage);
      }
      if (destinationOf(url, netDir) !== 'file' && !isClnvaultUrl(url)) throw new CliError(encryptionNotYet(url).message, EXIT.usage);
    }
  }
  const dbFile = join(netDir, DB_NAME);
  const dbPath = existsSync(dbFile) ? dbFile : null;
  const running = await nodeRunning(netDir, dbFile);
  if (running) throw new CliError(`lightningd seems to be running (${running}); stop it before 'clnvault init'`);

  const undo: Array<() => void> = [];
  const files: string[] = [];
  let key: BackupKey | null = null;
  if (opts.encrypt === true) {
    // the key first: a node without hsm_secret fails before any destination is made
    const made = keyFile !== null && !existsSync(keyFile);
    try {
      key = keyFile !== null ? (made ? writeKeyFile(keyFile) : keyFromKeyFile(keyFile)) : keyFromHsmSecret(join(netDir, 'hsm_secret'));
    } catch (e) {
      throw new CliError(`cannot get the encryption key: ${(e as Error).message}. Nothing was created; see docs/keys.md (or give --key-file PATH)`);
    }
    if (made) undo.push(() => rmSync(keyFile, { force: true }));
    info(`Encrypting every destination with ${keyFile !== null ? `the key file ${keyFile}${made ? ' (created now: keep a copy away from the node)' : ''}` : "the node's seed (hsm_secret)"}, key fingerprint ${key.fingerprint}`);
  }
  const enc = key ? { kind: keyKindCode(key.kind as KeyKindName), fingerprint: Buffer.from(key.fingerprint, 'hex') } : null;
  try {
    for (const url of urls) {
      if (isPostgresUrl(url)) {
        const made = createPgBackup(url);
        undo.push(made.undo);
        info(`Created the PostgreSQL backup ${made.target.display}`);
      } else if (destinationOf(url, netDir) === 'socket') {
        // with a key, the server's empty backup becomes an encrypted one (clnvault:// only: checked above)
        const w = openWriter(url, netDir, { log: (_l, m) => out(m), ...(key ? { key, encryptEmpty: true } : {}) });
        try {
          if (dbPath !== null && !w.isEmpty()) {
            throw new CliError(`the server's backup at ${url} is not empty (version ${w.head()}); create a fresh one on the server and serve that`);
          }
          info(`Connected to ${url}: the server's backup is at version ${w.head()}`);
        } finally {
          w.close();
        }
      } else {
        const path = createBackup(url, netDir, opts.format, enc);
        files.push(path);
        undo.push(() => {
          rmSync(path, { force: true });
          for (const f of listSegmentFiles(path)) rmSync(f.path, { force: true });
          rmSync(`${path}.writer`, { force: true });
        });
        info(`Created ${path} (format ${opts.format})`);
      }
    }
    if (dbPath !== null) {
      info(`Found an existing database at ${dbPath}, sending one snapshot of it to each destination`);
      const tmp = join(netDir, `.clnvault-init-${process.pid}.sqlite3`);
      try {
        const version = await snapshotDatabase(dbPath, tmp);
        for (const url of urls) {
          const w = isPostgresUrl(url)
            ? openPgWriter(url, netDir)
            : openWriter(url, netDir, { key, ...(opts.segmentBytes === undefined ? {} : { segmentBytes: opts.segmentBytes }) });
          try {
            w.appendSnapshotFile(version, tmp);
          } finally {
            w.close();
          }
          info(`Written the snapshot (data_version ${version}) to ${redact(url)}`);
        }
      } finally {
        rmSync(tmp, { force: true });
        rmSync(`${tmp}-journal`, { force: true });
      }
    }
    for (const f of files) rmSync(`${f}.writer`, { force: true });
    const lock: BackupLock = { backend_url: urls[0]!, destinations: urls, ack };
    if (opts.noRebaseline) lock.rebaseline = false;
    if (opts.segmentBytes !== undefined) lock.segment_bytes = opts.segmentBytes;
    if (key) lock.encrypt = keyFile !== null ? { key_file: keyFile } : { key: 'hsm_secret' };
    writeBackupLock(netDir, lock);
  } catch (e) {
    for (const u of undo.reverse()) u();
    throw e;
  }
  const owner = ownerOf(netDir);
  const given = giveTo([...files.flatMap((f) => [f, ...listSegmentFiles(f).map((s) => s.path)]), lockPath(netDir)], owner);
  if (given.hint) (given.done ? info : out)(given.done ? given.hint : `WARNING: ${given.hint}`);
  out(`Wrote ${lockPath(netDir)}`);
  out(
    `Initialized ${urls.length} destinations (${urls.map(redact).join(', ')}); each write is acknowledged once ` +
      `${ack === 'all' ? 'all of them' : `${ack} of them`} hold it. You can now start Core Lightning`,
  );
  return EXIT.ok;
}
