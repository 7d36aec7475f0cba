import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, readdirSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { MessageSplitter } from '../../src/plugin/framing.js';

/** One real lightningd (regtest) with clnvault loaded as an important plugin, driven over its RPC socket. */

export const CLNVAULT_PLUGIN = fileURLToPath(new URL('../../src/plugin/main.js', import.meta.url));
export const BACKEND = fileURLToPath(new URL('./bitcoin-backend.js', import.meta.url));

export class RpcError extends Error {
  constructor(
    readonly method: string,
    readonly code: number,
    message: string,
  ) {
    super(`${method}: ${code} ${message}`);
  }
}

let nextPort = 30000 + (process.pid % 20000);

export interface NodeOptions {
  name: string;
  /** the lightning dir; the network dir is <dir>/regtest */
  dir: string;
  chainDir: string;
  lightningd: string;
  /** extra environment for lightningd and so its plugins */
  env?: NodeJS.ProcessEnv;
  /** the db_write plugin loaded with important-plugin= (default: clnvault's built entry); null: none */
  importantPlugin?: string | null;
  /** more lightningd options */
  args?: string[];
  /** written to lightningd's stdin, then closed (what --hsm-passphrase reads); default: no stdin */
  stdin?: string;
}

export class LightningNode {
  readonly name: string;
  readonly dir: string;
  readonly netDir: string;
  readonly port = nextPort++;
  proc: ChildProcess | null = null;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | null = null;
  private id = 0;

  constructor(readonly opts: NodeOptions) {
    this.name = opts.name;
    this.dir = opts.dir;
    this.netDir = join(opts.dir, 'regtest');
  }

  get db(): string {
    return join(this.netDir, 'lightningd.sqlite3');
  }

  get rpcPath(): string {
    return join(this.netDir, 'lightning-rpc');
  }

