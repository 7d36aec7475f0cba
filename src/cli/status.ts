import Database from '../engine/sqlite.js';
import { existsSync, statSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { backupPath, isRemoteUrl, openReader } from '../backends/open.js';
import { redact } from '../backends/postgres/url.js';
import { lockPath, readBackupLock, type BackupLock } from '../engine/backup-lock.js';
import { encryptionOf } from '../crypto/authenticate.js';
import { describeKey } from '../crypto/backup-crypt.js';
import { describeSetting, keyFromLock } from '../crypto/lock-key.js';
import { DB_NAME } from '../engine/live-db.js';
import { nodeRunning } from '../engine/node-running.js';
import { serialDiff } from '../engine/versions.js';
import { CliError, COMMON_OPTIONS_HELP, EXIT, out, parse, printJson, type Command } from './common.js';
import { resolveNetworkDir } from './lightning-dir.js';
import { probeDestinations } from './destinations.js';
import { backupAccessProblem, canAccess, ownerOf } from './ownership.js';

const help = `Usage: clnvault status [--lightning-dir DIR] [--json]

Says in one line whether the node's database and its backup are in step, and what
to do if they are not. Reads DIR/backup.lock, the backup's head version and the
data_version of DIR/lightningd.sqlite3 (read-only; safe while lightningd runs).
With several destinations ("destinations" in backup.lock) each one is read and listed
with its head version (or why it cannot be read); the verdict is about the most
advanced readable one.

  in step            same version: nothing to do
  backup one ahead   lightningd stopped between backing up a transaction and committing
                     it (a crash, a power cut): fine, the plugin drops that entry at start
  node ahead         transactions were committed without the plugin (a clean stop, CLN
                     #5859): the plugin re-baselines at the next start (or refuses to, if
                     backup.lock says "rebaseline": false)
  node behind        the node's database lost committed transactions: do NOT start
                     lightningd on it; the line gives the restore command
  no access          the node's user (the owner of DIR, as lightningd runs) cannot read
                     backup.lock or read and write the backup: the line gives the chown

DIR may also be lightningd's base directory (~/.lightning): its one network directory
is used (status says which).

Options:
  --lightning-dir DIR  the node's network directory (default ~/.lightning/bitcoin)
  --json               print the result as JSON on stdout ("running" is true or false)
${COMMON_OPTIONS_HELP}
  -h, --help           this help

Exit codes: 0 in step, or will be at the next start without help; 1 action needed
(the line says which); 2 could not run (bad usage, unreadable files).
Running lightningd answers 'lightning-cli clnvault-status' with the plugin's view.

Example:
  clnvault status --lightning-dir ~/.lightning/bitcoin`;

type State =
  | 'in-step'
  | 'backup-ahead'
  | 'node-ahead'
  | 'node-ahead-refuse'
  | 'node-behind'
  | 'no-database'
  | 'no-lock'
  | 'no-backup'
  | 'backup-damaged'
  /** backup.lock and the backup disagree about encryption, or the key it names is not the backup's */
  | 'wrong-key'
  | 'no-access'
  | 'not-backing-up';

export interface StatusReport {
  state: State;
  ok: boolean;
  /** the one line */
  message: string;
  lightningDir: string;
  /** is lightningd using this directory (lightning-rpc answers, or a process holds the database open)? */
  running: boolean;
  /** what showed it running, null when not running */
  runningEvidence: string | null;
  lock: (BackupLock & { path: string }) | null;
  backup: {
    url: string;
    path: string;
    format: string;
    head: number;
    headKind: 'change' | 'snapshot' | null;
    entries: number;
    bytes: number;
    /** an encrypted backup: the key its header names (docs/encryption.md) */
    encryption?: { keyKind: string; keyFingerprint: string } | null;
  } | null;
  node: { db: string; dataVersion: number } | null;
  /** several destinations: each one's head; the verdict above is about the most advanced readable one */
  destinations?: Array<{ index: number; url: string; head: number | null; behind: number | null; error: string | null }>;
  ack?: 'all' | number;
}

export const statusCommand: Command = {
  name: 'status',
  summary: "say whether the node's database and its backup are in step",
  help,
  async run(argv) {
    const { values } = parse('status', argv, { 'lightning-dir': { type: 'string' }, json: { type: 'boolean' } }, { min: 0, max: 0, names: 'no arguments' });
    if (values.help) {
      out(help);
      return EXIT.ok;
    }
    const given = resolve(typeof values['lightning-dir'] === 'string' ? values['lightning-dir'] : join(homedir(), '.lightning', 'bitcoin'));
    if (!existsSync(given) || !statSync(given).isDirectory()) {
      throw new CliError(`${given} is not a directory; pass --lightning-dir with the node's network directory (e.g. ~/.lightning/bitcoin)`, EXIT.usage);
    }
    let dir: string;
    try {
      const nd = resolveNetworkDir(given);
      dir = nd.dir;
      if (nd.note && !values.json) out(nd.note);
    } catch (e) {
      throw new CliError((e as Error).message, EXIT.usage);
    }
    const r = await status(dir);
    if (values.json) printJson(r);
    else {
      out(r.message);
      if (r.backup) {
        const e = r.backup.encryption;
        out(`  backup  ${r.backup.path} (${r.backup.url}; ${r.backup.format}${e ? `, encrypted with a ${e.keyKind} key, fingerprint ${e.keyFingerprint}` : ''}, head version ${r.backup.head}, ${r.backup.entries} entries)`);
      }
      if (r.node) out(`  node    ${r.node.db} (data_version ${r.node.dataVersion}${r.running ? `; running: ${r.runningEvidence}` : '; lightningd not running'})`);
      for (const d of r.destinations ?? []) {
        out(
          `  [${d.index}] ${d.url}: ${d.error !== null ? `UNREADABLE: ${d.error}` : `version ${d.head}${d.behind ? `, ${d.behind} behind the most advanced` : ''}`}`,
        );
      }
      if (r.destinations) out(`  ack     ${r.ack} of ${r.destinations.length} (a running plugin says more: lightning-cli clnvault-status)`);
    }
    return r.ok ? EXIT.ok : EXIT.failed;
  },
};

async function status(dir: string): Promise<StatusReport> {
  const dbPath = join(dir, DB_NAME);
  const r: StatusReport = { state: 'in-step', ok: true, message: '', lightningDir: dir, running: false, runningEvidence: null, lock: null, backup: null, node: null };
  r.runningEvidence = await nodeRunning(dir, dbPath);
  r.running = r.runningEvidence !== null;
  const set = (state: State, ok: boolean, message: string): StatusReport => {
    r.state = state;
    r.ok = ok;
    r.message = message;
    return r;
  };

  if (!existsSync(lockPath(dir))) {
    return set(
      'no-lock',
      false,
      `no backup: ${lockPath(dir)} is missing, so the clnvault plugin refuses every database write and lightningd stops. ` +
        `With lightningd stopped, run 'clnvault init --lightning-dir ${dir} file:///path/to/backup.bkp' (a new backup; ` +
        `it snapshots the existing database)`,
    );
  }
  let lock: BackupLock;
  try {
    lock = readBackupLock(dir);
  } catch (e) {
    throw new CliError((e as Error).message, EXIT.usage);
  }
  r.lock = {
    ...lock,
    backend_url: redact(lock.backend_url),
    ...(lock.destinations ? { destinations: lock.destinations.map(redact) } : {}),
    path: lockPath(dir),
  };
  if (lock.destinations !== undefined) {
    // several destinations: each is read; the verdict below is about the most advanced one
    const probes = probeDestinations(lock, dir);
    r.ack = lock.ack ?? 'all';
    const best = probes.filter((p) => p.head !== null && p.error === null).sort((a, b) => serialDiff(b.head!, a.head!))[0];
    r.destinations = probes.map((p) => ({
      index: p.index,
      url: p.url,
      head: p.head,
      behind: p.head === null || best === undefined ? null : Math.max(0, serialDiff(best.head!, p.head)),
      error: p.error,
    }));
    if (best !== undefined) lock = { ...lock, backend_url: best.rawUrl };
  }

  let path: string;
  // no local file to check: a PostgreSQL or socket:/clnvault:// backup
  const pg = isRemoteUrl(lock.backend_url);
  try {
    // relative file: URLs are relative to the network directory, where the plugin runs
    path = pg ? redact(lock.backend_url) : backupPath(lock.backend_url, dir);
  } catch (e) {
    return set('no-backup', false, `${lockPath(dir)} names an unusable backup URL: ${(e as Error).message}`);
  }
  if (!pg && !existsSync(path)) {
    return set(
      'no-backup',
      false,
      `the backup file ${path} (from ${lockPath(dir)}) does not exist: is the backup disk mounted? Mount it before ` +
        `starting lightningd; if the backup is lost, stop lightningd, remove backup.lock and run 'clnvault init' again`,
    );
  }
  // The plugin runs as lightningd's user (the network directory's owner), not as whoever runs status:
  // a backup root can read may be one the plugin cannot open.
  const owner = ownerOf(dir);
  const lockSt = statSync(lockPath(dir));
  const access = [
    ...(canAccess(lockSt, owner, 'r') ? [] : [`the node's user (uid ${owner.uid}) cannot read ${lockPath(dir)} (owner uid ${lockSt.uid}, mode ${(lockSt.mode & 0o777).toString(8)})`]),
    // a postgresql: backup is reached over the network, as the role in its URL: no file to check
    ...(pg ? [] : [backupAccessProblem(path, owner)].filter((p): p is string => p !== null)),
  ];
  if (access.length > 0) {
    return set(
      'no-access',
      false,
      `the plugin cannot use the backup: ${access.join('; ')}. lightningd runs as the owner of ${dir}: run ` +
        `'chown ${owner.uid}:${owner.gid} ${path} ${lockPath(dir)}' (and make ${dirname(path)} writable by that user) before starting lightningd`,
    );
  }
  let head: number;
  let headKind: 'change' | 'snapshot' | null = null;
  const absUrl = pg ? path : pathToFileURL(path).href;
  try {
    const reader = openReader(lock.backend_url, dir);
    try {
      const st = reader.stats();
      head = st.head;
      r.backup = { url: pg ? path : lock.backend_url, path, format: st.format, head, headKind: null, entries: st.entries, bytes: st.bytes };
      // a walk, not a list: only the newest entry's kind is needed
      reader.forEachHeader((h) => {
        headKind = h.kind;
      });
      r.backup.headKind = headKind;
      const enc = encryptionOf(reader);
      r.backup.encryption = enc ? { keyKind: describeKey(enc).kind, keyFingerprint: describeKey(enc).fingerprint } : null;
    } finally {
      reader.close();
    }
  } catch (e) {
    return set(
      'backup-damaged',
      false,
      `the backup ${path} cannot be used: ${(e as Error).message}. Run 'clnvault inspect ${absUrl}' for details`,
    );
  }

  // the plugin refuses to start when backup.lock and the backup disagree about encryption or the key
  const enc = r.backup?.encryption ?? null;
  if (enc && !lock.encrypt) {
    return set('wrong-key', false, `the backup ${path} is encrypted (${enc.keyKind} key, fingerprint ${enc.keyFingerprint}) but ${lockPath(dir)} has no "encrypt" setting: the plugin will refuse to write. Add "encrypt": {"key": "hsm_secret"}, {"key_file": "/path/to/key"} or {"passphrase_file": "/path/to/passphrase"}, whichever the backup was made with`);
  }
  if (!enc && lock.encrypt) {
    return set('wrong-key', false, `${lockPath(dir)} says "encrypt" but the backup ${path} is not encrypted: the plugin will refuse to write. Remove "encrypt" from backup.lock, or start an encrypted backup with 'clnvault init --encrypt'`);
  }
  if (enc && lock.encrypt) {
    try {
      const k = keyFromLock(dir, lock.encrypt, pg ? null : path);
      if (k.fingerprint !== enc.keyFingerprint) {
        return set('wrong-key', false, `the key backup.lock names (${describeSetting(lock.encrypt)}, fingerprint ${k.fingerprint}) is not the backup's (fingerprint ${enc.keyFingerprint}): the plugin will refuse to write. Point "encrypt" in ${lockPath(dir)} at the backup's key`);
      }
    } catch (e) {
      return set('wrong-key', false, `the plugin cannot read the key backup.lock names (${describeSetting(lock.encrypt)}): ${(e as Error).message}`);
    }
  }

  if (!existsSync(dbPath)) {
    r.node = null;
    return set(
      head === 0 ? 'in-step' : 'no-database',
      head === 0,
      head === 0
        ? `ready: the backup ${lock.backend_url} is empty and the node has no database yet; lightningd creates it at its first start`
        : `the node has no database (${dbPath} is missing) but the backup holds version ${head}: restore it before starting ` +
            `lightningd: 'clnvault restore ${absUrl} ${dbPath}'`,
    );
  }
  let node: number;
  try {
    node = readDataVersionReadOnly(dbPath);
  } catch (e) {
    throw new CliError(
      `cannot read the data_version of ${dbPath}: ${(e as Error).message}` +
        (existsSync(`${dbPath}-journal`) ? ' (a -journal file is present: lightningd stopped mid-transaction; it rolls back at its next start)' : ''),
      EXIT.usage,
    );
  }
  r.node = { db: dbPath, dataVersion: node };

  const d = serialDiff(node, head);
  if (d === 0) return set('in-step', true, `in step: the node and the backup are both at data_version ${node}; nothing to do`);
  if (d === -1 && headKind === 'change') {
    return set(
      'backup-ahead',
      true,
      r.running
        ? `in step: the backup holds version ${head}, one ahead of the node's ${node}, because lightningd is committing it right now`
        : `in step after a crash: the backup holds version ${head}, one ahead of the node's ${node} (lightningd stopped between ` +
            `backing it up and committing it); the plugin drops that entry at the next start; nothing to do`,
    );
  }
  if (d < 0) {
    return set(
      'node-behind',
      false,
      `DANGER: the node's database is at data_version ${node} but the backup holds ${head}: the database lost committed ` +
        `transactions (an old copy, a failed disk?) and starting lightningd on it would broadcast revoked states. ` +
        (r.running ? 'Stop lightningd now, then ' : 'Do not start lightningd; ') +
        `move ${dbPath} aside and run 'clnvault restore ${absUrl} ${dbPath}'`,
    );
  }
  if (r.running) {
    return set(
      'not-backing-up',
      false,
      `NOT BACKING UP: lightningd is running with its database at data_version ${node}, ahead of the backup's ${head}: the ` +
        `plugin is not loaded or died. Check 'lightning-cli plugin list', load it with important-plugin= and restart lightningd`,
    );
  }
  if (lock.rebaseline === false) {
    return set(
      'node-ahead-refuse',
      false,
      `the node's database (data_version ${node}) is ${d} transaction(s) ahead of the backup (${head}) and backup.lock says ` +
        `"rebaseline": false, so the plugin will refuse to start. Remove that key from ${lockPath(dir)} (the plugin then ` +
        `snapshots the database at start), or re-create the backup with 'clnvault init'`,
    );
  }
  return set(
    'node-ahead',
    true,
    `will re-baseline: the node's database (data_version ${node}) is ${d} transaction(s) ahead of the backup (${head}), ` +
      `written after the plugin stopped (a clean 'lightning-cli stop' does this, CLN #5859); at the next start the plugin ` +
      `stores a snapshot of the database in the backup; nothing to do`,
  );
}

/** Read-only, so a status check never writes the node's database (and never rolls back its journal). */
function readDataVersionReadOnly(dbPath: string): number {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true, timeout: 5000 });
  try {
    const hasVars = db.prepare("SELECT 1 FROM sqlite_master WHERE type='table' AND name='vars'").get();
    if (!hasVars) return 0;
    const row = db.prepare("SELECT intval FROM vars WHERE name='data_version'").get() as { intval: number | bigint } | undefined;
    return row ? Number(row.intval) : 0;
  } finally {
    db.close();
  }
}
