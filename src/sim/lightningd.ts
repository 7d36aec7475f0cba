/**
 * A lightningd stand-in that runs the real clnvault plugin as Core Lightning v26.06.6 does
 * (docs/lightningd-hook.md): spawned with no arguments in the network dir, JSON-RPC over its stdin/stdout,
 * `getmanifest`, then db_write calls BEFORE `init`, string ids `cln:<method>#<n>`, and a wallet DB that is
 * only committed once the plugin answered `{"result":"continue"}`. Any other answer, or the plugin dying
 * with a hook call pending, is lightningd's fatal(): nothing is committed and the node is down.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { u32 } from '../engine/versions.js';
import { FRESH_POSTINIT, FRESH_PREINIT } from './cln-startup.js';
import { SimDb, dataVersionBump } from './db.js';
import { FrameReader, FrameWriter, type JsonRpcMessage, type WriteOptions } from './framing.js';
import { readTranscript, type TranscriptLine } from './transcript.js';

export const DEFAULT_PLUGIN_PATH = fileURLToPath(new URL('../plugin/main.js', import.meta.url));

/** lightningd's wording when a plugin dies with a request outstanding. */
export const PLUGIN_TERMINATED = 'Plugin terminated before replying to RPC call.';

/**
 * lightningd's request counter is shared by every request to every plugin; with the built-in plugins
 * loaded the backup plugin's getmanifest is `cln:getmanifest#20` and its first db_write `#21`, as in all
 * fixtures. Starting there keeps our ids looking like the recorded ones.
 */
const FIRST_REQUEST_ID = 20;

const LOG_LEVELS = new Set(['io', 'trace', 'debug', 'info', 'unusual', 'warn', 'error', 'broken']);

export interface SimNodeOptions {
  /** The network dir (`<lightning-dir>/regtest`): the plugin's cwd, holds lightningd.sqlite3 and backup.lock. */
  netDir: string;
  /** Defaults to the built plugin, dist/src/plugin/main.js. */
  pluginPath?: string;
  /** Added to the inherited environment of the plugin. */
  env?: NodeJS.ProcessEnv;
  allowDeprecatedApis?: boolean;
  /**
   * true (default) = `--important-plugin`: the plugin dying while idle shuts the node down.
   * false = `--plugin`: the node carries on and commits without any hook (what a backup must never allow).
   */
  important?: boolean;
  /** How messages are cut into writes (framing tests). Can be changed later through `node.writeOptions`. */
  write?: WriteOptions;
  /** lightningd never times a hook out; tests may set this so a hung plugin fails the test instead. */
  hookSafetyTimeoutMs?: number;
  /** getmanifest/init timeout, lightningd's `--plugin-timeout` (60 s). */
  startupTimeoutMs?: number;
  /** How long to wait for the plugin to exit after its stdin closed, before SIGKILL. */
  exitGraceMs?: number;
  /** lightningd kills a plugin that writes anything but JSON-RPC; set false to only record it. */
  killOnViolation?: boolean;
  onLog?: (entry: LogEntry) => void;
}

export interface LogEntry {
  level: string;
  message: string;
}

export interface Violation {
  text: string;
  reason: string;
}

export type NodeState = 'stopped' | 'running' | 'crashed' | 'down';

export type DbWriteResult =
  | { answered: 'continue'; dataVersion: number }
  /** lightningd would have aborted: nothing committed, node crashed. */
  | { answered: 'error'; dataVersion: number; detail: string }
  /** Non-important plugin gone: committed with no hook at all. */
  | { answered: 'unhooked'; dataVersion: number };

export interface ReplayOptions {
  /** First line to play, 1-based, inclusive (default 1). */
  from?: number;
  /** Last line to play, 1-based, inclusive (default: end). */
  to?: number;
}

export interface ReplayResult {
  /** Hook calls sent. */
  sent: number;
  committed: number;
  /** `"answered":"abort"` lines played (each followed by a crash). */
  aborted: number;
  restarts: number;
  /** Set when a line recorded as committed was not answered `continue`: the replay stopped there. */
  failure?: { line: number; detail: string };
}

