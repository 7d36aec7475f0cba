import { readFileSync, realpathSync } from 'node:fs';
import { connect } from 'node:net';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join, resolve } from 'node:path';

/**
 * Was this plugin loaded with `important-plugin=`? It decides whether lightningd keeps running (and
 * committing without a backup) when the plugin dies. lightningd knows: `listconfigs` lists every
 * `plugin` and `important-plugin` it loaded, with where each came from (the command line, or a config
 * file and line, included files too, which is where reckless writes). The plugin asks it over
 * lightning-rpc after `init`, in a worker thread (importance-worker.ts): the main thread blocks on stdin
 * between db_writes and must never wait for lightningd, which may itself be waiting for a db_write answer.
 *
 * Only when listconfigs fails does the older guess run (lightningd's command line and the config files
 * it names, without following includes), and the log says which answer it is.
 */
export type Importance = 'important' | 'plain' | 'unknown';

export interface ImportanceResult {
  importance: Importance;
  /** where the line came from: "cmdline", "/path/config:12", a config file, or '' */
  where: string;
  /** how it was found out */
  via: 'listconfigs' | 'config-files';
  /** why listconfigs could not be used (then via is config-files) */
  listconfigsError?: string;
}

/** An answer larger than this is not lightningd's listconfigs (a few tens of KiB in practice). */
const MAX_RESPONSE = 16 << 20;

/** Asks lightningd over its JSON-RPC socket; rejects on any failure or after timeoutMs. */
export function listconfigs(rpcPath: string, timeoutMs: number): Promise<unknown> {
  return new Promise((resolvePromise, reject) => {
    const s = connect(rpcPath);
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (err: Error | null, value?: unknown): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      if (err) reject(err);
      else resolvePromise(value);
    };
    const timer = setTimeout(() => finish(new Error(`no answer from ${rpcPath} within ${timeoutMs} ms`)), timeoutMs);
    s.once('connect', () => {
      s.write(JSON.stringify({ jsonrpc: '2.0', id: 'clnvault:listconfigs#1', method: 'listconfigs', params: {} }));
    });
    s.on('data', (d: Buffer) => {
      size += d.length;
      if (size > MAX_RESPONSE) return finish(new Error(`the answer from ${rpcPath} exceeds ${MAX_RESPONSE} bytes`));
      chunks.push(d);
      // lightningd sends one JSON object per response (followed by "\n\n"); it is complete when it parses
      const text = Buffer.concat(chunks).toString('utf8').trim();
      if (!text.endsWith('}')) return;
      let msg: { result?: unknown; error?: { message?: string } };
      try {
        msg = JSON.parse(text) as typeof msg;
      } catch {
        return; // not complete yet
      }
      if (msg.error) return finish(new Error(`listconfigs failed: ${msg.error.message ?? JSON.stringify(msg.error)}`));
      finish(null, msg.result);
    });
    s.once('error', (e) => finish(e));
    s.once('close', () => finish(new Error(`${rpcPath} closed the connection without an answer`)));
  });
}

interface MultiOption {
  values_str?: unknown;
  sources?: unknown;
}

/** Reads listconfigs' `configs.important-plugin` and `configs.plugin` (Core Lightning >= 23.08). */
export function importanceFromListconfigs(result: unknown, self: string, lightningDir: string): { importance: Importance; where: string } {
  const configs = (result as { configs?: Record<string, MultiOption> } | null)?.configs;
  if (typeof configs !== 'object' || configs === null) throw new Error('listconfigs returned no "configs" object');
  let found: { importance: Importance; where: string } | null = null;
  for (const [name, importance] of [
    ['important-plugin', 'important'],
    ['plugin', 'plain'],
  ] as const) {
    const opt = configs[name];
    if (opt === undefined) continue;
    const values = Array.isArray(opt.values_str) ? opt.values_str : [];
    const sources = Array.isArray(opt.sources) ? opt.sources : [];
    values.forEach((v, i) => {
      if (found?.importance === 'important' || typeof v !== 'string') return;
      if (samePath(v, self, lightningDir)) found = { importance, where: typeof sources[i] === 'string' ? sources[i] : '' };
    });
  }
  return found ?? { importance: 'unknown', where: '' };
}

