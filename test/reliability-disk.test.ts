/**
 * Disk faults on a real filesystem: a size-limited tmpfs holds the backup while the simulator drives the
 * real plugin. A full disk, a mount that comes back read-only, and a destination that vanishes must each
 * make the plugin answer the hook with an error (lightningd then stops without committing), lose nothing
 * acknowledged, and let a restart continue once the disk is back.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, test } from 'node:test';
import { createBackup, openReader } from '../src/backends/open.js';
import { restoreBackup } from '../src/restore/restore.js';
import { SimNode } from '../src/sim/lightningd.js';
import { Workload } from '../src/sim/workload.js';
import { PLUGIN } from './helpers/sim-fixtures.js';
import { dump } from './helpers/sqlite.js';
import { mountTmpfs, type Tmpfs } from './helpers/rel-tmpfs.js';

const cleanups: Array<() => void | Promise<void>> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

interface Setup {
  fs: Tmpfs;
  dir: string;
  netDir: string;
  backupDir: string;
  url: string;
  node: SimNode;
}

/** A node whose backup lives on its own tmpfs of `size`; null (with the test skipped) where mounting is not allowed. */
function setup(t: { skip(msg: string): void }, size: string): Setup | null {
  const m = mountTmpfs(size);
  if (!('dir' in m)) {
    t.skip(m.skip);
    return null;
  }
  const dir = mkdtempSync(join(tmpdir(), 'clnvault-disk-'));
  const netDir = join(dir, 'regtest');
  mkdirSync(netDir);
  const backupDir = join(m.dir, 'vault');
  mkdirSync(backupDir);
  const url = pathToFileURL(join(backupDir, 'node.bkp')).href;
  createBackup(url, dir, 'v2');
  SimNode.writeBackupLock(netDir, url);
  const node = new SimNode({ netDir, pluginPath: PLUGIN, hookSafetyTimeoutMs: 60_000, exitGraceMs: 5_000 });
  cleanups.push(() => m.unmount());
  cleanups.push(async () => {
    await node.stop().catch(() => undefined);
    rmSync(dir, { recursive: true, force: true });
  });
  return { fs: m, dir, netDir, backupDir, url, node };
}

function restoredDump(s: Setup): { dump: string; head: number } {
  const out = join(s.dir, `restored-${Date.now()}-${Math.random()}.sqlite3`);
  const reader = openReader(s.url, s.dir);
  try {
    const r = restoreBackup(reader, out);
    return { dump: dump(out), head: r.head };
  } finally {
    reader.close();
    rmSync(out, { force: true });
  }
}

/** The torn tail a reader finds at the end of the backup, or null. */
function tornTail(s: Setup): { offset: number; bytes: number } | null {
  const reader = openReader(s.url, s.dir);
  try {
    const p = reader.problems().find((x) => x.kind === 'torn-tail');
    const m = p ? /^cut (\d+) bytes at offset (\d+)/.exec(p.message) : null;
    return m ? { bytes: Number(m[1]), offset: Number(m[2]) } : null;
  } finally {
    reader.close();
  }
}

/** Sends transactions until one is not answered continue; returns how many were committed and the failure. */
async function writeUntilRefused(s: Setup, wl: Workload, max: number, size: number): Promise<{ committed: number; detail: string | null }> {
  for (let i = 0; i < max; i++) {
    const b = wl.datastore(size).batches[0]!;
    if (b.kind !== 'tx') continue;
    const r = await s.node.transaction(b.statements);
    if (r.answered === 'error') return { committed: i, detail: r.detail };
  }
  return { committed: max, detail: null };
}

