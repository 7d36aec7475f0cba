import { closeSync, fstatSync, fsyncSync, openSync, constants, statSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';

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