interface Pending {
  method: string;
  settle(outcome: { reply: JsonRpcMessage } | { gone: string }): void;
}

interface PluginProcess {
  child: ChildProcessWithoutNullStreams;
  writer: FrameWriter;
  reader: FrameReader;
  pending: Map<string, Pending>;
  nextId: number;
  exited: Promise<void>;
  exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  /** Why we killed it ourselves, if we did: reported to callers whose request died with it. */
  killReason: string | undefined;
  /** stop()/crash in progress: the exit is expected, not a reason to shut the node down. */
  leaving: boolean;
  /** Killed for a protocol violation: like lightningd, read nothing more from it (not even a late reply). */
  poisoned: boolean;
}

export class SimNode {
  readonly netDir: string;
  readonly dbPath: string;
  readonly pluginPath: string;
  readonly logs: LogEntry[] = [];
  readonly violations: Violation[] = [];
  /** Notifications other than `log`. */
  readonly notifications: JsonRpcMessage[] = [];
  /** Exit status of every plugin process so far. */
  readonly exits: Array<{ code: number | null; signal: NodeJS.Signals | null }> = [];
  /** Every request sent, in order (ids restart with each plugin process, like lightningd's). */
  readonly sent: Array<{ id: string; method: string; dataVersion?: number }> = [];
  writeOptions: WriteOptions;

  private readonly opts: SimNodeOptions;
  private readonly db: SimDb;
  private proc: PluginProcess | undefined;
  private stateValue: NodeState = 'stopped';
  private initDone = false;
  private stderrChunks: Buffer[] = [];
  private stderrBytes = 0;
  /** Transactional batches sent and not yet settled, so pipelined transaction() calls get consecutive dvs. */
  private inflightTx = 0;
  private lastSentDv = 0;
  private hooksSinceStart = 0;
  private crashDetail: string | undefined;

  constructor(options: SimNodeOptions) {
    this.opts = options;
    this.netDir = options.netDir;
    this.dbPath = join(options.netDir, 'lightningd.sqlite3');
    this.pluginPath = options.pluginPath ?? DEFAULT_PLUGIN_PATH;
    this.writeOptions = { ...(options.write ?? {}) };
    this.db = new SimDb(this.dbPath);
  }

  get state(): NodeState {
    return this.stateValue;
  }
  get crashed(): boolean {
    return this.stateValue === 'crashed';
  }
  get initialized(): boolean {
    return this.initDone;
  }
  /** Why the node went down (the fatal() message), if it did. */
  get lastCrash(): string | undefined {
    return this.crashDetail;
  }
  get pid(): number | undefined {
    return this.pluginAlive ? this.proc!.child.pid : undefined;
  }
  get pluginAlive(): boolean {
    return this.proc !== undefined && this.proc.exit === undefined;
  }
  /** Everything the plugin wrote to stderr (the last 8 MiB). */
  get stderr(): string {
    return Buffer.concat(this.stderrChunks).toString('utf8');
  }

  /** data_version of the sim's DB (0 before the schema exists). Works whether or not the node runs. */
  dataVersion(): number {
    return this.db.dataVersion();
  }

