import { closeSync, fsyncSync, openSync, constants, writeSync } from 'node:fs';
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
