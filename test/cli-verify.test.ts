/**
 * `clnvault inspect` and `clnvault verify` as an operator runs them: on the reference plugin's own files,
 * on v2 copies of them, on damaged and torn files, and against live databases that match, lag, lead, or
 * were altered.
 */
import { listHeaders } from '../src/backends/backend.js';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { appendFileSync, chmodSync, copyFileSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import { V1Reader } from '../src/backends/file/v1.js';
import { createV2, V2Writer } from '../src/backends/file/v2.js';
import { planRestore } from '../src/engine/plan.js';
import { runCli, scratchArea, show, type CliRun } from './helpers/cli.js';
import { FIXTURES } from './helpers/fixtures.js';
import { SQLITE3 } from './helpers/sqlite.js';
import { simScratch } from './helpers/sim-fixtures.js';
import { runWorkload, Workload } from '../src/sim/workload.js';

const REF = join(FIXTURES, 'reference-backups');
const area = scratchArea('clnvault-cli-verify-');
after(() => area.cleanup());
const url = (p: string): string => pathToFileURL(p).href;
const refVersion = (set: string): number => Number(readFileSync(join(REF, set, 'expected-data_version.txt'), 'utf8'));

function writableCopy(src: string, dest: string): string {
  copyFileSync(src, dest);
  chmodSync(dest, 0o644);
  return dest;
}

function sql(dbPath: string, statement: string): void {
  const db = new Database(dbPath);
  try {
    db.exec(statement);
  } finally {
    db.close();
  }
}

function json<T = Record<string, any>>(r: CliRun): T {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`stdout is not JSON:\n${show(r)}`);
  }
}

/** A live database for a reference set: its expected.sqlite3, or for pre-4090 one built from its dump. */
function liveDb(set: string, dir: string): string {
  const dest = join(dir, 'lightningd.sqlite3');
  if (set === 'pre-4090') {
    execFileSync(SQLITE3, ['-init', '/dev/null', dest], { input: readFileSync(join(REF, set, 'expected.dump.sql')) });
    return dest;
  }
  return writableCopy(join(REF, set, 'expected.sqlite3'), dest);
}

/** The same history in clnvault's v2 format: every entry a restore keeps, in order. */
function v2Copy(v1Path: string, dest: string): string {
  createV2(dest);
  const r = V1Reader.open(v1Path);
  const w = V2Writer.open(dest);
  try {
    const hs = listHeaders(r);
    const plan = planRestore(hs);
    hs.forEach((h, i) => {
      if (plan.dropped[i]) return;
      const e = r.read(h);
      if (e.kind === 'change') w.appendChange(e.version, e.statements);
      else {
        const tmp = `${dest}.snap-${i}`;
        e.writeTo(tmp);
        w.appendSnapshotFile(e.version, tmp);
        rmSync(tmp);
      }
    });
  } finally {
    w.close();
    r.close();
  }
  rmSync(`${dest}.writer`, { force: true });
  return dest;
}

const sha = (p: string): string => createHash('sha256').update(readFileSync(p)).digest('hex');

