import { closeSync, fstatSync, openSync, readSync, type Stats } from 'node:fs';
import { KeyError } from './base.js';

/**
 * Reads a small secret file whole, refusing anything larger than `max` before reading it: the path
 * comes from the operator or a config file, and may name a device, a directory or a huge file.
 */
export function readSmallFile(path: string, max: number, what: string, missingFix = 'check the path'): { bytes: Buffer; stat: Stats } {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new KeyError(`${path}: no such file (expected ${what}); ${missingFix}`);
    if (code === 'EACCES' || code === 'EPERM') {
      throw new KeyError(`${path}: permission denied reading ${what}; run as its owner (the node's user) or as root`);
    }
    if (code === 'EISDIR') throw new KeyError(`${path} is a directory, not ${what}; give the file's path`);
    throw new KeyError(`${path}: cannot open ${what}: ${(e as Error).message}`);
  }
  try {
    const stat = fstatSync(fd);
    if (stat.isDirectory()) throw new KeyError(`${path} is a directory, not ${what}; give the file's path`);
    if (!stat.isFile()) throw new KeyError(`${path} is not a regular file (expected ${what}); give the file's path`);
    if (stat.size > max) throw new KeyError(`${path} is ${stat.size} bytes: too large for ${what} (at most ${max}); check the path`);
    const bytes = Buffer.alloc(stat.size);
    let off = 0;
    while (off < bytes.length) {
      const n = readSync(fd, bytes, off, bytes.length - off, off);
      if (n === 0) break;
      off += n;
    }
    if (off !== bytes.length) throw new KeyError(`${path} shrank while being read (${off} of ${stat.size} bytes); try again`);
    return { bytes, stat };
  } finally {
    closeSync(fd);
  }
}
