/**
 * data_version arithmetic and the rules that decide what to do with each db_write.
 *
 * data_version is an unsigned 32-bit counter that lightningd lets wrap, so every comparison here is
 * serial-number arithmetic (RFC 1982 style): `a` is ahead of `b` when (a - b) mod 2^32 is in (0, 2^31).
 */

const MOD = 0x1_0000_0000;

export function u32(n: number): number {
  // for an integer (a double holds each exactly) ToUint32 is that same modulo, without two floating-point
  // remainders: the open scan plans every entry through here; anything else keeps the arithmetic (NaN stays NaN)
  return Number.isInteger(n) ? n >>> 0 : ((n % MOD) + MOD) % MOD;
}

/** Signed distance from `b` to `a` in [-2^31, 2^31). */
export function serialDiff(a: number, b: number): number {
  const d = u32(a - b);
  return d >= 0x8000_0000 ? d - MOD : d;
}

export function isValidDataVersion(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < MOD;
}

const PRAGMA_RE = /^\s*PRAGMA\b/i;

/**
 * lightningd reports `PRAGMA foreign_keys = OFF/ON` around table rebuilds as their own db_write calls,
 * outside any transaction and without bumping data_version: such a batch carries the version the DB
 * already has, not the next one.
 *
 * The one rule for "PRAGMA-only", used by the hook and by every reader, at any size. It takes any iterable
 * and stops at the first statement that is not a PRAGMA, so a reader can hand it statements decoded one
 * at a time from a large record (usually only the first one is ever decoded).
 */
export function isPragmaOnly(statements: Iterable<string>): boolean {
  let any = false;
  for (const s of statements) {
    if (!PRAGMA_RE.test(s)) return false;
    any = true;
  }
  return any;
}

/**
 * Whether a reader must decide if the change at `version` is PRAGMA-only: only when it does not move past
 * the entry before it (`prev`, null when unknown: the first entry, or one after damage or a snapshot). A
 * later entry with a higher version never consults the flag (plan.ts), so the readers skip the decoding
 * there, which is nearly always.
 */
export function pragmaMatters(prev: number | null, version: number): boolean {
  return prev === null || serialDiff(version, prev) <= 0;
}

export type Decision =
  | { action: 'append' }
  /** the backup's head entries were never committed by the node: drop them, then append */
  | { action: 'rewind' }
  | { action: 'refuse'; problem: 'node-behind' | 'node-ahead' | 'gap' | 'regression' | 'repeat' | 'no-writes'; message: string };

/**
 * The first db_write after the plugin started. `head` is the backup's newest version (0 when empty).
 * The node's committed version is dv-1 for a normal batch (it ends with the data_version bump) and dv
 * for a PRAGMA-only batch.
 */
export function decideFirst(head: number, dv: number, pragmaOnly: boolean, headIsSnapshot: boolean): Decision {
  const node = pragmaOnly ? dv : u32(dv - 1);
  const d = serialDiff(node, head);
  if (d === 0) return { action: 'append' };
  if (d === -1 && !headIsSnapshot) return { action: 'rewind' };
  if (d < 0) {
    return {
      action: 'refuse',
      problem: 'node-behind',
      message:
        `the node's database is at data_version ${node} but the backup already holds version ${head}: ` +
        `the node has lost committed state (started from an old copy of lightningd.sqlite3?). ` +
        `Starting it would broadcast revoked states. Move lightningd.sqlite3 aside and restore it from the backup ` +
        `with 'clnvault restore <backup-url> <lightning-dir>/lightningd.sqlite3'`,
    };
  }
  return {
    action: 'refuse',
    problem: 'node-ahead',
    message:
      `the node's database is at data_version ${node} but the backup only holds up to version ${head}: ` +
      `transactions were committed without being backed up (a clean stop commits after plugins exit, or the ` +
      `node ran without the plugin). Enable re-baselining ("rebaseline": true in backup.lock, the default) so ` +
      `the plugin snapshots the live database at start-up, or re-create the backup with ` +
      `'clnvault init --lightning-dir <dir> <new-url>' while the node is stopped`,
  };
}

/**
 * Every db_write after the first one of this run. `last` is the version of the previous write;
 * `pragmaOnly` is consulted only for a repeated version (the hook decodes nothing otherwise).
 */
export function decideNext(last: number, dv: number, pragmaOnly: () => boolean): Decision {
  const d = serialDiff(dv, last);
  if (d === 1) return { action: 'append' };
  if (d === 0) {
    // only a PRAGMA-only batch keeps the version: any other batch at the same version would make every
    // reader take the earlier one for a write that was never committed, and drop it
    if (pragmaOnly()) return { action: 'append' };
    return {
      action: 'refuse',
      problem: 'repeat',
      message:
        `data_version ${dv} came again for a batch that is not PRAGMA-only: lightningd bumps data_version with every ` +
        `transaction, so storing it would make the backup drop the earlier batch at ${dv} as never committed`,
    };
  }
  if (d > 1) {
    return {
      action: 'refuse',
      problem: 'gap',
      message: `data_version jumped from ${last} to ${dv} in the middle of a run: ${d - 1} transaction(s) were never sent to the backup`,
    };
  }
  return {
    action: 'refuse',
    problem: 'regression',
    message: `data_version went back from ${last} to ${dv} in the middle of a run`,
  };
}
