import { chownSync, statSync, type Stats } from 'node:fs';
import { dirname } from 'node:path';

/**
 * lightningd (and so the plugin) runs as the user who owns the network directory; clnvault is often run
 * as root. A root-owned 0600 backup is then one the plugin cannot open, so files init creates are given
 * to that user, and status checks access as that user rather than as itself.
 */

export interface Owner {
  uid: number;
  gid: number;
}

export function ownerOf(path: string): Owner {
  const st = statSync(path);
  return { uid: st.uid, gid: st.gid };
}

/**
 * Can `who` do `want` (r, w or rw) on a file with stat `st`? By its mode bits, the way the kernel checks
 * them, with one approximation: of the user's groups only the owner's primary group (the network
 * directory's group) is known here, so access through another supplementary group is missed.
 */
export function canAccess(st: Stats, who: Owner, want: 'r' | 'w' | 'rw' | 'wx'): boolean {
  if (who.uid === 0) return true;
  const bits = st.uid === who.uid ? (st.mode >> 6) & 7 : st.gid === who.gid ? (st.mode >> 3) & 7 : st.mode & 7;
  const need = (want.includes('r') ? 4 : 0) | (want.includes('w') ? 2 : 0) | (want.includes('x') ? 1 : 0);
  return (bits & need) === need;
}

/** What the plugin, as `who`, needs of a backup file: read and write it, and create its side files beside it. */
export function backupAccessProblem(file: string, who: Owner): string | null {
  let st: Stats;
  let dst: Stats;
  try {
    st = statSync(file);
    dst = statSync(dirname(file));
  } catch (e) {
    return `cannot stat ${file}: ${(e as Error).message}`;
  }
  const missing: string[] = [];
  if (!canAccess(st, who, 'rw')) missing.push(`read and write ${file} (owner uid ${st.uid}, mode ${(st.mode & 0o777).toString(8)})`);
  if (!canAccess(dst, who, 'wx')) {
    missing.push(`create files in ${dirname(file)} (its writer lock and compaction files; owner uid ${dst.uid}, mode ${(dst.mode & 0o777).toString(8)})`);
  }
  return missing.length === 0 ? null : `the node's user (uid ${who.uid}) cannot ${missing.join(', nor ')}`;
}

/** As root, hand created files to the network directory's owner; otherwise say what to run. Returns what was done or is needed. */
export function giveTo(paths: string[], who: Owner): { done: boolean; hint: string | null } {
  const me = process.getuid?.() ?? -1;
  if (me === who.uid) return { done: true, hint: null };
  if (me === 0) {
    for (const p of paths) chownSync(p, who.uid, who.gid);
    return { done: true, hint: `gave ${paths.join(', ')} to uid ${who.uid} (the owner of the network directory, as lightningd runs)` };
  }
  return {
    done: false,
    hint:
      `these files belong to uid ${me}, but lightningd runs as the owner of the network directory (uid ${who.uid}): ` +
      `run 'sudo chown ${who.uid}:${who.gid} ${paths.join(' ')}' before starting lightningd`,
  };
}
