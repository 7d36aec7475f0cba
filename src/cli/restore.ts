import { existsSync } from 'node:fs';
import { dirname } from 'node:path';
import { backupPath, isRemoteUrl, openReader, openReaderAt } from '../backends/open.js';
import { redact } from '../backends/postgres/url.js';
import { nodeRunning, writerLockHeld } from '../engine/node-running.js';
import { resolveDestination, restoreBackup } from '../restore/restore.js';
import { CliError, COMMON_OPTIONS_HELP, EXIT, info, out, parse, parseVersionArg, printJson, progressReporter, type Command } from './common.js';
import { suspectAdvice } from './verify.js';
import { pathToFileURL } from 'node:url';
import { readBackupLock } from '../engine/backup-lock.js';
import { resolveNetworkDir } from './lightning-dir.js';
import { pickDestination, probeDestinations } from './destinations.js';
import { KEY_OPTIONS, KEY_OPTIONS_HELP, keyFromOptions } from './key-options.js';
import { describeSetting, keyFromLock } from '../crypto/lock-key.js';
import type { BackupKey } from '../crypto/keys.js';
import { authJson, newestLine, unlockAndAuthenticate, type AuthResult } from '../crypto/authenticate.js';

const help = `Usage: clnvault restore [--force [--allow-older]] [--to-version N] [--stop-at-damage] [--json]
                        [--hsm-secret PATH | --mnemonic-file PATH | --key-file PATH] URL DEST
       clnvault restore --lightning-dir DIR [--destination URL|INDEX] [options] DEST

Rebuilds lightningd.sqlite3 from the backup at URL. DEST is a file, or a directory
(then DEST/lightningd.sqlite3). The database is built beside DEST, checked
(integrity_check, foreign_key_check, data_version == the backup's head), fsynced and
only then renamed into place, so DEST never holds a partial database.

URL is a file: URL (file:///mnt/usb/clnvault.bkp) or a plain path. The backup's format
(clnvault v2, or the reference plugin's v1 .bkp/.dbak files) is detected from its
content. Stale entries that the reference plugin's rewind bug left in v1 files are
recognised and skipped.

With --lightning-dir instead of URL, the backup is one of DIR/backup.lock's
destinations: the most advanced one that can be read (several destinations,
docs/destinations.md), or the one --destination names (its URL as in backup.lock,
or its index from 0). Restore prints which one it used and why.

Restore always refuses while lightningd runs in DEST's directory (its lightning-rpc
answers, or a process holds the database open), and --force also while a plugin holds
the backup's writer lock (a running node writes to it): a database replaced under a
running node is overwritten or, worse, run on stale. A restore into a new file from a
backup in use is allowed (a drill, as verify does).

Options:
  --force          replace an existing DEST. The old file is kept beside it as
                   DEST.replaced-<time> (with its -journal, if any). Refuses when DEST's
                   data_version is newer than the restored one
  --allow-older    with --force: replace DEST even when it is newer than the backup (or its
                   data_version cannot be read). A node started on an older database
                   broadcasts revoked states: only when DEST is known to be wrong
  --to-version N   stop at data_version N (point in time), if the backup still holds that
                   history; says which versions are available when it does not
  --stop-at-damage a damaged (v2: checksum-failing) record normally makes restore refuse,
                   and so does a last record that is whole but fails its checksum (a
                   crash while writing it, or damage: restore cannot tell which);
                   with this, restore stops just before the first damaged record and
                   builds the database as of the last good version (it says which).
                   Only for when nothing better exists: that database lacks every
                   transaction after the damage, so never start a node on it while a
                   better copy (the node's own database, another backup) exists
  --lightning-dir DIR  take the backup from DIR/backup.lock (see above); an encrypted
                   backup's key too (its "encrypt" setting), unless a key option is given
  --destination URL|INDEX  with --lightning-dir: restore from this destination
  --json           print the result as JSON on stdout
${KEY_OPTIONS_HELP}
                   The chain of an encrypted backup's records is checked first, every
                   record applied is authenticated as it is read, and a failure leaves
                   DEST untouched (the offset and the last authenticated version are
                   named); restore then prints the
                   newest authenticated version and when it was written (a stale copy,
                   e.g. served by a hostile server, shows an old time)
${COMMON_OPTIONS_HELP}
  -h, --help       this help

Exit codes: 0 restored and checked, 1 failed or refused (DEST untouched), 2 bad usage.

Example (node stopped, its database lost):
  clnvault restore file:///mnt/usb/clnvault.bkp ~/.lightning/bitcoin/`;

