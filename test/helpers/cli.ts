import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The built CLI, run the way an operator runs it: its own process, real files, exit code and both streams. */
export const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
/** The checkout (where node_modules is), three levels above the built CLI (<out>/src/cli/main.js). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Async on purpose: a test may serve a unix socket in this process while the CLI probes it. */
export function runCli(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(CLI, args, { cwd: opts.cwd ?? process.cwd(), env: { ...process.env, ...(opts.env ?? {}) }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

export function show(r: CliRun): string {
  return `exit ${r.code}\n--- stdout\n${r.stdout}--- stderr\n${r.stderr}`;
}

/** A scratch area removed by `cleanup()`; each `dir()` is a fresh subdirectory. */
export function scratchArea(prefix: string): { root: string; dir(name?: string): string; cleanup(): void } {
  const root = mkdtempSync(join(tmpdir(), prefix));
  let n = 0;
  return {
    root,
    dir(name) {
      const d = join(root, name ?? `d${++n}`);
      mkdirSync(d, { recursive: true });
      return d;
    },
    cleanup() {
      if (!process.env.CLNVAULT_KEEP_TMP) rmSync(root, { recursive: true, force: true });
    },
  };
}

/** Fixtures are read-only: tests work on copies, writable by the test. */
export function copyFixture(src: string, dest: string): string {
  copyFileSync(src, dest);
  return dest;
}