describe('inspect', () => {
  test('a reference file after a rewind: format, head, the stale duplicate and where it is', async () => {
    const r = await runCli(['inspect', '--json', url(join(REF, 'after-rewind/backup.dbak'))]);
    assert.equal(r.code, 0, show(r));
    const j = json(r);
    assert.equal(j.format, 'v1');
    assert.equal(j.head, 21);
    assert.equal(j.entries, 24);
    assert.equal(j.entriesChecked, 24);
    assert.equal(j.bytes, statSync(join(REF, 'after-rewind/backup.dbak')).size);
    assert.deepEqual(j.stale, [{ version: 16, offset: 33312 }]);
    assert.deepEqual(j.duplicates.find((d: { version: number }) => d.version === 16), { version: 16, offsets: [33312, 34277], kinds: ['change', 'change'] });
    assert.ok(j.duplicates.some((d: { kinds: string[] }) => d.kinds.includes('pragma')), 'the PRAGMA batches share a version too');
    assert.deepEqual(j.versionRange, { from: 1, to: 21 });
    assert.deepEqual(j.headEntry, { kind: 'change', version: 21, offset: 35913 });
    assert.equal(j.v1Header.version, 21);
    assert.deepEqual(j.problems, []);
    assert.equal(j.damaged, false);

    const text = await runCli(['inspect', url(join(REF, 'after-rewind/backup.dbak'))]);
    assert.equal(text.code, 0, show(text));
    assert.match(text.stdout, /format v1/);
    assert.match(text.stdout, /stale entries +1, never committed by the node and skipped by a restore: version 16 at offset 33312/);
    assert.match(text.stdout, /problems +none/);
  });

  test('a compacted reference file: its snapshot, and the versions a restore can reach', async () => {
    const r = await runCli(['inspect', '--json', url(join(REF, 'compacted/backup.dbak'))]);
    assert.equal(r.code, 0, show(r));
    const j = json(r);
    assert.equal(j.snapshots.length, 1);
    const snap = j.snapshots[0];
    assert.equal(snap.offset, 512);
    assert.ok(snap.bytes > 4096);
    assert.equal(j.versionRange.from, snap.version);
    assert.equal(j.versionRange.to, refVersion('compacted'));
  });

  test('v2: every record checked; a torn tail is reported with its offset (exit 0), a damaged record is corruption (exit 1)', async () => {
    const d = area.dir();
    const bkp = v2Copy(join(REF, 'compacted/backup.dbak'), join(d, 'b.clnvault'));
    const good = json(await runCli(['inspect', '--json', url(bkp)]));
    assert.equal(good.format, 'v2');
    assert.equal(good.entriesChecked, good.entries);
    assert.match(good.v2.backupId, /^[0-9a-f]{32}$/);

    const size = statSync(bkp).size;
    appendFileSync(bkp, Buffer.from('43565231deadbeef', 'hex'));
    const torn = await runCli(['inspect', '--json', url(bkp)]);
    assert.equal(torn.code, 0, show(torn));
    assert.deepEqual(json(torn).problems.map((p: { kind: string; offset: number }) => [p.kind, p.offset]), [['torn-tail', size]]);

    // flip one byte inside the snapshot's payload; records follow it, so this is damage, not a torn tail
    const buf = readFileSync(bkp);
    const at = good.snapshots[0].offset + 32 + 1000;
    buf[at] = buf[at]! ^ 0x40;
    writeFileSync(bkp, buf);
    const bad = await runCli(['inspect', url(bkp)]);
    assert.equal(bad.code, 1, show(bad));
    assert.match(bad.stdout, new RegExp(`corrupt +offset ${good.snapshots[0].offset}: `));
    assert.match(bad.stdout, /Damaged: a restore would refuse it/);
  });

  test('could not run: no such file, not a backup, an unknown scheme (exit 2)', async () => {
    const d = area.dir();
    writeFileSync(join(d, 'junk.bin'), Buffer.alloc(4096, 7));
    for (const [arg, re] of [
      [url(join(d, 'none.bkp')), /none\.bkp does not exist \(is the backup disk mounted\?\)/],
      [url(join(d, 'junk.bin')), /junk\.bin is not a clnvault or reference backup file/],
      // a plain path is taken as the file it names (issue 10 item 7); an unknown scheme is bad usage
      [join(d, 'junk.bin'), /junk\.bin is not a clnvault or reference backup file/],
      ['ftp://host/junk.bin', /no backend for "ftp:\/\/host\/junk\.bin": give a file: URL/],
    ] as Array<[string, RegExp]>) {
      const r = await runCli(['inspect', arg]);
      assert.equal(r.code, 2, show(r));
      assert.match(r.stderr.trim(), re);
      assert.equal(r.stderr.trim().split('\n').length, 1);
    }
  });
});

