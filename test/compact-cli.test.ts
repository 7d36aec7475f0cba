/**
 * `clnvault compact`: refuses while the plugin of a running node holds the backup, compacts a backup no
 * one writes, clears what an interrupted compaction left (reference defect D12), and the result restores
 * to the node's database and keeps working with the plugin.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { backupPath, openReader } from '../src/backends/open.js';
import { compactingPath, listHistory, scratchPath } from '../src/compact/files.js';
import type { BackupFormat } from '../src/engine/entries.js';
import { sqliteDump } from '../src/sim/db.js';
import { Workload, runWorkload } from '../src/sim/workload.js';
import { restoreBackup } from '../src/restore/restore.js';
import { simScratch, type SimScratch } from './helpers/sim-fixtures.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const scratches: SimScratch[] = [];
after(async () => {
  for (const s of scratches) await s.cleanup();
});

function cli(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function restoredDump(sc: SimScratch, toVersion?: number): string {
  const reader = openReader(sc.backupUrl, sc.dir);
  const dest = join(sc.dir, `r-${Date.now()}-${Math.random().toString(36).slice(2)}.sqlite3`);
  try {
    restoreBackup(reader, dest, toVersion === undefined ? {} : { toVersion });
  } finally {
    reader.close();
  }
  return sqliteDump(dest);
}

for (const format of ['v2', 'v1'] as BackupFormat[]) {
  test(`clnvault compact (${format}): refusal while the plugin writes, success, debris, restart`, { timeout: 120_000 }, async () => {
    const sc = simScratch({}, format);
    scratches.push(sc);
    const { node } = sc;
    await node.boot();
    assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 3), 200)).failure, undefined);
    const path = backupPath(sc.backupUrl, sc.dir);

    const refused = cli('compact', sc.backupUrl);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(refused.stderr, /already open for writing/);
    assert.ok(!existsSync(compactingPath(path)));

    await node.stop();
    const dumpBefore = sqliteDump(node.dbPath);
    // what a compaction killed half-way leaves behind
    writeFileSync(compactingPath(path), 'half-built');
    writeFileSync(scratchPath(path), 'scratch');
    const ok = cli('compact', '--json', sc.backupUrl);
    assert.equal(ok.code, 0, ok.stderr);
    const stats = JSON.parse(ok.stdout) as { before: { version_count: number; backupsize: number }; after: { version_count: number; backupsize: number } };
    assert.ok(stats.after.version_count < stats.before.version_count, ok.stdout);
    assert.match(ok.stderr, /removed 2 file\(s\) left by an interrupted compaction/);
    assert.ok(!existsSync(compactingPath(path)) && !existsSync(scratchPath(path)));
    assert.equal(restoredDump(sc), dumpBefore);
    assert.equal(listHistory(path).length, 1);

    const again = cli('compact', sc.backupUrl);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /nothing to compact/);

    // the plugin continues on the compacted file
    await node.boot();
    assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 4), 30)).failure, undefined);
    await node.stop();
    assert.equal(restoredDump(sc), sqliteDump(node.dbPath));
    assert.deepEqual(node.violations, []);
  });
}

test('history: restore --to-version reaches back past compactions while history is kept, and says so when not', { timeout: 120_000 }, async () => {
  const sc = simScratch({}, 'v2');
  scratches.push(sc);
  const { node } = sc;
  await node.boot();
  assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 5), 80)).failure, undefined);
  await node.stop();
  const v1 = node.dataVersion();
  const dump1 = sqliteDump(node.dbPath);
  for (let round = 0; round < 2; round++) {
    await node.boot();
    assert.equal((await runWorkload(node, Workload.fromDb(node.dbPath, 6 + round), 60)).failure, undefined);
    await node.stop();
    const c = cli('compact', '--history', '2', sc.backupUrl);
    assert.equal(c.code, 0, c.stderr);
  }
  const path = backupPath(sc.backupUrl, sc.dir);
  assert.equal(listHistory(path).length, 2);
  // the live backup alone no longer holds v1
  const reader = openReader(sc.backupUrl, sc.dir);
  assert.throws(() => restoreBackup(reader, join(sc.dir, 'x.sqlite3'), { toVersion: v1 }), /compacted away/);
  reader.close();

  const dest = join(sc.dir, 'pit.sqlite3');
  const r = cli('restore', '--to-version', String(v1), '--json', sc.backupUrl, dest);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(sqliteDump(dest), dump1);

  // history 0 prunes every copy: the version is gone, and restore says what is left
  const c = cli('compact', '--history', '0', sc.backupUrl);
  assert.equal(c.code, 0, c.stderr);
  assert.equal(listHistory(path).length, 0);
  const gone = cli('restore', '--to-version', String(v1), sc.backupUrl, join(sc.dir, 'gone.sqlite3'));
  assert.equal(gone.code, 1);
  assert.match(gone.stderr, new RegExp(`version ${v1} is no longer available: .*versions \\d+ to ${node.dataVersion()}`));
});

for (const format of ['v2', 'v1'] as BackupFormat[]) {
  test(`clnvault compact (${format}) shrinks a backup whose history is mostly overwritten rows`, { timeout: 120_000 }, async () => {
    const sc = simScratch({}, format);
    scratches.push(sc);
    const { node } = sc;
    await node.boot();
    // The same datastore key written and deleted over and over: the log grows by ~4 KB a transaction,
    // the database does not, so a compacted backup must be far smaller whatever the machine's speed.
    const blob = 'ab'.repeat(4096);
    for (let i = 0; i < 300; i++) {
      const stmt =
        i % 2 === 0
          ? `INSERT INTO datastore VALUES (x'636c6e7661756c74', x'${blob}', ${i})`
          : `DELETE FROM datastore WHERE key = x'636c6e7661756c74'`;
      const r = await node.transaction([stmt]);
      assert.equal(r.answered, 'continue');
    }
    await node.stop();
    const dumpBefore = sqliteDump(node.dbPath);
    const ok = cli('compact', '--json', sc.backupUrl);
    assert.equal(ok.code, 0, ok.stderr);
    const stats = JSON.parse(ok.stdout) as { before: { backupsize: number }; after: { backupsize: number } };
    assert.ok(stats.before.backupsize > 300 * 4096, ok.stdout);
    assert.ok(stats.after.backupsize < stats.before.backupsize / 2, ok.stdout);
    assert.equal(restoredDump(sc), dumpBefore);
  });
}