describe('disk faults', () => {
  test('the disk fills up during appends: the hook gets an error, nothing acknowledged is lost, a restart after freeing space continues', { timeout: 120_000 }, async (t) => {
    const s = setup(t, '6m');
    if (!s) return;
    await s.node.boot();
    // leave about 1.5 MB free, then write 200-400 KB transactions (hex doubles them) until the disk is full
    const free = statfsSync(s.fs.dir).bavail * statfsSync(s.fs.dir).bsize;
    const filler = join(s.fs.dir, 'filler');
    writeFileSync(filler, Buffer.alloc(Math.max(0, free - 1_500_000)));
    const wl = Workload.fromDb(s.node.dbPath, 3);
    const r = await writeUntilRefused(s, wl, 100, 150_000);
    assert.ok(r.detail !== null, 'the disk never filled up');
    assert.ok(r.committed > 0, 'some writes fit before the disk was full');
    assert.match(r.detail!, /ENOSPC|no space/i, r.detail!);
    assert.equal(s.node.state, 'crashed', 'lightningd stops without committing');
    const dbDv = s.node.dataVersion();
    const got = restoredDump(s);
    assert.equal(got.head, dbDv, 'the backup holds exactly what the node committed');
    assert.equal(got.dump, dump(s.node.dbPath));

    rmSync(filler);
    await s.node.boot();
    assert.ok(s.node.logs.some((l) => /repaired the backup on open|versions match up|never committed/.test(l.message)));
    const more = await writeUntilRefused(s, Workload.fromDb(s.node.dbPath, 4), 5, 150_000);
    assert.equal(more.detail, null, more.detail ?? '');
    await s.node.stop();
    assert.equal(restoredDump(s).dump, dump(s.node.dbPath));
  });

  test('still full at the next start: the plugin refuses or cuts its torn tail and goes on; never loses a committed write', { timeout: 120_000 }, async (t) => {
    const s = setup(t, '4m');
    if (!s) return;
    await s.node.boot();
    const free = statfsSync(s.fs.dir).bavail * statfsSync(s.fs.dir).bsize;
    writeFileSync(join(s.fs.dir, 'filler'), Buffer.alloc(Math.max(0, free - 800_000)));
    const r = await writeUntilRefused(s, Workload.fromDb(s.node.dbPath, 5), 100, 120_000);
    assert.ok(r.detail !== null);
    assert.match(r.detail!, /ENOSPC|no space/i, r.detail!);
    let cuts = 0;
    for (let attempt = 0; attempt < 3; attempt++) {
      const torn = tornTail(s);
      const seen = s.node.logs.length;
      let refused: string | null = null;
      try {
        await s.node.boot();
        // a boot that succeeded must have every committed write backed up
        await s.node.stop();
      } catch (e) {
        // refused: the node did not commit the refused write
        refused = (e as Error).message;
      }
      const logs = s.node.logs.slice(seen).map((l) => l.message);
      if (refused !== null) assert.match(refused, /ENOSPC|no space/i, `attempt ${attempt}: refused for the full disk, not for anything else`);
      if (torn !== null) {
        // the plugin opens the backup before it answers anything: the torn tail it found is cut, and said so
        assert.ok(
          logs.some((m) => m.includes(`repaired the backup on open: cut ${torn.bytes} bytes at offset ${torn.offset}`)),
          `attempt ${attempt}: the torn tail (${torn.bytes} bytes at ${torn.offset}) was not cut at start; plugin log: ${logs.join(' | ')}`,
        );
        cuts++;
      }
      const got = restoredDump(s);
      assert.equal(got.head, s.node.dataVersion());
      assert.equal(got.dump, dump(s.node.dbPath));
    }
    assert.ok(cuts > 0, 'a write refused for the full disk left a torn tail, which a start cut');
  });

  test('the destination is read-only at start-up (a mount that came back ro): every write refused with the reason; rw again: continues', { timeout: 120_000 }, async (t) => {
    const s = setup(t, '16m');
    if (!s) return;
    await s.node.boot();
    await writeUntilRefused(s, Workload.fromDb(s.node.dbPath, 6), 5, 2000);
    await s.node.stop();
    const dv = s.node.dataVersion();
    s.fs.remount('ro');
    await s.node.start();
    const r = await s.node.transaction(["UPDATE vars SET intval = 1 WHERE name = 'nothing';"]);
    assert.equal(r.answered, 'error');
    assert.match(r.answered === 'error' ? r.detail : '', /read-only|EROFS/i);
    assert.equal(s.node.dataVersion(), dv, 'nothing committed');
    s.fs.remount('rw');
    await s.node.boot();
    assert.equal(restoredDump(s).dump, dump(s.node.dbPath));
  });

  test('the destination vanishes (disk not mounted at start-up): refused with the reason; mounted again: continues', { timeout: 120_000 }, async (t) => {
    const s = setup(t, '16m');
    if (!s) return;
    await s.node.boot();
    await s.node.stop();
    const dv = s.node.dataVersion();
    // what an unplugged disk looks like to the next start: the mount point is there, the files are not
    const hidden = join(s.fs.dir, 'elsewhere');
    mkdirSync(hidden);
    const { renameSync } = await import('node:fs');
    renameSync(s.backupDir, join(hidden, 'vault'));
    await s.node.start();
    const r = await s.node.transaction(["UPDATE vars SET intval = 1 WHERE name = 'nothing';"]);
    assert.equal(r.answered, 'error');
    assert.match(r.answered === 'error' ? r.detail : '', /does not exist|mounted/);
    assert.equal(s.node.dataVersion(), dv);
    renameSync(join(hidden, 'vault'), s.backupDir);
    await s.node.boot();
    assert.equal(restoredDump(s).dump, dump(s.node.dbPath));
  });

  test('the destination vanishes while the plugin runs (directory removed, or a mount detached): the next write is refused, not acknowledged into an unreachable file', { timeout: 120_000 }, async (t) => {
    const s = setup(t, '16m');
    if (!s) return;
    await s.node.boot();
    const dv = s.node.dataVersion();
    rmSync(s.backupDir, { recursive: true, force: true });
    const r = await s.node.transaction(["UPDATE vars SET intval = 1 WHERE name = 'nothing';"]);
    assert.equal(r.answered, 'error', 'the plugin acknowledged a write into a backup file that no longer exists');
    assert.match(r.answered === 'error' ? r.detail : '', /no longer reachable/);
    assert.equal(s.node.dataVersion(), dv);
  });

  test('the mount is detached while the plugin runs (umount -l, like a dropped NFS/SSHFS mount): refused; mounted again: continues', { timeout: 120_000 }, async (t) => {
    const s = setup(t, '16m');
    if (!s) return;
    await s.node.boot();
    await s.node.stop();
    const saved = join(s.dir, 'saved.bkp');
    await s.node.boot();
    const dv = s.node.dataVersion();
    // keep a copy of what the detached disk holds, to "plug it back in" afterwards
    const { copyFileSync } = await import('node:fs');
    copyFileSync(join(s.backupDir, 'node.bkp'), saved);
    s.fs.unmount();
    cleanups.push(() => rmSync(s.fs.dir, { recursive: true, force: true }));
    const r = await s.node.transaction(["UPDATE vars SET intval = 1 WHERE name = 'nothing';"]);
    assert.equal(r.answered, 'error', 'acknowledged into a detached filesystem');
    assert.match(r.answered === 'error' ? r.detail : '', /no longer reachable/);
    assert.equal(s.node.dataVersion(), dv);
    mkdirSync(s.backupDir, { recursive: true });
    copyFileSync(saved, join(s.backupDir, 'node.bkp'));
    await s.node.boot();
    assert.equal(restoredDump(s).dump, dump(s.node.dbPath));
  });
});