export const restoreCommand: Command = {
  name: 'restore',
  summary: 'rebuild lightningd.sqlite3 from a backup',
  help,
  async run(argv) {
    const { values, positionals } = parse('restore', argv, {
      force: { type: 'boolean' },
      'allow-older': { type: 'boolean' },
      'to-version': { type: 'string' },
      json: { type: 'boolean' },
      'stop-at-damage': { type: 'boolean' },
      'lightning-dir': { type: 'string' },
      destination: { type: 'string' },
      ...KEY_OPTIONS,
    }, { min: 1, max: 2, names: 'a backup URL and a destination (or only the destination, with --lightning-dir)' });
    if (values.help) {
      out(help);
      return EXIT.ok;
    }
    if (values['allow-older'] && !values.force) {
      throw new CliError('--allow-older only makes sense with --force (it allows replacing a newer database)', EXIT.usage);
    }
    let url: string;
    let destArg: string;
    let chosen: string | null = null;
    /** with --lightning-dir: the key backup.lock names, used when no key option is given */
    let lockKey: ((backupFile: string | null) => BackupKey) | null = null;
    if (typeof values['lightning-dir'] === 'string') {
      if (positionals.length !== 1) throw new CliError('with --lightning-dir give only DEST (the backup comes from backup.lock)', EXIT.usage);
      const netDir = resolveNetworkDir(values['lightning-dir']).dir;
      const lock = readBackupLock(netDir);
      if (lock.encrypt) {
        const enc = lock.encrypt;
        lockKey = (backupFile) => {
          try {
            return keyFromLock(netDir, enc, backupFile);
          } catch (e) {
            throw new CliError(`cannot read the key backup.lock names (${describeSetting(enc)}): ${(e as Error).message}; give the key with --hsm-secret, --mnemonic-file, --key-file or --passphrase-file`);
          }
        };
      }
      const pick = pickDestination(probeDestinations(lock, netDir), values.destination as string | undefined);
      destArg = positionals[0]!;
      // relative file: URLs in backup.lock are relative to the network directory
      url = isRemoteUrl(pick.probe.rawUrl) ? pick.probe.rawUrl : pathToFileURL(backupPath(pick.probe.rawUrl, netDir)).href;
      chosen = `restoring from destination [${pick.probe.index}] ${pick.probe.url}: ${pick.why}`;
    } else {
      if (values.destination !== undefined) throw new CliError('--destination needs --lightning-dir (it picks one of backup.lock\'s destinations)', EXIT.usage);
      if (positionals.length !== 2) throw new CliError("expected a backup URL and a destination; see 'clnvault restore --help'", EXIT.usage);
      [url, destArg] = positionals as [string, string];
    }
    if (chosen !== null && !values.json) info(chosen);
    const toVersion = parseVersionArg('--to-version', values['to-version'] as string | undefined);
    const dest = resolveDestination(destArg);
    // no local file: a PostgreSQL or socket:/clnvault:// backup
    const pg = isRemoteUrl(url);
    // a postgresql: backup has no file: it is checked when it is opened
    const file = pg ? redact(url) : backupPath(url, process.cwd());
    if (!pg && !existsSync(file)) {
      // not "create it with clnvault init": a new, empty backup is never what a restore needs
      throw new CliError(
        `backup file ${file} does not exist (is the backup disk mounted?); check the URL ${JSON.stringify(url)}. Nothing was written to ${dest}`,
      );
    }
    const key = keyFromOptions(values, process.env, pg ? null : file) ?? lockKey?.(pg ? null : file) ?? null;
    const running = await nodeRunning(dirname(dest), dest);
    if (running) {
      throw new CliError(`lightningd seems to be running (${running}); stop it before restoring into ${dest}. Nothing was written`);
    }
    // Replacing a database from a backup a plugin is writing means that node is running on it (perhaps on
    // another machine sharing the disk). A copy into a new file stays allowed: that is what a drill does.
    if (values.force && !pg && writerLockHeld(file)) {
      throw new CliError(
        `the backup ${file} is held by a writer (the clnvault plugin of a running lightningd, or 'clnvault compact'): ` +
          `a node is still using it, and --force would replace a database under it. Stop that lightningd first; nothing ` +
          `was written to ${dest}`,
      );
    }
    // --to-version may need a pre-compaction copy of the backup (history)
    const reader = toVersion === undefined ? openReader(url, process.cwd()) : openReaderAt(url, process.cwd(), toVersion);
    if (values['stop-at-damage'] !== true) {
      const suspect = reader.problems().find((p) => p.suspect === true);
      if (suspect !== undefined) {
        reader.close();
        throw new CliError(`${suspectAdvice(suspect)}. Nothing was written to ${dest}`);
      }
    }
    let auth: AuthResult | null;
    try {
      // the chain here; every record the restore applies is decrypted and authenticated as it is read
      auth = unlockAndAuthenticate(reader, key, 'chain');
    } catch (e) {
      reader.close();
      throw new CliError(`${(e as Error).message}. Nothing was written to ${dest}`);
    }
    if (auth?.problem) {
      reader.close();
      throw new CliError(`${reader.location}: ${auth.problem.message}. Nothing was written to ${dest}`);
    }
    const progress = progressReporter('restoring', 'entries');
    try {
      const r = restoreBackup(reader, dest, {
        force: values.force === true,
        ...(values['allow-older'] === true ? { allowOlder: true } : {}),
        ...(toVersion !== undefined ? { toVersion } : {}),
        ...(values['stop-at-damage'] === true ? { stopAtDamage: true } : {}),
        onProgress: (p) => progress.update(p.applied, p.total),
      });
      progress.finish();
      const message =
        `Restored ${r.path} at data_version ${r.head}: ${r.applied} entries` +
        (r.snapshotVersion !== null ? ` (from the snapshot at version ${r.snapshotVersion})` : '') +
        (r.dropped > 0 ? `, ${r.dropped} stale entries skipped` : '') +
        ` in ${(r.elapsedMs / 1000).toFixed(1)}s; integrity_check ok, no foreign key violations; from the backup ${reader.location}`;
      const replacedLine = r.replaced
        ? `The database it replaced (data_version ${r.replaced.dataVersion ?? `unknown: ${r.replaced.readError}`}) is kept as ${r.replaced.keptAs}`
        : null;
      if (values.json) {
        printJson({ ok: true, result: 'restored', message, backup: reader.location, ...(chosen !== null ? { chosen } : {}), ...r, ...(auth ? { authenticated: authJson(auth) } : {}) });
      } else {
        info(message);
        if (auth) out(`Encrypted backup: ${newestLine(auth)} (${auth.records} records authenticated). If that is older than you expect, this copy is stale`);
        if (replacedLine) out(replacedLine);
        for (const c of r.cut) {
          // a crash leaves exactly this, but so does a copy cut short: never leave it unsaid
          out(
            `NOTE: left out ${c.bytes !== null ? `${c.bytes} byte(s) ` : ''}at offset ${c.offset}, the end of the backup (${c.message}); ` +
              `restored up to data_version ${r.head}, its newest complete entry. After a crash this is the unacknowledged ` +
              `last write (normal); if this backup is a copy that was cut short, newer transactions are missing: restore from a complete copy`,
          );
        }
        for (const d of r.damage ?? []) {
          if (d.offset === r.stoppedAtDamage?.offset) continue;
          out(`WARNING: the backup is damaged at offset ${d.offset} (${d.message}); restored without it: re-create the backup with 'clnvault init'`);
        }
        if (r.stoppedAtDamage) {
          out(
            `WARNING: stopped before damage at offset ${r.stoppedAtDamage.offset} (${r.stoppedAtDamage.message}): ` +
              `this database is as of version ${r.head}, NOT the newest state the backup once held`,
          );
        }
      }
    } finally {
      progress.finish();
      reader.close();
    }
    return EXIT.ok;
  },
};
