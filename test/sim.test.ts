/**
 * The lightningd simulator against the real plugin process: recorded CLN v26.06.6 traffic must leave the
 * sim's DB exactly as the real node's (`sqlite3 .dump` equality), framing edge cases must be answered, and
 * every path where lightningd aborts must leave the DB uncommitted.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { FRESH_POSTINIT, FRESH_PREINIT } from '../src/sim/cln-startup.js';
import { foreignKeyViolations, integrityCheck, sqliteDump } from '../src/sim/db.js';
import { FrameReader, encodeMessage } from '../src/sim/framing.js';
import { PLUGIN_TERMINATED, type SimNode } from '../src/sim/lightningd.js';
import { readTranscript } from '../src/sim/transcript.js';
import { Workload, runWorkload, type WorkItem } from '../src/sim/workload.js';
import { openReader } from '../src/backends/open.js';
import { restoreBackup } from '../src/restore/restore.js';
import { CLN, FIXTURES, simScratch, type SimScratch } from './helpers/sim-fixtures.js';

const scratches: SimScratch[] = [];
function scratch(...args: Parameters<typeof simScratch>): SimScratch {
  const s = simScratch(...args);
  scratches.push(s);
  return s;
}
after(async () => {
  for (const s of scratches) await s.cleanup();
});

function fixture(...parts: string[]): string {
  return readFileSync(join(CLN, ...parts), 'utf8');
}

function statementsOf(item: WorkItem): string[] {
  const b = item.batches[0]!;
  assert.equal(b.kind, 'tx');
  return b.kind === 'tx' ? b.statements : [];
}

/** The plugin's backup, restored, must equal what the sim committed: the stream it saw was the right one. */
function assertBackupMatches(sc: SimScratch): void {
  const reader = openReader(sc.backupUrl, sc.dir);
  const dest = join(sc.dir, `restored-${Date.now()}.sqlite3`);
  try {
    restoreBackup(reader, dest);
  } finally {
    reader.close();
  }
  assert.equal(sqliteDump(dest), sqliteDump(sc.node.dbPath));
}

function assertClean(node: SimNode): void {
  assert.deepEqual(node.violations, [], `protocol violations: ${JSON.stringify(node.violations)}`);
}

describe('replaying recorded CLN v26.06.6 sessions', () => {
  test('session-basic, then restart + hooks-restart', { timeout: 120_000 }, async () => {
    const { node } = scratch();
    const r1 = await node.replay(join(CLN, 'session-basic/hooks.jsonl'));
    assert.equal(r1.failure, undefined);
    assert.equal(r1.sent, 161);
    assert.equal(r1.committed, 161);
    assert.equal(node.dataVersion(), 159);
    assert.equal(sqliteDump(node.dbPath), fixture('session-basic/final.dump.sql'));
    // The fixture's own ids fit a fresh process's counter: the plugin saw exactly the recorded ids.
    assert.equal(node.sent[0]!.id, 'cln:getmanifest#20');
    assert.equal(node.sent[1]!.id, 'cln:db_write#21');
    assert.ok(node.initialized);

    await node.restart();
    assert.equal(node.sent.at(-1)!.id, 'cln:getmanifest#20', 'the counter restarts with each process');
    const r2 = await node.replay(join(CLN, 'session-basic/hooks-restart.jsonl'));
    assert.equal(r2.failure, undefined);
    assert.equal(r2.committed, 37);
    assert.equal(node.dataVersion(), 196);
    assert.equal(sqliteDump(node.dbPath), fixture('session-basic/final-after-restart.dump.sql'));
    assertClean(node);
    await node.stop();
    assert.equal(node.state, 'stopped');
  });

  test('session-channels', { timeout: 180_000 }, async () => {
    const { node } = scratch();
    const r = await node.replay(join(CLN, 'session-channels/hooks.jsonl'));
    assert.equal(r.failure, undefined);
    assert.equal(r.committed, 419);
    assert.equal(node.dataVersion(), 417);
    assert.equal(sqliteDump(node.dbPath), fixture('session-channels/final.dump.sql'));
    assertClean(node);
  });

  test('session-abort: the aborted line is never committed, the restart re-sends its data_version', { timeout: 120_000 }, async () => {
    const sc = scratch();
    const { node } = sc;
    const path = join(CLN, 'session-abort/hooks.jsonl');
    const before = await node.replay(path, { to: 18 });
    assert.equal(before.failure, undefined);
    assert.equal(node.dataVersion(), 15);
    assert.equal(sqliteDump(node.dbPath), fixture('session-abort/after-abort.dump.sql'));

    const abort = await node.replay(path, { from: 19, to: 19 });
    assert.equal(abort.aborted, 1);
    assert.equal(node.state, 'crashed');
    assert.equal(node.pluginAlive, false, 'the plugin saw its stdin close and is gone');
    assert.equal(node.dataVersion(), 15, 'dv 16 must not be committed');
    assert.equal(sqliteDump(node.dbPath), fixture('session-abort/after-abort.dump.sql'));

    const rest = await node.replay(path, { from: 20 });
    assert.equal(rest.failure, undefined);
    assert.equal(rest.restarts, 1);
    assert.equal(node.sent.filter((s) => s.dataVersion === 16).length, 2, 'dv 16 went out twice');
    assert.equal(node.dataVersion(), 21);
    assert.equal(sqliteDump(node.dbPath), fixture('session-abort/final.dump.sql'));
    assertClean(node);
    await node.stop();
    assertBackupMatches(sc);
  });

  test('after-rewind transcript with getmanifest markers (two processes, one abort)', { timeout: 120_000 }, async () => {
    const { node } = scratch();
    const r = await node.replay(join(FIXTURES, 'reference-backups/after-rewind/hooks.jsonl'));
    assert.equal(r.failure, undefined);
    assert.equal(r.aborted, 1);
    assert.equal(r.restarts, 2, 'the first marker starts the node, the second follows the crash');
    assert.equal(node.dataVersion(), 21);
    assert.equal(sqliteDump(node.dbPath), readFileSync(join(FIXTURES, 'reference-backups/after-rewind/expected.dump.sql'), 'utf8'));
    assertClean(node);
  });

  test('the embedded startup batches are the recorded ones', () => {
    const lines = readTranscript(join(CLN, 'session-basic/hooks.jsonl'));
    const calls = (from: number, to: number) =>
      lines.filter((l) => l.line >= from && l.line <= to && l.kind === 'db_write').map((l) => (l.kind === 'db_write' ? { dataVersion: l.dataVersion, writes: l.writes } : null));
    assert.deepEqual(FRESH_PREINIT, calls(1, 9));
    assert.deepEqual(FRESH_POSTINIT, calls(11, 14));
  });
});

