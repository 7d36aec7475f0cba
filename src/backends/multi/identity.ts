import { closeSync, openSync, readSync } from 'node:fs';
import { backupPath, isRemoteUrl } from '../open.js';
import { FILE_HEADER_LEN, FILE_MAGIC } from '../file/v2/codec.js';

/**
 * The backup id of a file destination (hex), null for a format without one (v1, a remote URL) or a file
 * that cannot be read (its opening says why).
 */
export function fileIdentity(url: string, cwd: string): string | null {
  if (isRemoteUrl(url)) return null;
  let fd: number;
  try {
    fd = openSync(backupPath(url, cwd), 'r');
  } catch {
    return null;
  }
  try {
    const h = Buffer.alloc(FILE_HEADER_LEN);
    if (readSync(fd, h, 0, FILE_HEADER_LEN, 0) < FILE_HEADER_LEN || !h.subarray(0, 8).equals(FILE_MAGIC)) return null;
    return h.subarray(16, 32).toString('hex');
  } finally {
    closeSync(fd);
  }
}


/**
 * What a destination whose recorded backup id is `known` and which now shows `now` is: the same backup,
 * one re-created empty (it holds nothing to distrust: re-seeded, its new id recorded), or REPLACED.
 */
export function compareIdentity(known: string | undefined, now: string | null, empty: boolean): 'same' | 'recreated' | 'replaced' {
  if (known === undefined || now === null || known === now) return 'same';
  return empty ? 'recreated' : 'replaced';
}

export function replacedMessage(known: string, now: string): string {
  return (
    `REPLACED: its backup id is ${now}, but the one recorded in clnvault-destinations.json when it was first seen is ${known}: ` +
    `it is another backup (another node's, or a copy from elsewhere), whatever versions it holds`
  );
}