describe('verify', () => {
  for (const set of ['empty-init', 'snapshot-init', 'after-rewind', 'compacted', 'pre-4090']) {
    test(`passes on reference-backups/${set} against its node's database`, async () => {
      const d = area.dir();
      const live = liveDb(set, d);
      const before = sha(live);
      const r = await runCli(['verify', url(join(REF, set, 'backup.dbak')), '--against', d]);
      assert.equal(r.code, 0, show(r));
      const v = refVersion(set);
      assert.match(r.stdout, new RegExp(`compared with .*lightningd\\.sqlite3 \\(data_version ${v}\\): \\d+ tables, \\d+ rows, schema and content identical`));
      assert.match(r.stdout.trimEnd().split('\n').at(-1)!, new RegExp(`^PASS: the backup restores to exactly the node's database at data_version ${v}$`));
      assert.equal(sha(live), before, 'the live database was not written');
    });
  }

  test('--json: the whole report; the v2 copy of a backup passes too', async () => {
    const d = area.dir();
    const live = liveDb('after-rewind', d);
    const bkp = v2Copy(join(REF, 'after-rewind/backup.dbak'), join(d, 'b.clnvault'));
    const r = await runCli(['verify', '--json', url(bkp), '--against', live]);
    assert.equal(r.code, 0, show(r));
    const j = json(r);
    assert.equal(j.result, 'pass');
    assert.equal(j.ok, true);
    assert.equal(j.backup.format, 'v2');
    assert.equal(j.backup.head, 21);
    assert.deepEqual(j.backup.problems, []);
    assert.equal(j.restore.head, 21);
    assert.equal(j.restore.integrity, 'ok');
    assert.equal(j.restore.foreignKeyViolations, 0);
    assert.equal(j.against.path, live);
    assert.equal(j.against.dataVersion, 21);
    assert.equal(j.against.backupAhead, 0);
    assert.equal(j.against.comparedAtVersion, 21);
    assert.equal(j.against.comparison.equal, true);
    assert.deepEqual(j.against.comparison.schemaDifferences, []);
    const inv = j.against.comparison.tables.find((t: { table: string }) => t.table === 'invoices');
    assert.equal(inv.equal, true);
    assert.equal(inv.rows, inv.otherRows);
    assert.match(inv.hash, /^[0-9a-f]{64}$/);
    assert.equal(inv.hash, inv.otherHash);
    assert.equal(j.kept, null);
  });

  test('catches a deliberately altered row, and a missing one, naming the table', async () => {
    const d = area.dir();
    const bkp = url(join(REF, 'after-rewind/backup.dbak'));
    const restored = join(d, 'lightningd.sqlite3');
    assert.equal((await runCli(['restore', bkp, restored])).code, 0);
    const clean = await runCli(['verify', bkp, '--against', restored]);
    assert.equal(clean.code, 0, show(clean));

    sql(restored, 'UPDATE invoices SET msatoshi = msatoshi + 1 WHERE id = (SELECT MIN(id) FROM invoices)');
    const r = await runCli(['verify', bkp, '--against', restored]);
    assert.equal(r.code, 1, show(r));
    assert.match(r.stdout, /1 of \d+ tables differ/);
    assert.match(r.stdout, /table invoices: backup (\d+) rows, live \1 rows, content hashes [0-9a-f]{12} vs [0-9a-f]{12}; first difference at row \d+/);
    assert.match(r.stdout.trimEnd().split('\n').at(-1)!, /^FAIL: the restored backup differs from .* at data_version 21 in table\(s\) invoices;/);
    const j = json(await runCli(['verify', '--json', bkp, '--against', restored]));
    assert.equal(j.result, 'mismatch');
    assert.deepEqual(j.against.comparison.tables.filter((t: { equal: boolean }) => !t.equal).map((t: { table: string }) => t.table), ['invoices']);

    const d2 = area.dir();
    const live2 = liveDb('compacted', d2);
    sql(live2, 'DELETE FROM invoices WHERE id = (SELECT MAX(id) FROM invoices)');
    const r2 = await runCli(['verify', url(join(REF, 'compacted/backup.dbak')), '--against', live2]);
    assert.equal(r2.code, 1, show(r2));
    assert.match(r2.stdout, /table invoices: backup (\d+) rows, live (\d+) rows/);
    const [, a, b] = /table invoices: backup (\d+) rows, live (\d+) rows/.exec(r2.stdout)!;
    assert.equal(Number(a), Number(b) + 1);
  });

  test('a backup exactly one transaction ahead of the node passes, compared at the node\'s version', async () => {
    const d = area.dir();
    const bkp = url(join(REF, 'after-rewind/backup.dbak'));
    const live = join(d, 'lightningd.sqlite3');
    assert.equal((await runCli(['restore', '--to-version', '20', bkp, live])).code, 0);
    const r = await runCli(['verify', bkp, '--against', live]);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /the backup is 1 transaction\(s\) ahead of the node .*restoring it at the node's version 20 too/);
    assert.match(r.stdout, /PASS: .* at data_version 20 \(and holds 1 newer transaction\(s\)\)/);
    const j = json(await runCli(['verify', '--json', bkp, '--against', live]));
    assert.equal(j.against.backupAhead, 1);
    assert.equal(j.against.comparedAtVersion, 20);
  });

  test('a node behind by more than one (stopped) or ahead of the backup fails, saying what to do', async () => {
    const d = area.dir();
    const bkp = url(join(REF, 'after-rewind/backup.dbak'));
    const behind = join(d, 'behind.sqlite3');
    assert.equal((await runCli(['restore', '--to-version', '18', bkp, behind])).code, 0);
    const r = await runCli(['verify', bkp, '--against', behind]);
    assert.equal(r.code, 1, show(r));
    assert.match(r.stdout, /FAIL: the backup \(version 21\) is 3 versions ahead of .*behind\.sqlite3 \(18\) and lightningd is not running: that database lost committed state.*'clnvault restore /);

    const ahead = liveDb('after-rewind', area.dir());
    sql(ahead, "UPDATE vars SET intval = intval + 2 WHERE name = 'data_version'");
    const a = await runCli(['verify', bkp, '--against', ahead]);
    assert.equal(a.code, 1, show(a));
    assert.match(a.stdout, /FAIL: .* is at data_version 23, ahead of the backup \(21\): 2 transaction\(s\) were committed without being backed up/);
  });

  test('without --against: a restore drill only; --keep leaves the restored copy', async () => {
    const r = await runCli(['verify', '--keep', url(join(REF, 'snapshot-init/backup.dbak'))]);
    assert.equal(r.code, 0, show(r));
    assert.match(r.stdout, /restore drill: \d+ entries applied .*integrity_check ok, no foreign key violations, data_version \d+/);
    const kept = /restored copies kept in (\S+)/.exec(r.stdout)?.[1];
    assert.ok(kept, r.stdout);
    assert.equal(statSync(join(kept, 'restored.sqlite3')).isFile(), true);
    rmSync(kept, { recursive: true, force: true });
    assert.match(r.stdout, /PASS: the backup restores cleanly to data_version \d+ \(no --against/);
  });

  test('a damaged backup fails (1); missing inputs could not run (2), also as JSON', async () => {
    const d = area.dir();
    const bkp = v2Copy(join(REF, 'compacted/backup.dbak'), join(d, 'b.clnvault'));
    const buf = readFileSync(bkp);
    buf[64 + 32 + 2000] = buf[64 + 32 + 2000]! ^ 1;
    writeFileSync(bkp, buf);
    const r = await runCli(['verify', url(bkp), '--against', liveDb('compacted', d)]);
    assert.equal(r.code, 1, show(r));
    assert.match(r.stdout, /corrupt at offset 64: /);
    assert.match(r.stdout, /FAIL: the backup is damaged \(1 corrupt record\(s\), first at offset 64\)/);

    const missing = await runCli(['verify', url(join(d, 'none.bkp'))]);
    assert.equal(missing.code, 2, show(missing));
    assert.match(missing.stderr, /^clnvault verify: backup file .*none\.bkp does not exist \(is the backup disk mounted\?\)/);
    const noLive = await runCli(['verify', '--json', url(join(REF, 'compacted/backup.dbak')), '--against', join(d, 'nowhere')]);
    assert.equal(noLive.code, 2, show(noLive));
    const j = json(noLive);
    assert.equal(j.result, 'error');
    assert.match(j.message, /--against .*nowhere does not exist/);
    assert.match(noLive.stderr, /--against .*nowhere does not exist/);
  });
});

describe('verify while the node runs', () => {
  test('a simulated node committing transactions all along: verify passes and never writes its database', { timeout: 180_000 }, async () => {
    const sc = simScratch();
    try {
      await sc.node.boot();
      const wl = Workload.fromDb(sc.node.dbPath, 7, { datastoreSize: [100, 4096] });
      assert.equal((await runWorkload(sc.node, wl, 100)).failure, undefined);
      let stop = false;
      const traffic = (async () => {
        let n = 0;
        while (!stop) {
          const r = await runWorkload(sc.node, wl, 5);
          assert.equal(r.failure, undefined);
          n += r.transactions;
        }
        return n;
      })();
      const results: CliRun[] = [];
      for (let i = 0; i < 3; i++) results.push(await runCli(['verify', '--json', sc.backupUrl, '--against', sc.netDir]));
      stop = true;
      const committed = await traffic;
      assert.ok(committed > 0, 'the node was committing during the drills');
      for (const r of results) {
        assert.equal(r.code, 0, show(r));
        const j = json(r);
        assert.equal(j.result, 'pass');
        assert.ok(j.against.backupAhead >= 0);
        assert.equal(j.against.comparedAtVersion, j.against.dataVersion);
        assert.match(j.against.nodeRunning, /has .*lightningd\.sqlite3 open/);
      }
    } finally {
      await sc.cleanup();
    }
  });
});
