import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The built plugin, as lightningd starts it. */
export const PLUGIN = fileURLToPath(new URL('../src/plugin/main.js', import.meta.url));

/**
 * Drives a plugin the way lightningd does: over real pipes (FIFOs; lightningd uses pipe(2), while
 * Node's own child pipes are socketpairs) with blocking writes and reads, so the figures show the
 * plugin's cost rather than a JavaScript driver's event loop.
 */
export class FifoDriver {
  private child: ChildProcess;
  private toPlugin: number;
  private fromPlugin: number;
  private rbuf = Buffer.alloc(1 << 20);
  private have = 0;
  /** replies to requests other than the one being waited for, by id */
  readonly other = new Map<string, string>();
  readonly logs: string[] = [];
  /** hrtime just before spawn(): start-up is timed from here, not from making the FIFOs */
  readonly spawnedAt: bigint;

  /** `command`: the plugin by default; [node, script] for another one (the minimal reference plugin); `env`: added to ours */
  constructor(netDir: string, command: readonly string[] = [PLUGIN], env: NodeJS.ProcessEnv = {}) {
    const fin = join(netDir, 'stdin.fifo');
    const fout = join(netDir, 'stdout.fifo');
    execFileSync('mkfifo', [fin, fout]);
    // O_RDWR on a FIFO opens without waiting for the other side.
    this.toPlugin = openSync(fin, 'r+');
    this.fromPlugin = openSync(fout, 'r+');
    const childIn = openSync(fin, 'r');
    const childOut = openSync(fout, 'w');
    this.spawnedAt = process.hrtime.bigint();
    this.child = spawn(command[0]!, command.slice(1), { cwd: netDir, env: { ...process.env, ...env, LIGHTNINGD_PLUGIN: '1' }, stdio: [childIn, childOut, 'inherit'] });
    closeSync(childIn);
    closeSync(childOut);
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** lightningd hands over bytes it already holds: pass a Buffer, or the driver's encoding is timed too. */
  send(payload: Buffer | string): void {
    const b = typeof payload === 'string' ? Buffer.from(payload) : payload;
    for (let off = 0; off < b.length; ) off += writeSync(this.toPlugin, b, off, b.length - off);
  }

  /** Blocks until the reply to `id`; other replies and log lines are kept, error logs also printed. */
  wait(id: string): string {
    const tag = `"id":${JSON.stringify(id)}`;
    for (;;) {
      let i: number;
      while ((i = this.rbuf.subarray(0, this.have).indexOf('\n\n')) >= 0) {
        const msg = this.rbuf.toString('utf8', 0, i);
        this.rbuf.copy(this.rbuf, 0, i + 2, this.have);
        this.have -= i + 2;
        if (msg.includes('"method":"log"')) {
          this.logs.push(msg);
          if (msg.includes('"level":"error"')) process.stderr.write(`plugin: ${msg}\n`);
          continue;
        }
        if (msg.includes(tag)) return msg;
        const m = /"id":"([^"]+)"/.exec(msg);
        if (m) this.other.set(m[1]!, msg);
      }
      if (this.have === this.rbuf.length) this.rbuf = Buffer.concat([this.rbuf, Buffer.alloc(this.rbuf.length)]);
      const n = readSync(this.fromPlugin, this.rbuf, this.have, this.rbuf.length - this.have, null);
      if (n === 0) throw new Error('plugin closed its stdout');
      this.have += n;
    }
  }

  call(payload: Buffer | string, id: string): string {
    this.send(payload);
    return this.wait(id);
  }

  async close(): Promise<void> {
    const done = new Promise((r) => this.child.on('exit', r));
    this.child.kill('SIGKILL');
    await done;
    closeSync(this.toPlugin);
    closeSync(this.fromPlugin);
  }
}
