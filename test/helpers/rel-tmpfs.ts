/**
 * A real, size-limited filesystem for the reliability suites: a tmpfs mounted on a fresh directory (root
 * only, as in CI). Returns null, with the reason, where mounting is not permitted, so that a suite can skip
 * with a clear message rather than fail.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Tmpfs {
  dir: string;
  remount(opts: string): void;
  unmount(): void;
}

export function mountTmpfs(size: string): Tmpfs | { skip: string } {
  const dir = mkdtempSync(join(tmpdir(), 'clnvault-tmpfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    const why = (e as { stderr?: Buffer }).stderr?.toString().trim() || (e as Error).message;
    return { skip: `cannot mount a tmpfs here (needs root, as in CI): ${why}` };
  }
  let mounted = true;
  return {
    dir,
    remount(opts: string) {
      execFileSync('mount', ['-o', `remount,${opts}`, dir], { stdio: 'pipe' });
    },
    unmount() {
      if (!mounted) return;
      // a lazy unmount still detaches the mount if a killed child held a file open a moment ago
      execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
      mounted = false;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
