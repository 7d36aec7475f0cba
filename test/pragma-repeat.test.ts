/**
 * Issue 9, item 3: a repeated data_version is accepted only for a PRAGMA-only batch, and "PRAGMA-only" is
 * one rule at any size, in the hook and in every reader (restore of v1 and v2, compaction). The batch of
 * the issue: nine PRAGMA statements (more than 256 bytes) at dv 2 after an INSERT at dv 2. Real plugin over
 * pipes, real files, the CLI for compaction and restore.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { createV1 } from '../src/backends/file/v1.js';
import { createV2 } from '../src/backends/file/v2.js';
import { decideNext, isPragmaOnly } from '../src/engine/versions.js';
import { runCli, show } from './helpers/cli.js';
import { killAllPlugins, PluginProc } from './helpers/plugin-proc.js';

const dirs: string[] = [];
after(() => {
  killAllPlugins();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** Nine PRAGMA statements as lightningd could send around a table rebuild, 390 bytes in all. */
const NINE = Array.from({ length: 9 }, (_, i) => `PRAGMA foreign_keys = ${i % 2 ? 'ON' : 'OFF'} /* table rebuild, step ${i} */`);
/** One PRAGMA-only batch larger than every reader's read window (v1 64 KiB, v2 1 MiB). */
const HUGE = [`PRAGMA foreign_keys = ON /* ${'x'.repeat(1_300_000)} */`, 'PRAGMA foreign_keys = OFF'];

function rows(db: string): number[] {
  const h = new Database(db, { readonly: true });
  try {
    return (h.prepare('SELECT a FROM t ORDER BY a').all() as { a: number }[]).map((r) => r.a);
  } finally {
    h.close();
  }
}

describe('a repeated data_version (issue 9, item 3)', () => {
  it('the hook decides PRAGMA-only by the statements, not by their size', () => {
    assert.ok(NINE.join('\u0000').length > 256);
    assert.equal(decideNext(2, 2, () => isPragmaOnly(NINE)).action, 'append');
    assert.equal(decideNext(2, 2, () => isPragmaOnly(HUGE)).action, 'append');
    const d = decideNext(2, 2, () => isPragmaOnly(['INSERT INTO t VALUES (9)']));
    assert.equal(d.action, 'refuse');
    assert.equal(d.action === 'refuse' && d.problem, 'repeat');
    assert.equal(decideNext(2, 2, () => isPragmaOnly(['PRAGMA foreign_keys = OFF', 'DELETE FROM t'])).action, 'refuse');
    // a version that moves on never asks
    assert.equal(decideNext(2, 3, () => assert.fail('decoded for a new version')).action, 'append');
  });

  for (const format of ['v2', 'v1'] as const) {
    it(`${format}: nine PRAGMAs at dv 2 after an INSERT at dv 2, then a huge PRAGMA batch: restore and compaction keep every INSERT`, { timeout: 60_000 }, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'clnvault-pragma-'));
      dirs.push(dir);
      const bkp = join(dir, 'backup.bkp');
      if (format === 'v1') createV1(bkp);
      else createV2(bkp);
      const url = `file://${bkp}`;
      writeFileSync(join(dir, 'backup.lock'), JSON.stringify({ backend_url: url, compaction: { auto: false } }));
      const p = new PluginProc(dir);
      assert.ok((await p.call('cln:getmanifest#1', 'getmanifest', {})).result);
      const write = async (id: number, dv: number, writes: string[]) => p.call(`cln:db_write#${id}`, 'db_write', { data_version: dv, writes });
      const cont = { result: 'continue' };
      assert.deepEqual((await write(2, 1, ['CREATE TABLE t (a INTEGER)'])).result, cont);
      assert.deepEqual((await write(3, 2, ['INSERT INTO t VALUES (2)'])).result, cont);
      assert.deepEqual((await write(4, 2, NINE)).result, cont, 'a PRAGMA-only batch may repeat the version');
      assert.deepEqual((await write(5, 3, ['INSERT INTO t VALUES (3)'])).result, cont);
      assert.deepEqual((await write(6, 3, HUGE)).result, cont);
      assert.deepEqual((await write(7, 4, ['INSERT INTO t VALUES (4)'])).result, cont);
      p.child.stdin.end();
      await p.exit;

      const restored = join(dir, 'restored.sqlite3');
      const r1 = await runCli(['restore', url, restored], { cwd: dir });
      assert.equal(r1.code, 0, show(r1));
      assert.deepEqual(rows(restored), [2, 3, 4], 'the INSERTs before each PRAGMA batch are kept');

      const c = await runCli(['compact', '--history', '0', url], { cwd: dir });
      assert.equal(c.code, 0, show(c));
      const again2 = join(dir, 'restored-after-compaction.sqlite3');
      const r2 = await runCli(['restore', url, again2], { cwd: dir });
      assert.equal(r2.code, 0, show(r2));
      assert.deepEqual(rows(again2), [2, 3, 4], 'compaction keeps them too');

      // any other batch at the same version is refused: lightningd stops without committing it
      const p2 = new PluginProc(dir);
      assert.ok((await p2.call('cln:getmanifest#1', 'getmanifest', {})).result);
      assert.deepEqual((await p2.call('cln:db_write#9', 'db_write', { data_version: 5, writes: ['INSERT INTO t VALUES (5)'] })).result, cont);
      const again = await p2.call('cln:db_write#10', 'db_write', { data_version: 5, writes: ['INSERT INTO t VALUES (55)'] });
      assert.ok(again.error !== undefined, `a repeated version for an INSERT is refused: ${JSON.stringify(again)}`);
      assert.match(again.error.message, /came again for a batch that is not PRAGMA-only/);
      p2.child.stdin.end();
      await p2.exit;
    });
  }
});
