/**
 * An encrypted clnvault:// destination's turn in a set's backup-compact (multi/compact-dest.ts): the copy of
 * the node's database (real SQLite, VACUUM INTO) is sent only at exactly the destination's head; a
 * destination behind the copy is first brought up to it from its queue (waiting while the queue fills),
 * a copy behind the destination is taken again, and a queue that cannot reach the copy ends the turn
 * without sending anything. The writer is a stand-in recording what would go to the server: the whole
 * path through a real server and a real plugin is in remote-encryption.test.ts ("several destinations,
 * ack 1"), where the copy and the destination's head meet on their own and these branches are not forced.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { BackupWriter } from '../src/backends/backend.js';
import { compactDestination } from '../src/backends/multi/compact-dest.js';
import Database from '../src/engine/sqlite.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A network directory whose lightningd.sqlite3 is at data_version `v`; returns the setter too. */
function netDir(v: number): { dir: string; setVersion: (v: number) => void } {
  const dir = mkdtempSync(join(tmpdir(), 'clnvault-sealed-dest-'));
  dirs.push(dir);
  const db = new Database(join(dir, 'lightningd.sqlite3'));
  db.exec("CREATE TABLE vars (name TEXT PRIMARY KEY, val TEXT, intval INTEGER, blobval BLOB); INSERT INTO vars (name, intval) VALUES ('data_version', 0)");
  const setVersion = (x: number): void => void db.prepare("UPDATE vars SET intval = ? WHERE name = 'data_version'").run(x);
  setVersion(v);
  return { dir, setVersion };
}

class StandIn {
  readonly format = 'v1' as const;
  readonly encrypted = true;
  sent: Array<{ version: number; copyExisted: boolean }> = [];
  constructor(public at: number) {}
  head(): number {
    return this.at;
  }
  isEmpty(): boolean {
    return false;
  }
  compactSealed(version: number, path: string): string {
    this.sent.push({ version, copyExisted: existsSync(path) });
    return JSON.stringify({ before: { backupsize: 1000, version_count: 50 }, after: { backupsize: 100, version_count: 1 } });
  }
}

const run = (w: StandIn, dir: string, advance: (v: number) => 'reached' | 'waiting' | 'failed') =>
  compactDestination(w as unknown as BackupWriter, null, 'clnvault://alice@127.0.0.1:1', dir, 0, null, () => undefined, advance);

describe("an encrypted clnvault:// destination's compaction in a set", () => {
  it('at its head: the copy is sent at once, with the server\'s statistics as the outcome', async () => {
    const { dir } = netDir(40);
    const w = new StandIn(40);
    const out = await run(w, dir, () => assert.fail('nothing to advance'));
    assert.deepEqual(w.sent, [{ version: 40, copyExisted: true }]);
    assert.equal(out.result, 'compacted');
    assert.deepEqual([out.before, out.after], [{ bytes: 1000, entries: 50 }, { bytes: 100, entries: 1 }]);
    assert.equal(existsSync(join(dir, `.clnvault-compact-${process.pid}-0.sqlite3`)), false, 'the copy is removed');
  });

  it('behind the copy: its queued writes are written up to the copy\'s version first (waiting while they arrive), then the copy is sent', async () => {
    const { dir } = netDir(45);
    const w = new StandIn(40);
    const asked: number[] = [];
    let waits = 2;
    const out = await run(w, dir, (v) => {
      asked.push(v);
      if (waits-- > 0) return 'waiting';
      w.at = Math.min(v, w.at + 1);
      return w.at === v ? 'reached' : 'waiting';
    });
    assert.equal(out.result, 'compacted');
    assert.deepEqual(w.sent, [{ version: 45, copyExisted: true }]);
    assert.ok(asked.every((v) => v === 45) && asked.length >= 7, JSON.stringify(asked));
  });

  it('ahead of the copy (lightningd has not committed its newest write yet): the copy is taken again until it is at the head', async () => {
    const { dir, setVersion } = netDir(39);
    const w = new StandIn(40);
    setTimeout(() => setVersion(40), 300);
    const out = await run(w, dir, () => assert.fail('the destination is never behind here'));
    assert.equal(out.result, 'compacted');
    assert.deepEqual(w.sent, [{ version: 40, copyExisted: true }]);
  });

  it('a queue that cannot reach the copy (a failed write, a re-seed in the way) ends the turn with nothing sent', async () => {
    const { dir } = netDir(45);
    const w = new StandIn(40);
    const out = await run(w, dir, () => 'failed');
    assert.equal(out.result, 'failed');
    assert.match(out.reason!, /a queued write failed while it was brought up to version 45/);
    assert.deepEqual(w.sent, []);
  });
});
