import { existsSync, rmSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { keyFromHsmSecret, keyFromKeyFile, writeKeyFile, type BackupKey } from '../crypto/keys.js';
import { keyKindCode, type KeyKindName } from '../crypto/records.js';
import { newPassphraseBackup, readPassphraseFile } from '../crypto/passphrase-backup.js';
import type { FileEncryption } from '../backends/file/v2/codec.js';
import { backupPath, createBackup, destinationOf, encryptionNotYet, isClnvaultUrl, openWriter } from '../backends/open.js';
import { initRemote } from './init-remote.js';
import { lockPath, readBackupLock, writeBackupLock, type BackupLock } from '../engine/backup-lock.js';
import { listSegmentFiles, parseSegmentBytes } from '../backends/file/segments.js';
import type { BackupFormat } from '../engine/entries.js';
import { DB_NAME, snapshotDatabase } from '../engine/live-db.js';
import { nodeRunning } from '../engine/node-running.js';
import { createPgBackup, isPostgresUrl, migratePgSchema, openPgWriter } from '../backends/postgres/index.js';
import { redact } from '../backends/postgres/url.js';
import { tmpdir } from 'node:os';
import { cliUrl } from '../backends/url.js';
import { CliError, COMMON_OPTIONS_HELP, EXIT, info, out, parse, type Command } from './common.js';
import { resolveNetworkDir } from './lightning-dir.js';
import { initMulti } from './init-multi.js';
import { backupAccessProblem, giveTo, ownerOf, type Owner } from './ownership.js';

const help = `Usage: clnvault init [--lightning-dir DIR] [--format v1|v2] [--segment-bytes N] [--no-rebaseline] [--schema-only]
                     [--encrypt [--key-file PATH | --passphrase-file PATH]] URL
       clnvault init --lightning-dir DIR [--ack all|K] [--encrypt [--key-file PATH]] URL URL...

Creates a new backup at URL. With --lightning-dir (the network directory, where
lightningd.sqlite3 lives, e.g. ~/.lightning/bitcoin) it also writes DIR/backup.lock,
which tells the plugin where to write, and, if the node already has a database,
stores a consistent snapshot of it (SQLite's online backup API) as the backup's start.
lightningd's base directory (~/.lightning) is accepted too: its one network directory
is used (init says which); with several, init refuses and lists them. Without
--lightning-dir no backup.lock is written (the last line says so).

The files init creates belong to the owner of the network directory (lightningd runs
as that user): run as root, init gives them to that user; otherwise it prints the
chown to run. It warns when the backup is on the same filesystem as the database (it
would die with the disk it should protect).

The node must be stopped: init refuses when lightningd answers on DIR/lightning-rpc or
any process holds DIR/lightningd.sqlite3 open. Nothing is left behind on failure.

URL forms: file:///abs/path/backup.bkp, a plain path, or file:name.bkp (relative to
DIR with --lightning-dir, as the plugin reads it, else to the current directory).
file://host/path (two slashes) is refused: "host" would not be part of the path. The
backup's directory must exist (mount the backup disk first).
postgresql://[user[:password]@]host[:port]/dbname?backup=NAME (or postgres://):
creates clnvault's tables when missing and the backup NAME, owned by the
connecting role (see docs/postgresql.md); --format and --segment-bytes do not apply.
socket:HOST:PORT[?proxy=socks5:PHOST:PPORT] names a backup on a server (clnvault
server or backup-cli server, see docs/remote.md): the server's file is created there;
init here checks the server answers, sends the snapshot and writes backup.lock.

Several URLs (up to 8): every destination is created (a socket: server's backup
must be empty), one snapshot of the node's database is sent to each, and backup.lock
lists them as "destinations" with "ack" (docs/destinations.md): the plugin lets
lightningd commit a write once K of them hold it (default all).

Options:
  --lightning-dir DIR  network directory of the node (writes DIR/backup.lock)
  --ack all|K          several URLs: how many destinations must hold each write (default all)
  --format v1|v2       v2 (default): clnvault's checksummed format. v1: the reference
                       plugin's format, readable by the Python backup plugin too
  --segment-bytes N    v2: split the backup into files of at most N bytes (default 3758096384,
                       under FAT32's 4 GiB limit); recorded in backup.lock for the plugin
  --schema-only        postgresql: create or migrate clnvault's tables only (the database
                       administrator's one-time step; the backup= name is not used)
  --no-rebaseline      record in backup.lock that the plugin must refuse to start when the
                       node's DB is ahead of the backup instead of snapshotting it
  --encrypt            encrypt every record (AES-256-GCM, docs/encryption.md). The key is
                       derived from the node's seed (DIR/hsm_secret, so --lightning-dir is
                       needed) unless --key-file is given. file: URLs in format v2 and
                       postgresql: URLs (the database holds only ciphertext); refused for
                       socket: (the reference protocol sends statements) and clnvault://
  --key-file PATH      with --encrypt: use this key file (made with 'clnvault keygen PATH';
                       created here when it does not exist). Keep a copy away from the node:
                       without it the backup cannot be restored
  --passphrase-file PATH  with --encrypt: derive the key from the passphrase in PATH (one
                       line, 8 characters at least) through scrypt (64 MiB, ~0.2 s; the salt
                       is in the backup's header). backup.lock names PATH: the plugin reads it
                       at every start. A restore needs only the passphrase. file: URLs only
${COMMON_OPTIONS_HELP}
  -h, --help           this help

Exit codes: 0 created, 1 refused or failed (nothing left behind), 2 bad usage.

Example:
  clnvault init --lightning-dir ~/.lightning/bitcoin file:///mnt/usb/clnvault.bkp
  then add to the lightningd config:  important-plugin=/path/to/clnvault-plugin`;

export const initCommand: Command = {
  name: 'init',
  summary: 'create a backup (and backup.lock), snapshotting an existing node database',
  help,
  async run(argv) {
    const { values, positionals } = parse('init', argv, {
      'lightning-dir': { type: 'string' },
      format: { type: 'string' },
      'no-rebaseline': { type: 'boolean' },
      'segment-bytes': { type: 'string' },
      'schema-only': { type: 'boolean' },
      ack: { type: 'string' },
      encrypt: { type: 'boolean' },
      'key-file': { type: 'string' },
      'passphrase-file': { type: 'string' },
    }, { min: 1, max: 8, names: 'one backup URL (or several, with --lightning-dir)' });
    if (values.help) {
      out(help);
      return EXIT.ok;
    }
    const url = cliUrl(positionals[0]!, process.cwd());
    const format = ((values.format as string | undefined) ?? 'v2') as BackupFormat;
    if (format !== 'v1' && format !== 'v2') throw new CliError(`--format must be v1 or v2, not ${JSON.stringify(values.format)}`, EXIT.usage);
    let segmentBytes: number | undefined;
    if (values['segment-bytes'] !== undefined) {
      if (format !== 'v2') throw new CliError('--segment-bytes needs --format v2: a reference (v1) backup is always one file', EXIT.usage);
      try {
        segmentBytes = parseSegmentBytes(String(values['segment-bytes']));
      } catch (e) {
        throw new CliError((e as Error).message, EXIT.usage);
      }
    }
    if (positionals.length > 1 || values.ack !== undefined) {
      const a = values.ack === undefined || values.ack === 'all' ? 'all' : /^\d+$/.test(String(values.ack)) ? Number(values.ack) : NaN;
      if (Number.isNaN(a)) throw new CliError(`--ack must be "all" or a whole number, not ${JSON.stringify(values.ack)}`, EXIT.usage);
      if (values['passphrase-file'] !== undefined) {
        throw new CliError('--passphrase-file is for one file: destination (its key comes from that backup\'s own salt); with several destinations use --key-file PATH or the node seed', EXIT.usage);
      }
      const netDir = typeof values['lightning-dir'] === 'string' ? resolveNetworkDir(values['lightning-dir']).dir : null;
      return initMulti(
        positionals.map((p) => cliUrl(p, process.cwd())),
        netDir,
        a as 'all' | number,
        {
          format,
          ...(segmentBytes !== undefined ? { segmentBytes } : {}),
          noRebaseline: values['no-rebaseline'] === true,
          encrypt: values.encrypt === true,
          keyFile: typeof values['key-file'] === 'string' ? resolve(process.cwd(), values['key-file']) : null,
        },
      );
    }
    const pg = isPostgresUrl(url);
    if (values['schema-only']) {
      if (!pg) throw new CliError('--schema-only is for postgresql: URLs (it creates clnvault\'s tables)', EXIT.usage);
      const m = migratePgSchema(url);
      out(m === null ? 'clnvault\'s tables are up to date' : `Created clnvault's tables (schema version ${m.from} -> ${m.to})`);
      return EXIT.ok;
    }
    if (pg && (values.format !== undefined || segmentBytes !== undefined)) {
      throw new CliError('--format and --segment-bytes are for file backups; a postgresql: backup has its own layout', EXIT.usage);
    }
    const cwd = process.cwd();
    let netDir: string | null = null;
    if (typeof values['lightning-dir'] === 'string') {
      const nd = resolveNetworkDir(values['lightning-dir']);
      netDir = nd.dir;
      if (nd.note) out(nd.note);
    }
    const encrypt = values.encrypt === true;
    const keyFile = typeof values['key-file'] === 'string' ? resolve(cwd, values['key-file']) : null;
    if (keyFile !== null && !encrypt) throw new CliError('--key-file goes with --encrypt', EXIT.usage);
    const passFile = typeof values['passphrase-file'] === 'string' ? resolve(cwd, values['passphrase-file']) : null;
    if (passFile !== null && !encrypt) throw new CliError('--passphrase-file goes with --encrypt', EXIT.usage);
    if (passFile !== null && keyFile !== null) throw new CliError('give one key: --key-file and --passphrase-file were both given', EXIT.usage);
    if (values['passphrase-file'] === '-') {
      throw new CliError('--passphrase-file needs a file (the plugin reads the passphrase from it at every start), not standard input', EXIT.usage);
    }
    if (encrypt) {
      if (format !== 'v2') throw new CliError('--format v1 cannot be encrypted: the reference format has no place for it; use --format v2', EXIT.usage);
      if (passFile !== null && (pg || destinationOf(url, netDir ?? cwd) !== 'file')) {
        throw new CliError('--passphrase-file is for file: backups (the salt is kept in the backup file); use --key-file for this destination', EXIT.usage);
      }
      if (!pg && destinationOf(url, netDir ?? cwd) !== 'file' && !isClnvaultUrl(url)) throw new CliError(encryptionNotYet(url).message, EXIT.usage);
      if (keyFile === null && passFile === null && netDir === null) {
        throw new CliError("--encrypt derives the key from the node's hsm_secret, which needs --lightning-dir DIR; or give --key-file PATH", EXIT.usage);
      }
    }

    let dbPath: string | null = null;
    if (netDir !== null) {
      if (existsSync(lockPath(netDir))) {
        let where = '';
        try {
          where = ` (it points to ${readBackupLock(netDir).backend_url})`;
        } catch {
          // an unreadable lock is still a lock we must not overwrite silently
        }
        throw new CliError(
          `${lockPath(netDir)} already exists${where}; the node already has a backup. Remove that file first if you ` +
            `really want to start a new backup`,
        );
      }
      const candidate = join(netDir, DB_NAME);
      if (existsSync(candidate)) dbPath = candidate;
      const running = await nodeRunning(netDir, candidate);
      if (running) throw new CliError(`lightningd seems to be running (${running}); stop it before 'clnvault init'`);
    }

    // backup.lock keeps the URL as given and the plugin resolves a relative one against the network
    // directory, so init must create the file there too, or the lock would name another file.
    const base = netDir ?? cwd;
    let undoPg: (() => void) | null = null;
    let path: string;
    let key: BackupKey | null = null;
    let keyMade = false;
    let enc: FileEncryption | null = null;
    /** a passphrase key's salt is the backup id, so the backup is created with the id the key was made for */
    let backupId: Buffer | undefined;
    // the key first: a node without hsm_secret (or one encrypted with --encrypted-hsm) fails before anything is made
    if (encrypt) {
      try {
        if (passFile !== null) {
          const made = newPassphraseBackup(readPassphraseFile(passFile));
          key = made.key;
          enc = made.enc;
          backupId = made.backupId;
        } else if (keyFile !== null) {
          keyMade = !existsSync(keyFile);
          key = keyMade ? writeKeyFile(keyFile) : keyFromKeyFile(keyFile);
        } else {
          key = keyFromHsmSecret(join(netDir!, 'hsm_secret'));
        }
      } catch (e) {
        // a brand-new node: lightningd's hsmd writes hsm_secret at its first start (docs/keys.md)
        const fresh = keyFile === null && passFile === null && !existsSync(join(netDir!, 'hsm_secret'));
        throw new CliError(
          `cannot get the encryption key: ${(e as Error).message}. Nothing was created` +
            (fresh
              ? `. A new node has no hsm_secret until lightningd first starts: start it once without the plugin (or create the seed with lightning-hsmtool), then run this again; or use --key-file PATH`
              : ''),
        );
      }
    }
    if (destinationOf(url, base) === 'socket') {
      try {
        return await initRemote(url, netDir, dbPath, values['no-rebaseline'] === true, key === null ? null : { key, keyFile, keyMade });
      } catch (e) {
        if (keyMade) rmSync(keyFile!, { force: true });
        throw e;
      }
    }
    if (pg) {
      let made: ReturnType<typeof createPgBackup>;
      try {
        made = createPgBackup(url, key ? { kind: keyKindCode(key.kind as KeyKindName), fingerprint: key.fingerprint } : null);
      } catch (e) {
        if (keyMade) rmSync(keyFile!, { force: true });
        throw e;
      }
      undoPg = made.undo;
      path = made.target.display;
      if (made.migrated) info(`Created clnvault's tables in the database (schema version ${made.migrated.from} -> ${made.migrated.to})`);
      if (key) info(`Encrypting with ${keyFile !== null ? `the key file ${keyFile}${keyMade ? ' (created now: keep a copy away from the node, the backup cannot be restored without it)' : ''}` : "the node's seed (hsm_secret)"}, key fingerprint ${key.fingerprint}; the database stores only ciphertext`);
    } else {
      try {
        enc ??= key ? { kind: keyKindCode(key.kind as KeyKindName), fingerprint: Buffer.from(key.fingerprint, 'hex') } : null;
        path = createBackup(url, base, format, enc, backupId);
      } catch (e) {
        if (keyMade) rmSync(keyFile!, { force: true });
        throw e;
      }
      const keySource =
        passFile !== null
          ? `the passphrase in ${passFile} (a restore needs only the passphrase; the plugin reads this file at every start)`
          : keyFile !== null
            ? `the key file ${keyFile}${keyMade ? ' (created now: keep a copy away from the node, the backup cannot be restored without it)' : ''}`
            : "the node's seed (hsm_secret)";
      if (key) info(`Encrypting with ${keySource}, key fingerprint ${key.fingerprint}`);
    }
    // files to give to the node's user (none for a postgresql: backup but backup.lock)
    const created: string[] = pg ? [] : [path];
    // the plugin runs as the node's user and reads the key file at every start
    if (keyMade) created.push(keyFile!);
    const owner: Owner | null = netDir !== null ? ownerOf(netDir) : null;
    try {
      if (dbPath !== null) {
        info(`Found an existing database at ${dbPath}, initializing the backup with a snapshot`);
        const tmp = join(pg ? tmpdir() : dirname(backupPath(url, base)), `.clnvault-init-${process.pid}.sqlite3`);
        try {
          let version: number;
          try {
            version = await snapshotDatabase(dbPath, tmp);
          } catch (e) {
            throw new CliError(
              `cannot snapshot ${dbPath} (${(e as Error).message}); check that it is lightningd's database, readable by ` +
                `this user. Nothing was created`,
            );
          }
          const writer = pg ? openPgWriter(url, null, key) : openWriter(url, base, { key, ...(segmentBytes === undefined ? {} : { segmentBytes }) });
          try {
            writer.appendSnapshotFile(version, tmp);
          } finally {
            writer.close();
          }
          info(`Successfully written initial snapshot (data_version ${version}) to ${path}`);
        } finally {
          rmSync(tmp, { force: true });
          rmSync(`${tmp}-journal`, { force: true });
        }
      } else if (netDir !== null) {
        info(`Database does not exist yet, created an empty backup file ${path}`);
      } else {
        info(`Created an empty backup file ${path}`);
      }
      if (!pg) for (const seg of listSegmentFiles(path)) created.push(seg.path);
      if (netDir !== null) {
        const lock: BackupLock = values['no-rebaseline'] ? { backend_url: url, rebaseline: false } : { backend_url: url };
        if (segmentBytes !== undefined) lock.segment_bytes = segmentBytes;
        if (key) lock.encrypt = passFile !== null ? { passphrase_file: passFile } : keyFile !== null ? { key_file: keyFile } : { key: 'hsm_secret' };
        writeBackupLock(netDir, lock);
        created.push(lockPath(netDir));
        info(`Wrote ${lockPath(netDir)}`);
      }
    } catch (e) {
      // Never leave a half-made backup: the user would later think it holds their node.
      if (netDir !== null && created.includes(lockPath(netDir))) rmSync(lockPath(netDir), { force: true });
      if (undoPg !== null) {
        undoPg();
        throw e;
      }
      rmSync(path, { force: true });
      if (keyMade) rmSync(keyFile!, { force: true });
      for (const f of listSegmentFiles(path)) rmSync(f.path, { force: true });
      rmSync(`${path}.writer`, { force: true });
      if (netDir !== null && created.includes(lockPath(netDir))) rmSync(lockPath(netDir), { force: true });
      throw e;
    }
    if (!pg) rmSync(`${path}.writer`, { force: true });

    let ready = true;
    if (owner !== null) {
      const given = giveTo(created, owner);
      if (given.hint) (given.done ? info : out)(given.done ? given.hint : `WARNING: ${given.hint}`);
      if (!given.done) ready = false;
      const access = given.done && !pg ? backupAccessProblem(path, owner) : null;
      if (access) {
        ready = false;
        out(`WARNING: ${access}: the plugin could not write the backup. Fix it (e.g. 'chown ${owner.uid}:${owner.gid} ${dirname(path)}') before starting lightningd`);
      }
      const same = !pg && sameFilesystem(path, netDir!);
      if (same) {
        out(
          `WARNING: the backup ${path} is on the same filesystem as the database (${netDir}): a failed disk takes both. ` +
            `Put it on another disk (a USB disk, another drive, a network mount)`,
        );
      }
    }
    if (netDir === null) {
      out(
        `Initialized backup ${path} (${pg ? 'PostgreSQL' : `format ${format}`}), but wrote no backup.lock (no --lightning-dir): the plugin does not ` +
          `know about this backup. Write {"backend_url": "${redact(url)}"} to <network dir>/backup.lock, or run init with --lightning-dir`,
      );
    } else if (ready) {
      out(`Initialized backup backend ${redact(url)} (${path}, ${pg ? 'PostgreSQL' : `format ${format}`}), you can now start Core Lightning`);
    } else {
      out(`Initialized backup backend ${redact(url)} (${path}, ${pg ? 'PostgreSQL' : `format ${format}`}); fix the WARNING above before starting Core Lightning`);
    }
    return EXIT.ok;
  },
};

/** st_dev of the backup's directory against the network directory's (the database lives there). */
function sameFilesystem(backup: string, netDir: string): boolean {
  try {
    return statSync(dirname(backup)).dev === statSync(netDir).dev;
  } catch {
    return false;
  }
}
