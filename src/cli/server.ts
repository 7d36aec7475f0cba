import { isIP } from 'node:net';
import { isRemoteUrl } from '../backends/open.js';
import { parseHostPort } from '../backends/socket/url.js';
import { join, resolve } from 'node:path';
import { BackupServer, DEFAULT_LIMITS, type Log, type Served, type ServerLimits } from '../server/server.js';
import { addNode, NodeRegistry } from '../server/nodes.js';
import { ServedBackup } from '../server/store.js';
import { CliError, err, EXIT, out, parse, type Command } from './common.js';

const help = `Usage: clnvault server [options] FILE_URL HOST:PORT
       clnvault server [options] --dir DIR --listen HOST:PORT
       clnvault server add-node --dir DIR [--format v1|v2] NAME

Serves the backup file at FILE_URL to socket: clients, with the protocol of the
reference plugin's 'backup-cli server' and the same arguments, so it replaces it as is:
nodes whose backup.lock says socket:HOST:PORT (clnvault or the reference plugin) write to
it, and 'clnvault restore socket:HOST:PORT DEST' (or 'backup-cli restore') read from it.

It stores through clnvault's file backend (v1 or v2, as the file is; create it first with
'clnvault init FILE_URL'), answers ACK only once the entry is fdatasynced, refuses version
gaps and regressions (NACK), rewinds an uncommitted entry for real, serves restores while
a node is connected, and drops a connection that sends garbage without disturbing others.
A node's backup-compact (COMPACT) compacts the file as 'clnvault compact' does, in a worker
thread while the node keeps writing, keeping the previous file as a history copy. An
encrypted backup is compacted by its node, which has the key, with a snapshot it sends.

THE PROTOCOL HAS NO AUTHENTICATION AND NO ENCRYPTION: anyone who can connect can read
the node's whole database and write to its backup. Listen on loopback (the default use)
and reach it through a Tor onion service, an SSH tunnel or WireGuard (docs/remote.md).

With --dir, clnvault's own mode for networks you do not trust: one server for many
nodes, each with its own key (TLS 1.2 with a pre-shared key per node, RFC 4279, and
ephemeral ECDH). Only a node holding its key gets in, and only a server holding it
completes the handshake, so a node never talks to an impostor that acks without
storing. A node reaches its own backup (DIR/nodes/NAME/backup.bkp) and nothing else.
'add-node' creates DIR/nodes/NAME/ with a new key and an empty backup, and prints what
the node needs; delete DIR/nodes/NAME/key to revoke a node.

Options:
  --dir DIR             clnvault's own mode: serve the nodes in DIR
  --listen HOST:PORT    with --dir: where to listen
  --format v1|v2        add-node: the new backup's format (default v2)
  --max-change-bytes N  largest CHANGE frame accepted, compressed (default ${DEFAULT_LIMITS.maxChangeBytes})
  --packet-timeout S    seconds a started packet may take between reads (default ${DEFAULT_LIMITS.packetTimeoutMs / 1000})
  --max-connections N   simultaneous connections (default ${DEFAULT_LIMITS.maxConnections})
  --log-level L         debug, info (default), warning or error
  --log-mode M          plain (default) or systemd (<N> priority prefixes for journald)
  -h, --help            this help

Example:
  clnvault init file:///srv/clnvault/node1.bkp
  clnvault server file:///srv/clnvault/node1.bkp 127.0.0.1:8700`;

const LEVELS = { debug: 0, info: 1, warn: 2, error: 3 } as const;
const SYSLOG = { debug: 7, info: 6, warn: 4, error: 3 } as const;

function positiveInt(name: string, v: unknown, def: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new CliError(`--${name} must be a positive integer, not ${JSON.stringify(v)}`, EXIT.usage);
  return n;
}

function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1';
}

async function addNodeCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse('server add-node', argv, { dir: { type: 'string' }, format: { type: 'string' } }, { min: 1, max: 1, names: 'a node name' });
  if (values.help) {
    out(help);
    return EXIT.ok;
  }
  if (typeof values.dir !== 'string') throw new CliError('add-node needs --dir DIR (the directory the server serves)', EXIT.usage);
  const format = String(values.format ?? 'v2');
  if (format !== 'v1' && format !== 'v2') throw new CliError(`--format must be v1 or v2, not ${JSON.stringify(format)}`, EXIT.usage);
  const dir = resolve(values.dir);
  const name = positionals[0]!;
  let key: string;
  try {
    key = addNode(dir, name, format);
  } catch (e) {
    throw new CliError((e as Error).message);
  }
  out(`Created node ${name}: ${join(dir, 'nodes', name)} (key and an empty ${format} backup).`);
  out('');
  out(`On the node, with lightningd stopped (the key is a secret: it lets its holder read and write this backup):`);
  out(`  umask 077; echo ${key} > ~/.lightning/bitcoin/clnvault-remote.key`);
  out(`  clnvault init --lightning-dir ~/.lightning/bitcoin clnvault://${name}@SERVER:PORT`);
  out(`(SERVER:PORT as given to --listen; add ?proxy=socks5:127.0.0.1:9050 for an onion address.)`);
  return EXIT.ok;
}