describe('framing', () => {
  test('reader: split, merged, and garbage output', () => {
    const a = encodeMessage({ jsonrpc: '2.0', id: 'cln:x#1', result: { s: 'é}{"\\' } });
    const b = encodeMessage({ jsonrpc: '2.0', method: 'log', params: { level: 'info', message: '⚡' } });
    const all = Buffer.concat([a, b]);
    for (let cut = 1; cut < all.length; cut++) {
      const r = new FrameReader();
      const evs = [...r.push(all.subarray(0, cut)), ...r.push(all.subarray(cut)), ...r.end()];
      assert.deepEqual(
        evs.map((e) => e.kind),
        ['message', 'message'],
        `cut at ${cut}`,
      );
    }
    const r = new FrameReader();
    const evs = [...r.push(Buffer.from('hello\n{"jsonrpc":"2.0","method":"log","params":{"message":"x"}}')), ...r.end()];
    assert.deepEqual(
      evs.map((e) => e.kind),
      ['garbage', 'message'],
    );
  });

  test('messages split into tiny writes (UTF-8 and the \\n\\n cut in two) are answered', { timeout: 120_000 }, async () => {
    const { node } = scratch({ write: { chunkSize: 3 } });
    await node.boot();
    const dv = node.dataVersion();
    node.writeOptions = { chunkSize: 1, chunkDelayMs: 1 };
    const r = await node.transaction([`INSERT INTO datastore VALUES (x'${Buffer.from('split').toString('hex')}', x'00', 0);`, "UPDATE vars SET intval=1 WHERE name='Grüße ⚡ 日本語';"]);
    assert.equal(r.answered, 'continue');
    node.writeOptions = { chunkSize: 7, chunkDelayMs: 0 };
    for (let i = 0; i < 20; i++) assert.equal((await node.pragma('PRAGMA foreign_keys = ON;')).answered, 'continue');
    assert.equal(node.dataVersion(), dv + 1);
    assertClean(node);
  });

  test('several messages in one write (pipelined hooks), and merged + split at once', { timeout: 120_000 }, async () => {
    const { node } = scratch();
    await node.boot();
    const dv = node.dataVersion();
    node.writeOptions = { coalesce: true };
    const key = (i: number) => Buffer.from(`merged-${i}`).toString('hex');
    const batch = Array.from({ length: 10 }, (_, i) => node.transaction([`INSERT INTO datastore VALUES (x'${key(i)}', x'01', 0);`]));
    const results = await Promise.all(batch);
    assert.deepEqual(
      results.map((r) => r.answered),
      Array(10).fill('continue'),
    );
    assert.deepEqual(
      results.map((r) => r.dataVersion),
      Array.from({ length: 10 }, (_, i) => dv + 1 + i),
    );
    node.writeOptions = { coalesce: true, chunkSize: 5 };
    const more = await Promise.all(Array.from({ length: 5 }, (_, i) => node.transaction([`INSERT INTO datastore VALUES (x'${key(100 + i)}', x'02', 0);`])));
    assert.ok(more.every((r) => r.answered === 'continue'));
    assert.equal(node.dataVersion(), dv + 15);
    // Responses to unknown or non-string ids would have been recorded as violations.
    assertClean(node);
    for (const s of node.sent) assert.match(s.id, /^cln:[a-z_]+#\d+$/);
  });
});

describe('generated workload', () => {
  test('a few thousand mixed transactions keep the DB consistent', { timeout: 600_000 }, async () => {
    const sc = scratch();
    const { node } = sc;
    await node.boot();
    const schemaVersion = node.dataVersion();
    assert.equal(schemaVersion, 11);
    const wl = Workload.fromDb(node.dbPath, 42);
    const run = await runWorkload(node, wl, 2500);
    assert.equal(run.failure, undefined);
    assert.equal(run.items, 2500);
    assert.equal(node.dataVersion(), schemaVersion + run.transactions);
    assert.ok(run.pragmas > 0, 'the mix includes PRAGMA batches');
    assert.equal(integrityCheck(node.dbPath), 'ok');
    assert.equal(foreignKeyViolations(node.dbPath), 0);
    assertClean(node);
    await node.stop();
    assertBackupMatches(sc);
  });

  test('the same seed generates the same traffic', () => {
    const gen = (seed: number) => {
      const w = Workload.fromDb(join(CLN, 'session-basic/final.sqlite3'), seed);
      return Array.from({ length: 200 }, () => JSON.stringify(w.next()));
    };
    assert.deepEqual(gen(7), gen(7));
    assert.notDeepEqual(gen(7), gen(8));
  });
});

describe('lightningd aborting', () => {
  test('crashBeforeCommit leaves the DB at dv-1; the restart re-sends dv with different writes', { timeout: 120_000 }, async () => {
    const { node } = scratch();
    await node.boot();
    const wl = Workload.fromDb(node.dbPath, 1);
    for (let i = 0; i < 5; i++) assert.equal((await node.transaction(statementsOf(wl.invoice()))).answered, 'continue');
    const dv = node.dataVersion();
    const dumpBefore = sqliteDump(node.dbPath);
    const crashed = statementsOf(Workload.fromDb(node.dbPath, 2).invoice());
    const r = await node.crashBeforeCommit(crashed);
    assert.equal(r.answered, 'continue', 'the plugin acknowledged the write');
    assert.equal(r.dataVersion, dv + 1);
    assert.equal(node.state, 'crashed');
    assert.equal(node.pluginAlive, false);
    assert.equal(node.dataVersion(), dv);
    assert.equal(sqliteDump(node.dbPath), dumpBefore);

    const mark = node.sent.length;
    await node.boot();
    const resent = node.sent.slice(mark).find((s) => s.method === 'db_write')!;
    assert.equal(resent.dataVersion, dv + 1, 'the restarted node sends the same data_version');
    assert.equal(node.dataVersion(), dv + 4);
    const dump = sqliteDump(node.dbPath);
    assert.ok(!dump.includes(crashed.find((s) => s.startsWith('INSERT INTO invoices'))!.slice(0, 200)), 'the crashed invoice is absent');
    assertClean(node);
  });

  test('killPlugin while a hook is pending: abort, nothing committed', { timeout: 120_000 }, async () => {
    const { node } = scratch();
    await node.boot();
    const dv = node.dataVersion();
    const pending = node.transaction(statementsOf(Workload.fromDb(node.dbPath, 3).datastore(1 << 20)));
    await node.killPlugin();
    const r = await pending;
    assert.equal(r.answered, 'error');
    assert.ok(r.answered === 'error' && r.detail.startsWith(PLUGIN_TERMINATED), r.answered === 'error' ? r.detail : '');
    assert.equal(node.state, 'crashed');
    assert.equal(node.dataVersion(), dv);
    assert.equal(node.exits.at(-1)!.signal, 'SIGKILL');
    await assert.rejects(node.transaction(['DELETE FROM datastore']), /crashed/);

    // Restarted, the node carries on from the uncommitted version.
    await node.boot();
    assert.equal(node.sent.filter((s) => s.dataVersion === dv + 1).length, 2);
    assertClean(node);
  });

  test('killPlugin while idle: an important plugin takes the node down', { timeout: 60_000 }, async () => {
    const { node } = scratch();
    await node.boot();
    await node.killPlugin();
    assert.equal(node.state, 'down');
    await assert.rejects(node.transaction(['DELETE FROM datastore']), /down/);
  });

  test('an answer other than continue (a data_version gap the plugin must refuse) aborts without commit', { timeout: 60_000 }, async () => {
    const { node } = scratch();
    await node.boot();
    const dv = node.dataVersion();
    const r = await node.dbWrite(dv + 5, ["UPDATE vars SET intval=1 WHERE name='gap';", `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${dv}`]);
    assert.equal(r.answered, 'error');
    assert.equal(node.state, 'crashed');
    assert.equal(node.dataVersion(), dv);
    assertClean(node);
  });
});