  async start(): Promise<void> {
    // tsc keeps the shebang but not the run bit; lightningd runs only executable plugins
    chmodSync(BACKEND, 0o755);
    const args = [
      `--lightning-dir=${this.dir}`,
      '--network=regtest',
      '--developer',
      '--dev-bitcoind-poll=1',
      '--dev-fast-gossip',
      '--dev-fast-reconnect',
      '--funding-confirms=1',
      `--bind-addr=127.0.0.1:${this.port}`,
      '--disable-dns',
      '--log-level=debug',
      `--log-file=${join(this.dir, 'log')}`,
      `--alias=${this.name}`,
      '--disable-plugin=bcli',
      `--plugin=${BACKEND}`,
      ...(this.opts.importantPlugin === null ? [] : [`--important-plugin=${this.opts.importantPlugin ?? CLNVAULT_PLUGIN}`]),
      ...(this.opts.args ?? []),
    ];
    const env: NodeJS.ProcessEnv = { ...process.env, CLNVAULT_E2E_CHAIN: this.opts.chainDir, ...(this.opts.env ?? {}) };
    // set by node --test for its children; the backend takes it to mean "loaded as a test file"
    delete env.NODE_TEST_CONTEXT;
    const child = spawn(this.opts.lightningd, args, {
      env,
      stdio: [this.opts.stdin === undefined ? 'ignore' : 'pipe', 'ignore', 'pipe'],
    });
    if (this.opts.stdin !== undefined) child.stdin!.end(this.opts.stdin);
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    this.proc = child;
    this.exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    const deadline = Date.now() + 60_000;
    let dead = false;
    void this.exited.then(() => (dead = true));
    for (;;) {
      if (dead) throw new Error(`${this.name}: lightningd exited at start-up: ${stderr.trim()}\n${this.logTail()}`);
      try {
        await this.rpc('getinfo');
        return;
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`${this.name}: lightningd did not answer getinfo in 60 s: ${(e as Error).message}\n${this.logTail()}`);
        await sleep(100);
      }
    }
  }

  logTail(lines = 40): string {
    try {
      return readFileSync(join(this.dir, 'log'), 'utf8').split('\n').slice(-lines).join('\n');
    } catch {
      return '(no log)';
    }
  }

  log(): string {
    return existsSync(join(this.dir, 'log')) ? readFileSync(join(this.dir, 'log'), 'utf8') : '';
  }

  rpc<T = any>(method: string, params: Record<string, unknown> | unknown[] = {}, timeoutMs = 60_000): Promise<T> {
    return new Promise((resolve, reject) => {
      const sock = connect(this.rpcPath);
      const id = `e2e-${this.name}-${++this.id}`;
      const splitter = new MessageSplitter(4096);
      let settled = false;
      const done = (f: () => void): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        sock.destroy();
        f();
      };
      const timer = setTimeout(() => done(() => reject(new Error(`${this.name} ${method}: no answer in ${timeoutMs} ms`))), timeoutMs);
      sock.on('connect', () => sock.write(JSON.stringify({ jsonrpc: '2.0', id, method, params }) + '\n\n'));
      sock.on('data', (chunk: Buffer) => {
        splitter.push(chunk, (buf, s, e) => {
          const msg = JSON.parse(buf.toString('utf8', s, e)) as { id?: unknown; result?: T; error?: { code: number; message: string } };
          if (msg.id !== id) return;
          if (msg.error) done(() => reject(new RpcError(method, msg.error!.code, msg.error!.message)));
          else done(() => resolve(msg.result as T));
        });
      });
      sock.on('error', (e) => done(() => reject(e)));
      sock.on('close', () => done(() => reject(new Error(`${this.name} ${method}: connection closed without an answer`))));
    });
  }

  /** `stop` over RPC, then waits for the process to exit. */
  async stop(): Promise<void> {
    if (this.proc === null) return;
    const children = this.childPids();
    try {
      await this.rpc('stop');
    } catch {
      // the answer may be lost as lightningd closes the socket
    }
    const r = await withTimeout(this.exited!, 60_000, `${this.name}: lightningd did not exit after stop`);
    this.proc = null;
    if (r.code !== 0) throw new Error(`${this.name}: lightningd exited ${r.code ?? r.signal} after stop\n${this.logTail()}`);
    // the old plugin holds the backup writer lock until it exits: the next start must not race it
    await waitPidsGone(children);
  }

  /** SIGKILL of lightningd alone: its plugins see their stdin close and exit by themselves. */
  async kill(): Promise<void> {
    if (this.proc === null) return;
    const plugins = this.childPids();
    this.proc.kill('SIGKILL');
    await this.exited;
    this.proc = null;
    await waitPidsGone(plugins);
  }

  /** Direct children of lightningd (subdaemons and plugins). */
  childPids(): number[] {
    const pid = this.proc?.pid;
    if (pid === undefined) return [];
    const out: number[] = [];
    let tasks: string[];
    try {
      tasks = readdirSync(`/proc/${pid}/task`);
    } catch {
      return out; // lightningd already exited
    }
    for (const t of tasks) {
      try {
        for (const c of readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/)) if (c) out.push(Number(c));
      } catch {
        // thread gone
      }
    }
    return out;
  }

  /** The pid of the clnvault plugin process lightningd started. */
  clnvaultPid(): number {
    for (const c of this.childPids()) {
      try {
        const cmd = readFileSync(`/proc/${c}/cmdline`, 'utf8').split('\0');
        if (cmd.includes(CLNVAULT_PLUGIN)) return c;
      } catch {
        // exited meanwhile
      }
    }
    throw new Error(`${this.name}: no clnvault plugin among lightningd's children`);
  }

  async blockheight(): Promise<number> {
    return (await this.rpc<{ blockheight: number }>('getinfo')).blockheight;
  }

  async waitBlockheight(h: number, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((await this.blockheight()) < h) {
      if (Date.now() > deadline) throw new Error(`${this.name}: still below block ${h} after ${timeoutMs} ms`);
      await sleep(100);
    }
  }
}

export async function waitFor<T>(what: string, f: () => Promise<T | undefined | null | false>, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v !== undefined && v !== null && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(100);
  }
}

export async function waitPidsGone(pids: number[], timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (const pid of pids) {
    while (existsSync(`/proc/${pid}`) && !isZombie(pid)) {
      if (Date.now() > deadline) throw new Error(`process ${pid} still running ${timeoutMs} ms after lightningd died`);
      await sleep(20);
    }
  }
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/** `unref`: a bound on a wait that must not keep the test process alive after the rest is done */
export function sleep(ms: number, unref = false): Promise<void> {
  return new Promise((r) => {
    const t = setTimeout(r, ms);
    if (unref) t.unref();
  });
}

function withTimeout<T>(p: Promise<T>, ms: number, msg: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(msg)), ms);
    p.then(
      (v) => {
        clearTimeout(t);
        resolve(v);
      },
      (e) => {
        clearTimeout(t);
        reject(e);
      },
    );
  });
}