export const serverCommand: Command = {
  name: 'server',
  summary: 'serve a backup file to socket: clients (drop-in for backup-cli server)',
  help,
  async run(argv) {
    if (argv[0] === 'add-node') return addNodeCommand(argv.slice(1));
    const { values, positionals } = parse('server', argv, {
      dir: { type: 'string' },
      listen: { type: 'string' },
      'max-change-bytes': { type: 'string' },
      'packet-timeout': { type: 'string' },
      'max-connections': { type: 'string' },
      'log-level': { type: 'string' },
      'log-mode': { type: 'string' },
    }, { min: 0, max: 2, names: 'a backup file URL and HOST:PORT' });
    if (values.help) {
      out(help);
      return EXIT.ok;
    }
    const nodesDir = typeof values.dir === 'string' ? resolve(values.dir) : null;
    if (nodesDir !== null ? positionals.length !== 0 || typeof values.listen !== 'string' : positionals.length !== 2) {
      throw new CliError(`expected FILE_URL HOST:PORT, or --dir DIR --listen HOST:PORT; see 'clnvault server --help'`, EXIT.usage);
    }
    const [url, addr] = nodesDir !== null ? [`dir:${nodesDir}`, String(values.listen)] : (positionals as [string, string]);
    if (nodesDir === null && isRemoteUrl(url)) throw new CliError(`${url}: the server stores into a local backup file; give its file: URL`, EXIT.usage);
    const levelName = String(values['log-level'] ?? 'info').toLowerCase();
    const level = levelName === 'warning' ? 'warn' : levelName === 'critical' ? 'error' : levelName;
    if (!(level in LEVELS)) throw new CliError(`--log-level must be debug, info, warning or error, not ${JSON.stringify(values['log-level'])}`, EXIT.usage);
    const mode = String(values['log-mode'] ?? 'plain');
    if (mode !== 'plain' && mode !== 'systemd') throw new CliError(`--log-mode must be plain or systemd, not ${JSON.stringify(mode)}`, EXIT.usage);
    const limits: ServerLimits = {
      maxChangeBytes: positiveInt('max-change-bytes', values['max-change-bytes'], DEFAULT_LIMITS.maxChangeBytes),
      maxChangeRawBytes: DEFAULT_LIMITS.maxChangeRawBytes,
      packetTimeoutMs: positiveInt('packet-timeout', values['packet-timeout'], DEFAULT_LIMITS.packetTimeoutMs / 1000) * 1000,
      maxConnections: positiveInt('max-connections', values['max-connections'], DEFAULT_LIMITS.maxConnections),
    };
    let hp;
    try {
      hp = parseHostPort(addr, 'HOST:PORT', true);
    } catch (e) {
      throw new CliError((e as Error).message, EXIT.usage);
    }
    const min = LEVELS[level as keyof typeof LEVELS];
    const log: Log = (l, m) => {
      if (LEVELS[l] < min) return;
      out(mode === 'systemd' ? `<${SYSLOG[l]}>${m}` : m);
    };
    let served: Served;
    try {
      served = nodesDir !== null ? { kind: 'nodes', registry: new NodeRegistry(nodesDir) } : { kind: 'file', backup: ServedBackup.open(url, process.cwd()) };
    } catch (e) {
      throw new CliError((e as Error).message);
    }
    const server = new BackupServer(served, log, limits);
    let bound;
    try {
      bound = await server.listen(hp.host, hp.port);
    } catch (e) {
      if (served.kind === 'file') served.backup.close();
      throw new CliError(`cannot listen on ${addr}: ${(e as Error).message}`);
    }
    if (served.kind === 'file') {
      const m = served.backup.metadata();
      log('info', `serving ${url} (version ${m.version}, ${m.versionCount} entries) on ${bound.host}:${bound.port}`);
    } else {
      log('info', `serving the nodes of ${nodesDir} (TLS-PSK, one key per node) on ${bound.host}:${bound.port}`);
    }
    if (served.kind === 'file' && !isLoopback(hp.host)) {
      const warn = `WARNING: listening on ${addr}, not on loopback. This protocol has no authentication and no encryption: ` +
        `anyone who can reach this port can read the node's entire database and write to its backup. Put it behind a ` +
        `Tor onion service, an SSH tunnel or WireGuard and listen on 127.0.0.1 (see docs/remote.md)`;
      err(warn);
      log('warn', warn);
    }
    await new Promise<void>((resolve) => {
      const stop = (sig: string): void => {
        log('info', `${sig}: stopping`);
        void server.close().then(resolve);
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
    });
    return EXIT.ok;
  },
};
