import { readFileSync, realpathSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';

/**
 * Was this plugin loaded with `important-plugin=`? lightningd does not say (neither the init
 * configuration nor the manifest carries it), yet it decides whether the node keeps running without a
 * backup when the plugin dies. So look where the answer is written: lightningd's command line
 * (/proc/<ppid>/cmdline) and its config files. Best effort: 'unknown' when neither mentions us.
 */
export type Importance = 'important' | 'plain' | 'unknown';

export function detectImportance(netDir: string | undefined, selfPath: string = process.argv[1] ?? ''): { importance: Importance; where: string } {
  const self = real(selfPath);
  if (!self) return { importance: 'unknown', where: '' };
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
