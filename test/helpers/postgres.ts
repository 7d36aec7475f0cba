import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { runCli, show } from './cli.js';

/**
 * A real PostgreSQL server for the tests: Debian's binaries, a fresh cluster in a temporary directory
 * (initdb), listening on a free loopback port and on a Unix socket in that directory, stopped and
 * removed at the end. As root the server runs as the `postgres` system user (it refuses to run as root).
 * Password authentication over TCP (scram-sha-256), trust on the socket for the test's own setup.
 */

export const PG_SUPERUSER = 'postgres';
export const PG_SUPERPASS = 'super-secret';
export const PG_DB = 'clnvault';

export function findPgBin(): string | null {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return null;
  const versions = readdirSync(root).filter((v) => /^\d+$/.test(v)).sort((a, b) => Number(b) - Number(a));
  for (const v of versions) if (existsSync(join(root, v, 'bin', 'postgres')) && existsSync(join(root, v, 'bin', 'initdb'))) return join(root, v, 'bin');
  return null;
}

/** One clear line when PostgreSQL is not installed; .ci/run installs it, so CI never skips. */
export const PG_SKIP: string | false = findPgBin() === null ? 'PostgreSQL binaries missing (apt-get install postgresql; .ci/run does)' : false;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => (typeof a === 'object' && a !== null ? resolve(a.port) : reject(new Error('no port'))));
    });
  });
}

export class PgServer {
  private proc: ChildProcess | null = null;
  readonly bin: string;
  readonly dir: string;
  readonly data: string;
  port = 0;
  private readonly ids: { uid: number; gid: number } | null;

  private constructor() {
    this.bin = findPgBin()!;
    this.dir = mkdtempSync(join(tmpdir(), 'clnvault-pg-'));
    this.data = join(this.dir, 'data');
    this.ids = userInfo().uid === 0 ? pgIds() : null;
  }

  static async start(opts: { conf?: string[] } = {}): Promise<PgServer> {
    const s = new PgServer();
    s.port = await freePort();
    if (s.ids) {
      chownSync(s.dir, s.ids.uid, s.ids.gid);
    }
    chmodSync(s.dir, 0o755);
    const pw = join(s.dir, 'pw');
    writeFileSync(pw, PG_SUPERPASS);
    if (s.ids) chownSync(pw, s.ids.uid, s.ids.gid);
    const r = spawnSync(join(s.bin, 'initdb'), ['-D', s.data, '-U', PG_SUPERUSER, `--pwfile=${pw}`, '--auth-local=trust', '--auth-host=scram-sha-256', '-E', 'UTF8', '--no-instructions'], {
      encoding: 'utf8',
      ...(s.ids ?? {}),
    });
    rmSync(pw, { force: true });
    if (r.status !== 0) throw new Error(`initdb failed: ${r.stderr}`);
    writeFileSync(join(s.data, 'postgresql.auto.conf'), [...(opts.conf ?? [])].join('\n') + '\n');
    if (s.ids) chownSync(join(s.data, 'postgresql.auto.conf'), s.ids.uid, s.ids.gid);
    await s.run();
    const c = await s.superClient('postgres');
    await c.query(`CREATE DATABASE ${PG_DB}`);
    await c.end();
    return s;
  }

