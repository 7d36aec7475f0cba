import Database from './sqlite.js';
import { existsSync, readdirSync, readFileSync, readlinkSync, realpathSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';

/**
 * Is a lightningd using this network directory right now? Two independent signs, either is enough:
 * its JSON-RPC socket accepts a connection (how lightning-cli finds it), or some process holds the
 * database file open (found through /proc/<pid>/fd on Linux).
 */
export async function nodeRunning(netDir: string, dbPath: string): Promise<string | null> {
  const rpc = join(netDir, 'lightning-rpc');
  if (existsSync(rpc) && (await canConnect(rpc))) return `lightningd answers on ${rpc}`;
  const holder = processHolding(dbPath);
  if (holder) return `process ${holder.pid} (${holder.name}) has ${dbPath} open`;
  return null;
}

function canConnect(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
    s.setTimeout(2000, () => done(false));
  });
}

function processHolding(file: string): { pid: number; name: string } | null {
  let target: string;
  try {
    target = realpathSync(file);
  } catch {
    return null;
  }
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((d) => /^\d+$/.test(d));
  } catch {
    return null;
  }
  for (const pid of pids) {
    if (Number(pid) === process.pid) continue;
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      let link: string;
      try {
        link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      if (link === target) {
        let name = '?';
        try {
          name = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
        } catch {
          // the process may have exited meanwhile
        }
        return { pid: Number(pid), name };
      }
    }
  }
  return null;
}

/**
 * Does a process hold the backup's writer lock (`<backup>.writer`, see backends/file/writer-lock.ts)?
 * The holder keeps an EXCLUSIVE SQLite lock on that side file for its whole life, so a read-only
 * connection that cannot read it means a writer (normally the plugin of a running lightningd) is there.
 * Read-only on purpose: probing must not create the side file on a backup disk that may be read-only.
 */
export function writerLockHeld(backupFile: string): boolean {
  const side = `${backupFile}.writer`;
  if (!existsSync(side)) return false;
  let db: Database.Database;
  try {
    db = new Database(side, { readonly: true, fileMustExist: true, timeout: 0 });
  } catch {
    return false;
  }
  try {
    db.prepare('SELECT count(*) FROM sqlite_master').get();
    return false;
  } catch (e) {
    const code = (e as { code?: string }).code ?? '';
    return code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED');
  } finally {
    db.close();
  }
}
