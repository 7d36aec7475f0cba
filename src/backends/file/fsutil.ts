import { closeSync, fstatSync, fsyncSync, lstatSync, openSync, constants, readlinkSync, statSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { BackupError } from '../../engine/entries.js';

/** After a create or rename, the directory entry itself must reach the disk or the file can vanish on power loss. */
export function fsyncDir(path: string): void {
  const fd = openSync(dirname(path), constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** pwrite until every byte is written: a short write on a full or flaky disk must not go unnoticed. */
export function writeFully(fd: number, buf: Uint8Array, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = writeSync(fd, buf, done, buf.length - done, position + done);
    if (n <= 0) throw new Error(`short write at offset ${position + done}`);
    done += n;
  }
}

export interface FileIdentity {
  ino: number;
  dev: number;
}

export function identityOf(fd: number): FileIdentity {
  const st = fstatSync(fd);
  return { ino: st.ino, dev: st.dev };
}

/**
 * Throws unless `path` still names the file open as `fd`. A write into a file whose directory was removed,
 * whose mount was detached (umount -l, a dropped NFS/SSHFS mount) or that was replaced behind our back
 * succeeds and syncs, yet nobody will ever read it: acknowledging it would lose the transaction.
 */
export function assertStillNamed(fd: number, path: string, known?: FileIdentity): void {
  // The open file's identity never changes, so a writer passes it in and this costs one stat per append.
  const open = known ?? fstatSync(fd);
  let named;
  try {
    named = statSync(path);
  } catch (e) {
    throw new Error(
      `the backup file is no longer reachable at ${path} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}): ` +
        `its directory was removed or its disk unmounted`,
    );
  }
  if (named.ino !== open.ino || named.dev !== open.dev) {
    throw new Error(`${path} now names a different file than the one being written: the backup was replaced or moved`);
  }
}

/**
 * assertStillNamed after every append, without a stat of the backup file itself on the common path.
 * Linux 6.13+ keeps file timestamps coarse (one clock tick) until someone reads them; a stat marks them
 * read, so the next write takes a fine-grained time and dirties the inode. With a stat after each append
 * every append dirtied the inode and its fdatasync took ~65 µs longer (ext4, 1 KB records: 190 vs 125 µs;
 * bench/README.md, 2026-12-04), which cancelled what writing into preallocated space saves.
 *
 * The common path instead reads where the open file is (/proc/self/fd/N: the kernel's own path of the
 * open file, with " (deleted)" once its name is gone, another path once it or a directory above it moved,
 * a path inside the detached tree after `umount -l`) and stats the directory the path names (a symlink
 * switched or another filesystem mounted over it changes its identity). Both as at the last full check
 * means the path still names the open file. Anything else, or no /proc, falls back to the full stat
 * check, which throws with the reason or, if the file is in fact still named (a parent renamed and
 * linked back), takes the new shape as the baseline.
 */
export class NameGuard {
  private readonly proc: string;
  private readonly identity: FileIdentity;
  /** the open file's path as /proc shows it at the last full check; null: no fast path, stat every time */
  private link: string | null = null;
  private dir: FileIdentity | null = null;

  constructor(
    private readonly fd: number,
    private readonly path: string,
  ) {
    this.proc = `/proc/self/fd/${fd}`;
    this.identity = identityOf(fd);
    this.learn();
  }

  /** Throws unless `path` still names the open file (the messages of assertStillNamed). */
  check(): void {
    if (this.link !== null) {
      try {
        if (readlinkSync(this.proc) === this.link) {
          const d = statSync(dirname(this.path));
          if (d.ino === this.dir!.ino && d.dev === this.dir!.dev) return;
        }
      } catch {
        // the full check below says what is wrong
      }
    }
    assertStillNamed(this.fd, this.path, this.identity);
    if (this.link !== null) this.learn();
  }

  /** The baseline, confirmed by a full check made after it was read (a change in between shows there). */
  private learn(): void {
    this.link = null;
    this.dir = null;
    try {
      // a symlink as the file's own name: /proc shows its target, which says nothing about the link
      if (lstatSync(this.path).isSymbolicLink()) return;
      const link = readlinkSync(this.proc);
      const d = statSync(dirname(this.path));
      const named = statSync(this.path);
      if (named.ino !== this.identity.ino || named.dev !== this.identity.dev) return;
      this.dir = { ino: d.ino, dev: d.dev };
      this.link = link;
    } catch {
      // no /proc (or the path is gone already): every check is a full one, which reports it
    }
  }
}

/** Opens a backup file for reading; a missing or unreadable one is a BackupError naming it. */
export function openBackupFile(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new BackupError(code === 'ENOENT' ? `${path} does not exist` : `cannot open ${path}: ${(e as Error).message}`, path);
  }
}

/** Opens the database a snapshot is taken of; failing, a BackupError of the backup at `location`. */
export function openSnapshotSource(dbPath: string, location: string): number {
  try {
    return openSync(dbPath, 'r');
  } catch (e) {
    throw new BackupError(`cannot read the snapshot source ${dbPath}: ${(e as Error).message}`, location);
  }
}