function samePath(value: string, self: string, lightningDir: string): boolean {
  const expanded = value.startsWith('~/') ? join(homedir(), value.slice(2)) : value;
  // lightningd resolves a relative plugin path against its own working directory; the base and network
  // directories are the usual ones
  const candidates = isAbsolute(expanded) ? [expanded] : [resolve(lightningDir, expanded), resolve(dirname(lightningDir), expanded)];
  return candidates.some((c) => real(c) === self);
}

/** The whole answer: listconfigs first, the config-file guess only if that fails. */
export async function findImportance(
  rpcFile: string | undefined,
  lightningDir: string | undefined,
  selfPath: string,
  timeoutMs = 30_000,
): Promise<ImportanceResult> {
  const self = real(selfPath);
  if (!self) return { importance: 'unknown', where: '', via: 'listconfigs', listconfigsError: `cannot resolve ${selfPath}` };
  let error: string;
  if (typeof rpcFile === 'string' && rpcFile.length > 0) {
    const dir = lightningDir ?? process.cwd();
    const rpcPath = isAbsolute(rpcFile) ? rpcFile : join(dir, rpcFile);
    try {
      const r = await listconfigs(rpcPath, timeoutMs);
      return { ...importanceFromListconfigs(r, self, dir), via: 'listconfigs' };
    } catch (e) {
      error = (e as Error).message;
    }
  } else {
    error = 'the init message names no rpc-file';
  }
  return { ...detectImportanceFromFiles(lightningDir, self), via: 'config-files', listconfigsError: error };
}

/** The log line for a result; null when there is nothing to say (important-plugin, as it should be). */
export function importanceLog(r: ImportanceResult): { level: 'warn' | 'info' | 'debug'; message: string } {
  const fallback = r.via === 'config-files' ? ` (listconfigs failed: ${r.listconfigsError}; guessed from config files, includes not followed)` : '';
  if (r.importance === 'plain') {
    return {
      level: 'warn',
      message:
        `clnvault: loaded with plugin= (${r.where || 'source unknown'}), not important-plugin=: if this plugin dies, lightningd ` +
        `keeps running and committing without a backup. Change it to important-plugin=${fallback}`,
    };
  }
  if (r.importance === 'unknown') {
    return {
      level: 'info',
      message:
        `clnvault: make sure this plugin is loaded with important-plugin=..., so that lightningd stops if it dies` +
        (r.via === 'listconfigs' ? " (listconfigs lists it under neither plugin nor important-plugin: loaded from a plugin directory or with 'lightning-cli plugin start'?)" : fallback),
    };
  }
  return r.via === 'config-files'
    ? { level: 'info', message: `clnvault: loaded with important-plugin= (${r.where})${fallback}` }
    : { level: 'debug', message: `clnvault: loaded with important-plugin= (${r.where || 'source unknown'}), per listconfigs` };
}

/**
 * The fallback guess: lightningd's command line (/proc/<ppid>/cmdline) and its config files. Misses
 * included files, which is why it is only the fallback.
 */
function detectImportanceFromFiles(netDir: string | undefined, self: string): { importance: Importance; where: string } {
  const args = parentArgs();
  const fromArgs = scan(args.map((a) => a.replace(/^--/, '')), process.cwd(), self);
  if (fromArgs) return { importance: fromArgs, where: "lightningd's command line" };
  const confs: string[] = [];
  for (const a of args) if (a.startsWith('--conf=')) confs.push(a.slice('--conf='.length));
  if (netDir) confs.push(join(netDir, 'config'), join(dirname(netDir), 'config'));
  for (const c of confs) {
    let text: string;
    try {
      text = readFileSync(c, 'utf8');
    } catch {
      continue;
    }
    const found = scan(text.split('\n').map((l) => l.trim()), dirname(c), self);
    if (found) return { importance: found, where: c };
  }
  return { importance: 'unknown', where: '' };
}

function scan(lines: string[], base: string, self: string): Importance | null {
  let result: Importance | null = null;
  for (const line of lines) {
    const m = /^(important-plugin|plugin)=(.+)$/.exec(line);
    if (!m) continue;
    const p = m[2]!.trim();
    if (real(isAbsolute(p) ? p : resolve(base, p)) !== self) continue;
    if (m[1] === 'important-plugin') return 'important';
    result = 'plain';
  }
  return result;
}

function parentArgs(): string[] {
  try {
    return readFileSync(`/proc/${process.ppid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  } catch {
    return [];
  }
}

function real(p: string): string | null {
  try {
    return realpathSync(p);
  } catch {
    return null;
  }
}