  /** (Re)starts the postmaster on the same data directory and port; waits until it accepts connections. */
  async run(): Promise<void> {
    const args = ['-D', this.data, '-p', String(this.port), '-k', this.dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200', '-c', 'fsync=on', '-c', 'logging_collector=off'];
    // its own process group, so that kill() takes the backends down with the postmaster, as a crash does
    const p = spawn(join(this.bin, 'postgres'), args, { stdio: ['ignore', 'ignore', 'pipe'], detached: true, ...(this.ids ?? {}) });
    let log = '';
    p.stderr!.setEncoding('utf8').on('data', (d: string) => (log = (log + d).slice(-4000)));
    this.proc = p;
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (p.exitCode !== null) throw new Error(`postgres exited at start: ${log}`);
      try {
        const c = await this.superClient('postgres');
        await c.end();
        return;
      } catch {
        if (Date.now() > deadline) throw new Error(`postgres did not start within 30 s: ${log}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** SIGKILL of the postmaster and every backend at once: the server's process group. */
  async kill(): Promise<void> {
    const p = this.proc;
    if (p === null) return;
    this.proc = null;
    const exited = p.exitCode !== null || p.signalCode !== null ? Promise.resolve() : new Promise((r) => p.once('exit', r));
    try {
      process.kill(-p.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
    await exited;
    // backends die with it; give the kernel a moment to release the shared memory they held
    for (let i = 0; i < 50 && spawnSync('pgrep', ['-g', String(p.pid)]).status === 0; i++) await new Promise((r) => setTimeout(r, 100));
  }

  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (p !== null && p.exitCode === null && p.signalCode === null) {
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGINT'); // fast shutdown
      await exited;
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** URL for `role` over TCP with a password, for backup `backup`. */
  url(role: string, password: string, backup: string, db = PG_DB): string {
    return `postgresql://${role}:${password}@127.0.0.1:${this.port}/${db}?backup=${backup}`;
  }

  async superClient(db = PG_DB): Promise<pg.Client> {
    const c = new pg.Client({ host: this.dir, port: this.port, user: PG_SUPERUSER, database: db });
    await c.connect();
    return c;
  }

  /** A login role that can use clnvault's schema (docs/postgresql.md's grants), created once the schema exists. */
  private roles = 0;

  /**
   * A fresh login role in clnvault_node (named `prefix_N_name`), its password `pw-<role>`, and the URL of
   * a backup of its own (`name-N`): each test's node is a separate tenant.
   */
  async nodeRole(prefix: string, name: string): Promise<{ role: string; url: string; backup: string }> {
    const clean = name.replace(/[^a-z0-9]/g, '').slice(0, 40);
    const n = ++this.roles;
    const role = `${prefix}_${n}_${clean}`;
    await this.createNodeRole(role, `pw-${role}`);
    const backup = `${clean}-${n}`;
    return { role, url: this.url(role, `pw-${role}`, backup), backup };
  }

  async createNodeRole(role: string, password: string): Promise<void> {
    const c = await this.superClient();
    try {
      await c.query(`CREATE ROLE ${role} LOGIN PASSWORD '${password}' IN ROLE clnvault_node`);
    } finally {
      await c.end();
    }
  }

  /** The one-time set-up of docs/postgresql.md, as the cluster's administrator runs it. */
  async adminSetup(): Promise<void> {
    const c = await this.superClient();
    try {
      for (const sql of ADMIN_SETUP) await c.query(sql);
    } finally {
      await c.end();
    }
  }

  /**
   * A server as the suites want it: started, the administrator's one-time set-up done, and clnvault's
   * tables created with `clnvault init --schema-only` (the administrator's step), granted to the node roles.
   */
  static async startWithSchema(opts: { conf?: string[] } = {}): Promise<PgServer> {
    const server = await PgServer.start(opts);
    await server.adminSetup();
    const r = await runCli(['init', '--schema-only', server.url('clnvault_admin', 'admin-secret', 'unused')]);
    if (r.code !== 0) {
      await server.stop();
      throw new Error(`clnvault init --schema-only failed: ${show(r)}`);
    }
    return server;
  }
}

/** Kept word for word in docs/postgresql.md ("Roles and grants"). */
export const ADMIN_SETUP = [
  `CREATE ROLE clnvault_node NOLOGIN`,
  `CREATE ROLE clnvault_admin LOGIN PASSWORD 'admin-secret'`,
  `GRANT CREATE ON DATABASE ${PG_DB} TO clnvault_admin`,
];

function pgIds(): { uid: number; gid: number } {
  const u = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (u.status !== 0) throw new Error('running as root but there is no postgres user to run the server as (apt-get install postgresql creates it)');
  return { uid: Number(u.stdout.trim()), gid: Number(g.stdout.trim()) };
}

export function ensureDir(p: string): string {
  mkdirSync(p, { recursive: true });
  return p;
}
