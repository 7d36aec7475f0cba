import { createHmac, randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { createBackup } from '../backends/open.js';
import { fsyncDir } from '../backends/file/fsutil.js';
import { NODE_NAME } from '../backends/socket/url.js';
import type { BackupFormat } from '../engine/entries.js';
import { ServedBackup } from './store.js';

/**
 * clnvault's own mode: one server, many nodes. DIR/nodes/NAME/ holds a node's key (its credential, the
 * allow-list is the set of key files) and its backup. A connection's TLS-PSK identity is the only thing
 * that selects a backup, and the name is checked against NODE_NAME before it touches a path, so a node
 * reaches its own backup and nothing else. An unknown name gets a key no one has, so it fails exactly
 * like a wrong key: a stranger cannot even learn which node names exist.
 */

export class NodeRegistry {
  private readonly open = new Map<string, ServedBackup>();
  private readonly decoySecret = randomBytes(32);

  constructor(readonly dir: string) {
    if (!existsSync(join(dir, 'nodes'))) {
      throw new Error(`${dir} holds no nodes/ directory; create the first node with 'clnvault server add-node --dir ${dir} NAME'`);
    }
  }

  /** The key TLS checks the handshake against: the node's, or a decoy for a name that does not exist. */
  keyFor(name: string): Buffer {
    if (NODE_NAME.test(name)) {
      try {
        const text = readFileSync(join(this.dir, 'nodes', name, 'key'), 'utf8').trim();
        if (/^[0-9a-f]{64}$/i.test(text)) return Buffer.from(text, 'hex');
      } catch {
        // no such node (or its key was removed to revoke it)
      }
    }
    return createHmac('sha256', this.decoySecret).update(name).digest();
  }

  /** Only called after a handshake with the node's own key succeeded. */
  backup(name: string): ServedBackup {
    if (!NODE_NAME.test(name)) throw new Error(`invalid node name ${JSON.stringify(name)}`);
    let b = this.open.get(name);
    if (b === undefined) {
      b = ServedBackup.open(`file://${join(this.dir, 'nodes', name, 'backup.bkp')}`, this.dir);
      this.open.set(name, b);
    }
    return b;
  }

  closeAll(): void {
    for (const b of this.open.values()) b.close();
    this.open.clear();
  }
}

/** Creates DIR/nodes/NAME/ with a fresh key (0600) and an empty backup; returns the key as hex. */
export function addNode(dir: string, name: string, format: BackupFormat): string {
  if (!NODE_NAME.test(name)) throw new Error(`${JSON.stringify(name)} is not a node name (letters, digits, _ . -; at most 64, not starting with . _ -)`);
  const nodeDir = join(dir, 'nodes', name);
  if (existsSync(nodeDir)) throw new Error(`node ${name} already exists in ${dir} (${nodeDir}); remove that directory first to re-create it`);
  mkdirSync(join(dir, 'nodes'), { recursive: true, mode: 0o700 });
  mkdirSync(nodeDir, { mode: 0o700 });
  const key = randomBytes(32).toString('hex');
  const keyPath = join(nodeDir, 'key');
  const fd = openSync(keyPath, 'wx', 0o600);
  try {
    writeSync(fd, `${key}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  createBackup(`file://${join(nodeDir, 'backup.bkp')}`, dir, format);
  fsyncDir(keyPath);
  return key;
}
