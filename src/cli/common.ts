import { parseArgs, type ParseArgsConfig } from 'node:util';
import { UrlError } from '../backends/url.js';

/** Shared plumbing for the one-file-per-command CLI: argument parsing, exit codes, error lines. */

export const EXIT = {
  ok: 0,
  /** the operation ran and failed or found a problem */
  failed: 1,
  /** bad usage, or the command could not run at all */
  usage: 2,
} as const;

export class CliError extends Error {
  /** more fields for the --json failure object (a command's partial report) */
  json: Record<string, unknown> | undefined;
  constructor(
    message: string,
    readonly exitCode: number = EXIT.failed,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** A URL the user typed that names no usable backend is a usage error, like a bad option. */
export function exitCodeOf(e: unknown): number {
  if (e instanceof CliError) return e.exitCode;
  if (e instanceof UrlError) return EXIT.usage;
  return EXIT.failed;
}

/**
 * Every command's --json failure, on stdout, one shape for all: ok false, result "error", the command,
 * its exit code and the same message as the stderr line (plus what the command had found so far).
 */
export function failureJson(command: string, e: unknown): Record<string, unknown> {
  const extra = e instanceof CliError ? (e.json ?? {}) : {};
  return { ...extra, ok: false, result: 'error', command, exitCode: exitCodeOf(e), message: (e as Error).message };
}

export interface Command {
  name: string;
  summary: string;
  help: string;
  run(argv: string[]): Promise<number>;
}

export interface Parsed {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
}

export function parse(
  cmd: string,
  argv: string[],
  options: NonNullable<ParseArgsConfig['options']>,
  positionals: { min: number; max: number; names: string },
): Parsed {
  let parsed: Parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        ...options,
        help: { type: 'boolean', short: 'h' },
        debug: { type: 'boolean' },
        quiet: { type: 'boolean', short: 'q' },
        progress: { type: 'boolean' },
      },
      allowPositionals: true,
      strict: true,
    }) as Parsed;
  } catch (e) {
    throw new CliError(`${(e as Error).message}; see 'clnvault ${cmd} --help'`, EXIT.usage);
  }
  if (parsed.values.quiet && parsed.values.progress) {
    throw new CliError(`--quiet and --progress contradict each other; see 'clnvault ${cmd} --help'`, EXIT.usage);
  }
  outputMode.quiet = parsed.values.quiet === true;
  outputMode.progress = parsed.values.progress === true ? true : parsed.values.quiet === true ? false : null;
  const pos = parsed.positionals;
  if (!parsed.values.help && (pos.length < positionals.min || pos.length > positionals.max)) {
    throw new CliError(`expected ${positionals.names}; see 'clnvault ${cmd} --help'`, EXIT.usage);
  }
  return parsed;
}

/**
 * Set by parse() from --quiet/--progress, which every command takes. progress null: only when stderr is
 * a terminal (a cron job's stderr is not, and cron mails whatever it gets).
 */
export const outputMode: { quiet: boolean; progress: boolean | null } = { quiet: false, progress: null };

/** Lines that tell what is going on; --quiet drops them (results that are failures or warnings never use this). */
export function info(line: string): void {
  if (!outputMode.quiet) out(line);
}

/** Text appended to every command's --help. */
export const COMMON_OPTIONS_HELP = `  -q, --quiet      no progress and no informational lines: only warnings, failures and
                   --json output (a cron job then mails only when something is wrong)
  --progress       progress lines on stderr even when it is not a terminal (by default
                   only on a terminal)`;

export function out(line: string): void {
  process.stdout.write(`${line}\n`);
}

export function err(line: string): void {
  process.stderr.write(`${line}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function parseVersionArg(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+$/.test(v) || Number(v) > 0xffffffff) {
    throw new CliError(`${flag} takes a data_version (a whole number from 0 to 4294967295), not ${JSON.stringify(v)}`, EXIT.usage);
  }
  return Number(v);
}

/**
 * Progress on stderr: a redrawn bar with rate and ETA on a terminal, a plain line every few seconds
 * otherwise (logs and CI output stay readable).
 */
export function progressReporter(label: string, unit: string): { update(done: number, total: number): void; finish(): void } {
  const tty = process.stderr.isTTY === true;
  if (!(outputMode.progress ?? tty)) return { update() {}, finish() {} };
  const t0 = Date.now();
  // the first line waits one interval too: a quick operation prints only its final line
  let lastPrint = t0;
  let drawn = false;
  return {
    update(done, total) {
      const now = Date.now();
      if (now - lastPrint < (tty ? 100 : 5000) && done < total) return;
      lastPrint = now;
      const secs = Math.max((now - t0) / 1000, 0.001);
      const rate = done / secs;
      const eta = rate > 0 && total > done ? (total - done) / rate : 0;
      const pct = total > 0 ? Math.floor((done / total) * 100) : 100;
      const text = `${label} ${done}/${total} ${unit} (${pct}%), ${Math.round(rate)} ${unit}/s, ETA ${formatSecs(eta)}`;
      if (tty) {
        const width = 24;
        const filled = Math.round((pct / 100) * width);
        process.stderr.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${text}\x1b[K`);
        drawn = true;
      } else {
        process.stderr.write(`${text}\n`);
      }
    },
    finish() {
      if (tty && drawn) process.stderr.write('\n');
    },
  };
}

function formatSecs(s: number): string {
  if (s < 60) return `${Math.ceil(s)}s`;
  const m = Math.floor(s / 60);
  return `${m}m${String(Math.ceil(s % 60)).padStart(2, '0')}s`;
}

// `clnvault inspect URL | head` closes stdout early: stop quietly, as other command-line tools do,
// instead of an unhandled EPIPE stack trace.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(typeof process.exitCode === 'number' ? process.exitCode : 0);
  throw e;
});