  /** Writes `backup.lock` the way `clnvault init` / the reference's backup-cli do. */
  static writeBackupLock(netDir: string, backendUrl: string): void {
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: backendUrl }));
  }

  /**
   * Spawns the plugin and does the getmanifest exchange; opens the wallet DB only afterwards, as lightningd
   * does (a plugin may read the DB while answering getmanifest without meeting an open transaction).
   */
  async start(): Promise<JsonRpcMessage> {
    if (this.stateValue === 'running') throw new Error('SimNode.start(): already running');
    this.initDone = false;
    this.hooksSinceStart = 0;
    this.inflightTx = 0;
    this.crashDetail = undefined;
    const proc = this.spawnPlugin();
    this.proc = proc;
    this.stateValue = 'running';
    try {
      const reply = await this.call('getmanifest', { 'allow-deprecated-apis': this.opts.allowDeprecatedApis ?? false }, this.opts.startupTimeoutMs ?? 60_000);
      const manifest = checkManifest(reply);
      this.db.open();
      return manifest;
    } catch (e) {
      this.stateValue = 'stopped';
      await this.endProcess(proc, 'getmanifest failed');
      this.db.close();
      throw new Error(`${(e as Error).message}${this.stderrTail()}`);
    }
  }

  /** Sends `init` (after the pre-init db_write calls, as lightningd does). */
  async init(options: Record<string, unknown> = {}): Promise<unknown> {
    this.assertRunning('init');
    if (this.initDone) throw new Error('SimNode.init(): init was already sent to this plugin process');
    if (!this.pluginAlive) throw new Error('SimNode.init(): plugin is not running');
    const params = {
      options,
      configuration: {
        'lightning-dir': this.netDir,
        'rpc-file': 'lightning-rpc',
        startup: true,
        network: 'regtest',
        feature_set: {},
      },
    };
    let reply: JsonRpcMessage;
    try {
      reply = await this.call('init', params, this.opts.startupTimeoutMs ?? 60_000);
    } catch (e) {
      await this.goDown(`plugin failed init: ${(e as Error).message}`);
      throw e;
    }
    const result = reply.result as Record<string, unknown> | undefined;
    if (reply.error !== undefined || result === undefined) {
      await this.goDown(`plugin failed init: ${JSON.stringify(reply.error ?? reply)}`);
      throw new Error(`init answered with an error: ${JSON.stringify(reply.error ?? reply)}`);
    }
    if (result !== null && typeof result === 'object' && 'disable' in result) {
      await this.goDown(`plugin disabled itself: ${String(result.disable)}`);
      throw new Error(`plugin disabled itself at init: ${String(result.disable)}`);
    }
    this.initDone = true;
    return result;
  }

  /**
   * One db_write hook call, exactly as given. Commits the batch only on `{"result":"continue"}`; anything
   * else makes the node abort (see the file comment). Rejects only on misuse or an SQL error in the batch.
   */
  async dbWrite(dataVersion: number, writes: readonly string[]): Promise<DbWriteResult> {
    return this.hook(dataVersion, writes, { commit: true });
  }

  /** lightningd's db_commit_transaction: next data_version, the bump statement appended, then the hook. */
  async transaction(statements: readonly string[]): Promise<DbWriteResult> {
    const { dv, prev } = this.nextVersion();
    return this.hook(dv, [...statements, dataVersionBump(prev)], { commit: true, transactional: true });
  }

  /** A PRAGMA-only batch carries the current data_version, unchanged (CLN's table-rebuild helper). */
  async pragma(statement: string): Promise<DbWriteResult> {
    const dv = this.inflightTx > 0 ? this.lastSentDv : u32(this.dataVersionForSending());
    return this.hook(dv, [statement], { commit: true });
  }

  /**
   * The hook for the next transaction is answered, then lightningd dies before COMMIT (another plugin
   * answered abort, a power cut, ...): the DB stays at dv-1 and the plugin's stdin closes.
   */
  async crashBeforeCommit(statements: readonly string[]): Promise<DbWriteResult> {
    const { dv, prev } = this.nextVersion();
    return this.hook(dv, [...statements, dataVersionBump(prev)], { commit: false, transactional: true });
  }

  /** A transaction committed with no hook: what lightningd does after shutting plugins down (CLN 5859). */
  commitWithoutHook(statements: readonly string[]): number {
    const prev = this.db.dataVersion();
    const wasOpen = this.db.isOpen;
    this.db.open();
    try {
      this.db.apply([...statements, dataVersionBump(prev)]);
    } finally {
      if (!wasOpen) this.db.close();
    }
    return u32(prev + 1);
  }

  /** Signals the plugin (any moment, even mid-hook) and waits for it to be gone. */
  async killPlugin(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const proc = this.proc;
    if (!proc || proc.exit) return;
    proc.child.kill(signal);
    await proc.exited;
    // Let the settle callbacks of requests that died with it run before the caller looks at the node.
    await new Promise((r) => setImmediate(r));
  }

  /** lightningd exiting: the plugin's stdin closes, it should exit; the DB is closed. */
  async stop(): Promise<void> {
    const proc = this.proc;
    if (proc && !proc.exit) await this.endProcess(proc, 'lightningd stopped');
    this.db.close();
    if (this.stateValue === 'running') this.stateValue = 'stopped';
  }

  async restart(): Promise<JsonRpcMessage> {
    await this.stop();
    return this.start();
  }

  /**
   * start() plus what lightningd v26.06.6 writes around init: on an empty netDir the recorded schema
   * creation and migrations (so the DB has the real CLN schema), on an existing DB the restart writes.
   */
  async boot(): Promise<void> {
    if (this.stateValue !== 'running') await this.start();
    const fresh = this.db.dataVersion() === 0;
    if (fresh) {
      for (const b of FRESH_PREINIT) await this.mustContinue(this.dbWrite(b.dataVersion, b.writes));
      await this.init();
      for (const b of FRESH_POSTINIT) await this.mustContinue(this.dbWrite(b.dataVersion, b.writes));
      return;
    }
    const h = this.db.handle();
    const lpb = (h.prepare("SELECT intval FROM vars WHERE name='last_processed_block'").get() as { intval: number } | undefined)?.intval ?? 0;
    await this.mustContinue(this.transaction(['UPDATE version SET version=282;']));
    // lightningd rewinds a few blocks to re-scan them; the sim has no chain to re-scan, so it keeps them.
    await this.mustContinue(this.transaction([`UPDATE vars SET intval=${lpb} WHERE name='last_processed_block';`, `DELETE FROM blocks WHERE height > ${lpb}`]));
    await this.mustContinue(
      this.transaction(['DELETE FROM channel_htlcs WHERE id IN (  SELECT ch.id  FROM channel_htlcs AS ch  JOIN channels AS c ON c.id = ch.channel_id  WHERE c.state = 10);']),
    );
    await this.init();
    await this.mustContinue(this.transaction(['DELETE FROM utxoset WHERE spendheight < -144']));
  }

  /**
   * Plays a recorded transcript. `{"event":"getmanifest"}` = a new lightningd process; `{"event":"init"}` =
   * init; a line with `"answered":"abort"` is sent, then the node dies without committing (as it did when
   * recorded) and restarts for the next line; every other line is sent with its recorded data_version,
   * writes and (when it fits this process's counter) id, and committed on `continue`.
   */
  async replay(path: string, options: ReplayOptions = {}): Promise<ReplayResult> {
    const lines = readTranscript(path).filter((l) => l.line >= (options.from ?? 1) && l.line <= (options.to ?? Infinity));
    const res: ReplayResult = { sent: 0, committed: 0, aborted: 0, restarts: 0 };
    for (const l of lines) {
      if (l.kind === 'event' && l.event === 'getmanifest') {
        if (this.stateValue === 'running' && this.hooksSinceStart === 0 && !this.initDone) continue;
        if (this.stateValue === 'running') await this.stop();
        await this.start();
        res.restarts++;
        continue;
      }
      if (this.stateValue !== 'running') {
        await this.start();
        res.restarts++;
      }
      if (l.kind === 'event') {
        if (!this.initDone) await this.init();
        continue;
      }
      const r = await this.hook(l.dataVersion, l.writes, { commit: l.answered !== 'abort', id: l.id });
      res.sent++;
      if (l.answered === 'abort') {
        res.aborted++;
        continue;
      }
      if (r.answered === 'error') {
        res.failure = { line: l.line, detail: r.detail };
        return res;
      }
      res.committed++;
    }
    return res;
  }

  // ---------------------------------------------------------------------------------------------------

  private async mustContinue(p: Promise<DbWriteResult>): Promise<void> {
    const r = await p;
    if (r.answered === 'error') throw new Error(`plugin did not answer continue: ${r.detail}`);
  }

  private nextVersion(): { dv: number; prev: number } {
    const prev = this.inflightTx > 0 ? this.lastSentDv : this.dataVersionForSending();
    return { dv: u32(prev + 1), prev };
  }

  private dataVersionForSending(): number {
    this.assertRunning('db_write');
    return this.db.dataVersion();
  }

  private assertRunning(what: string): void {
    if (this.stateValue !== 'running') {
      throw new Error(`SimNode: cannot send ${what}: lightningd is ${this.stateValue}${this.crashDetail ? ` (${this.crashDetail})` : ''}`);
    }
  }

  private hook(dataVersion: number, writes: readonly string[], how: { commit: boolean; transactional?: boolean; id?: string | undefined }): Promise<DbWriteResult> {
    this.assertRunning('db_write');
    const list = [...writes];
    const proc = this.proc;
    if (!proc || proc.exit) {
      // Only reachable with a non-important plugin: lightningd commits as if no plugin had the hook.
      this.db.apply(list);
      return Promise.resolve({ answered: 'unhooked', dataVersion });
    }
    this.hooksSinceStart++;
    if (how.transactional) {
      this.inflightTx++;
      this.lastSentDv = dataVersion;
    }
    const id = this.pickId(proc, 'db_write', how.id);
    this.sent.push({ id, method: 'db_write', dataVersion });
    return new Promise<DbWriteResult>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const settle = (outcome: { reply: JsonRpcMessage } | { gone: string }): void => {
        if (timer) clearTimeout(timer);
        if (how.transactional) this.inflightTx--;
        // Runs synchronously on the reply, like lightningd: nothing else can slip in between answer and commit.
        let detail: string | undefined;
        if ('gone' in outcome) detail = outcome.gone;
        else if (outcome.reply.error !== undefined) detail = `db_write answered with a JSON-RPC error: ${JSON.stringify(outcome.reply.error)}`;
        else if (!isContinue(outcome.reply.result)) detail = `returned failed db_write: ${JSON.stringify(outcome.reply.result ?? null)}`;
        if (detail === undefined && this.stateValue !== 'running') detail = `lightningd had already aborted: ${this.crashDetail ?? this.stateValue}`;
        if (detail !== undefined) {
          this.crash(proc, detail).then(() => resolve({ answered: 'error', dataVersion, detail: detail! }), reject);
          return;
        }
        if (!how.commit) {
          const why = 'lightningd died between the db_write hook and COMMIT';
          this.crash(proc, why).then(() => resolve({ answered: 'continue', dataVersion }), reject);
          return;
        }
        try {
          this.db.apply(list);
        } catch (e) {
          const why = `SQL error applying data_version ${dataVersion}: ${(e as Error).message}`;
          this.crash(proc, why).then(() => reject(new Error(why)), reject);
          return;
        }
        resolve({ answered: 'continue', dataVersion });
      };
      proc.pending.set(id, { method: 'db_write', settle });
      if (this.opts.hookSafetyTimeoutMs) {
        timer = setTimeout(() => {
          if (!proc.pending.delete(id)) return;
          if (how.transactional) this.inflightTx--;
          const why = `db_write ${id} (data_version ${dataVersion}) unanswered after ${this.opts.hookSafetyTimeoutMs} ms (test safety timeout; lightningd itself would wait forever)`;
          this.crash(proc, why).then(() => reject(new Error(why)), reject);
        }, this.opts.hookSafetyTimeoutMs);
      }
      proc.writer.send({ jsonrpc: '2.0', id, method: 'db_write', params: { data_version: dataVersion, writes: list } }).catch(() => {
        // A broken pipe means the plugin is dying; its exit settles the request.
      });
    });
  }

  /** One of the plugin's RPC methods, as `lightning-cli METHOD` would call it. */
  rpc(method: string, params: unknown = {}, timeoutMs = 30_000): Promise<JsonRpcMessage> {
    return this.call(method, params, timeoutMs);
  }

  /** A request other than db_write; rejects if the plugin dies first or does not answer in time. */
  private call(method: string, params: unknown, timeoutMs: number): Promise<JsonRpcMessage> {
    const proc = this.proc;
    if (!proc || proc.exit) return Promise.reject(new Error(`cannot send ${method}: plugin is not running`));
    const id = this.pickId(proc, method, undefined);
    this.sent.push({ id, method });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        if (proc.pending.delete(id)) reject(new Error(`plugin did not answer ${method} within ${timeoutMs} ms`));
      }, timeoutMs);
      proc.pending.set(id, {
        method,
        settle: (o) => {
          clearTimeout(timer);
          if ('gone' in o) reject(new Error(o.gone));
          else resolve(o.reply);
        },
      });
      proc.writer.send({ jsonrpc: '2.0', id, method, params }).catch(() => undefined);
    });
  }

  /** Recorded ids are reused when they still fit this process's counter, so replays look like the recording. */
  private pickId(proc: PluginProcess, method: string, recorded: string | undefined): string {
    if (recorded !== undefined) {
      const m = /^cln:[a-z_]+#(\d+)$/.exec(recorded);
      if (m && Number(m[1]) >= proc.nextId && !proc.pending.has(recorded)) {
        proc.nextId = Number(m[1]) + 1;
        return recorded;
      }
    }
    return `cln:${method}#${proc.nextId++}`;
  }

  /** lightningd's fatal(): no commit, DB closed (rolled back), plugin's stdin closed, node crashed. */
  private async crash(proc: PluginProcess, detail: string): Promise<void> {
    if (this.stateValue === 'running') {
      this.stateValue = 'crashed';
      this.crashDetail = detail;
    }
    this.db.close();
    await this.endProcess(proc, detail);
  }

  /** The plugin failed init or exited while idle as an important plugin: lightningd shuts down. */
  private async goDown(detail: string): Promise<void> {
    if (this.stateValue === 'running') {
      this.stateValue = 'down';
      this.crashDetail = detail;
    }
    this.db.close();
    if (this.proc) await this.endProcess(this.proc, detail);
  }

  /** Closes the plugin's stdin and waits for it to exit; SIGKILL if it lingers. */
  private async endProcess(proc: PluginProcess, reason: string): Promise<void> {
    if (proc.exit) return;
    proc.leaving = true;
    proc.killReason ??= reason;
    proc.child.stdin.end();
    const grace = this.opts.exitGraceMs ?? 10_000;
    const timer = setTimeout(() => proc.child.kill('SIGKILL'), grace);
    await proc.exited;
    clearTimeout(timer);
  }

  private spawnPlugin(): PluginProcess {
    if (!existsSync(this.pluginPath)) throw new Error(`plugin not found: ${this.pluginPath} (not built yet?)`);
    const child = spawn(this.pluginPath, [], {
      cwd: this.netDir,
      // what lightningd sets for every plugin it starts (plugins_init, lightningd/plugin.c)
      env: { ...process.env, LIGHTNINGD_PLUGIN: '1', ...(this.opts.env ?? {}) },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let onExit!: () => void;
    const exited = new Promise<void>((r) => (onExit = r));
    const proc: PluginProcess = {
      child,
      writer: new FrameWriter({ write: (c, cb) => child.stdin.write(c, cb) }, () => this.writeOptions),
      reader: new FrameReader(),
      pending: new Map(),
      nextId: FIRST_REQUEST_ID,
      exited,
      exit: undefined,
      killReason: undefined,
      leaving: false,
      poisoned: false,
    };
    child.stdin.on('error', () => undefined);
    child.stdout.on('data', (chunk: Buffer) => this.onStdout(proc, proc.reader.push(chunk)));
    child.stderr.on('data', (chunk: Buffer) => this.onStderr(chunk));
    let finished = false;
    const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
      if (finished) return;
      finished = true;
      this.onStdout(proc, proc.reader.end());
      proc.exit = { code, signal };
      this.exits.push(proc.exit);
      this.onExit(proc);
      onExit();
    };
    child.on('close', (code, signal) => finish(code, signal));
    child.on('error', (err) => {
      if (child.pid === undefined) {
        this.onStderr(Buffer.from(`spawn failed: ${err.message}\n`));
        finish(null, null);
      }
    });
    return proc;
  }

  private onExit(proc: PluginProcess): void {
    const how = proc.exit!.signal ? `killed by ${proc.exit!.signal}` : `exit code ${proc.exit!.code}`;
    const gone = proc.killReason && !proc.leaving ? `${PLUGIN_TERMINATED} (${proc.killReason})` : PLUGIN_TERMINATED;
    const pending = [...proc.pending.values()];
    proc.pending.clear();
    const hookPending = pending.some((p) => p.method === 'db_write');
    if (this.proc === proc && this.stateValue === 'running' && !proc.leaving && !hookPending) {
      if (this.opts.important ?? true) {
        this.stateValue = 'down';
        this.crashDetail = `important plugin died (${how}): lightningd shut down`;
        this.db.close();
      }
    }
    for (const p of pending) p.settle({ gone });
  }

  private onStderr(chunk: Buffer): void {
    this.stderrChunks.push(chunk);
    this.stderrBytes += chunk.length;
    while (this.stderrBytes > 8 << 20 && this.stderrChunks.length > 1) this.stderrBytes -= this.stderrChunks.shift()!.length;
  }

  private stderrTail(): string {
    const s = this.stderr.trim();
    return s ? `\nplugin stderr:\n${s.slice(-4000)}` : '';
  }

  private onStdout(proc: PluginProcess, events: ReturnType<FrameReader['push']>): void {
    for (const ev of events) {
      if (proc.poisoned) return;
      if (ev.kind === 'garbage') {
        this.violation(proc, ev.text, ev.reason);
        continue;
      }
      const msg = ev.message;
      if (msg.jsonrpc !== '2.0') {
        this.violation(proc, ev.raw, 'missing "jsonrpc":"2.0"');
        continue;
      }
      if (msg.id !== undefined) {
        if (msg.method !== undefined) {
          this.violation(proc, ev.raw, 'a request on stdout (lightningd only takes responses and notifications there)');
          continue;
        }
        const pending = typeof msg.id === 'string' ? proc.pending.get(msg.id) : undefined;
        if (!pending) {
          this.violation(proc, ev.raw, `response to unknown id ${JSON.stringify(msg.id)} (ids must be echoed as the same string)`);
          continue;
        }
        if ((msg.result === undefined) === (msg.error === undefined)) {
          this.violation(proc, ev.raw, 'a response must have exactly one of "result" and "error"');
        }
        proc.pending.delete(msg.id as string);
        pending.settle({ reply: msg });
        continue;
      }
      if (typeof msg.method !== 'string') {
        this.violation(proc, ev.raw, 'neither a response (no id) nor a notification (no method)');
        continue;
      }
      if (msg.method === 'log') {
        const p = msg.params as Record<string, unknown> | undefined;
        if (!p || typeof p.message !== 'string' || (p.level !== undefined && (typeof p.level !== 'string' || !LOG_LEVELS.has(p.level)))) {
          this.violation(proc, ev.raw, 'malformed log notification');
          continue;
        }
        const entry = { level: (p.level as string | undefined) ?? 'info', message: p.message };
        this.logs.push(entry);
        this.opts.onLog?.(entry);
        continue;
      }
      this.notifications.push(msg);
    }
  }

  private violation(proc: PluginProcess, text: string, reason: string): void {
    this.violations.push({ text: text.length > 2000 ? `${text.slice(0, 2000)}…` : text, reason });
    if ((this.opts.killOnViolation ?? true) && !proc.exit) {
      proc.poisoned = true;
      proc.killReason ??= `protocol violation: ${reason}`;
      proc.child.kill('SIGKILL');
    }
  }
}

function isContinue(result: unknown): boolean {
  return result !== null && typeof result === 'object' && (result as Record<string, unknown>).result === 'continue';
}

function checkManifest(reply: JsonRpcMessage): JsonRpcMessage {
  if (reply.error !== undefined) throw new Error(`getmanifest answered with an error: ${JSON.stringify(reply.error)}`);
  const m = reply.result as Record<string, unknown> | undefined;
  if (!m || typeof m !== 'object') throw new Error('getmanifest: result is not an object');
  const hooks = m.hooks;
  if (!Array.isArray(hooks) || !hooks.some((h) => h !== null && typeof h === 'object' && (h as Record<string, unknown>).name === 'db_write')) {
    throw new Error(`getmanifest: no db_write hook registered (hooks: ${JSON.stringify(hooks)})`);
  }
  if (m.dynamic !== false) throw new Error(`getmanifest: a backup plugin must be "dynamic": false (got ${JSON.stringify(m.dynamic)})`);
  return m as JsonRpcMessage;
}

export type { TranscriptLine, WriteOptions };
