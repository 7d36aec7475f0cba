import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/**
 * The built plugin as a child process over real pipes, driven byte by byte. Tests of the protocol
 * surface use this; end-to-end tests use the lightningd simulator in src/sim.
 */

export const PLUGIN = fileURLToPath(new URL('../../src/plugin/main.js', import.meta.url));

export interface RpcMessage {
  jsonrpc?: string;
  id?: string | number;
  method?: string;
  params?: { level?: string; message?: string } & Record<string, unknown>;
  result?: unknown;
  error?: { code: number; message: string };
}

const live = new Set<PluginProc>();

/** Kills every plugin a test left running (a failed assertion must not leave the test file hanging). */
export function killAllPlugins(): void {
  for (const p of live) p.kill('SIGKILL');
  live.clear();
}

export class PluginProc {
  readonly child: ChildProcessWithoutNullStreams;
  readonly messages: RpcMessage[] = [];
  /** stdout bytes that were not valid JSON-RPC: must stay empty */
  readonly garbage: string[] = [];
  stderr = '';
  private buf = '';
  private waiters: Array<() => void> = [];
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  /** `wrap`: a command that runs the plugin (the plugin's path is appended), e.g. to give it its own mount namespace */
  constructor(cwd: string, env: NodeJS.ProcessEnv = {}, wrap: string[] = []) {
    const [cmd, ...args] = [...wrap, PLUGIN];
    this.child = spawn(cmd!, args, { cwd, env: { ...process.env, LIGHTNINGD_PLUGIN: '1', ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout.setEncoding('utf8');
    this.child.stdout.on('data', (d: string) => {
      this.buf += d;
      let i: number;
      while ((i = this.buf.indexOf('\n\n')) >= 0) {
        const raw = this.buf.slice(0, i).trim();
        this.buf = this.buf.slice(i + 2);
        if (!raw) continue;
        try {
          const m = JSON.parse(raw) as RpcMessage;
          if (m.jsonrpc !== '2.0') this.garbage.push(raw);
          this.messages.push(m);
        } catch {
          this.garbage.push(raw);
        }
      }
      for (const w of this.waiters.splice(0)) w();
    });
    this.child.stderr.setEncoding('utf8');
    this.child.stderr.on('data', (d: string) => (this.stderr += d));
    this.exit = new Promise((resolve) => this.child.on('exit', (code, signal) => resolve({ code, signal })));
    this.child.stdin.on('error', () => {});
    live.add(this);
    void this.exit.then(() => live.delete(this));
  }

  sendRaw(text: string | Buffer): void {
    this.child.stdin.write(text);
  }

  request(id: string, method: string, params: unknown): void {
    this.sendRaw(`${JSON.stringify({ jsonrpc: '2.0', id, method, params })}\n\n`);
  }

  /** Waits for the reply to `id` (a response, not a log notification). */
  async reply(id: string | number, timeoutMs = 15000): Promise<RpcMessage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.messages.find((x) => x.id === id && x.method === undefined);
      if (m) return m;
      if (Date.now() > deadline) throw new Error(`no reply to ${id} within ${timeoutMs} ms; stderr: ${this.stderr}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  /** Log lines arrive asynchronously after a reply: wait until one matches. */
  async waitForLog(re: RegExp, timeoutMs = 10000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.logs().find((l) => re.test(l));
      if (hit) return hit;
      if (Date.now() > deadline) throw new Error(`no log matching ${re} within ${timeoutMs} ms; logs:\n${this.logs().join('\n')}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  logs(): string[] {
    return this.messages.filter((m) => m.method === 'log').map((m) => `${m.params?.level}: ${m.params?.message}`);
  }

  async call(id: string, method: string, params: unknown): Promise<RpcMessage> {
    this.request(id, method, params);
    return this.reply(id);
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    this.child.kill(signal);
  }

  async close(): Promise<void> {
    this.child.stdin.end();
    await this.exit;
  }
}
