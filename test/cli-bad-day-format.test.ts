/**
 * Issue 10, the format's share of "the bad day": no command may be silently wrong about a damaged or
 * incomplete v2 backup. Real files, the built CLI as its own process.
 */
import assert from 'node:assert/strict';
import { readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { listHeaders } from '../src/backends/backend.js';
import { createV2, V2Reader, V2Writer } from '../src/backends/file/v2.js';
import { runCli, scratchArea, show } from './helpers/cli.js';
import { dataVersion } from './helpers/sqlite.js';

const area = scratchArea('clnvault-badday-format-');
after(() => area.cleanup());

/** A v2 backup of versions 1..n: a table, then one row per version. */
function backup(path: string, n: number): void {
  createV2(path);
  const w = V2Writer.open(path);
  w.appendChange(1, ['CREATE TABLE vars (name TEXT, intval INTEGER)', "INSERT INTO vars VALUES ('data_version', 1)"]);
  for (let v = 2; v <= n; v++) {
    w.appendChange(v, [`INSERT INTO vars VALUES ('n${v}', ${v})`, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${v - 1}`]);
  }
  w.close();
}

test('a backup cut short: restore says how many bytes it left out, where, and the version it stopped at (text and --json)', async () => {
  const dir = area.dir();
  const bkp = join(dir, 'b.bkp');
  backup(bkp, 6);
  const r = V2Reader.open(bkp);
  const last = listHeaders(r).at(-1)!;
  r.close();
  const size = statSync(bkp).size;
  truncateSync(bkp, size - 20); // `truncate -s -20`: the newest record (version 6) loses its end
  const cut = size - 20 - last.offset;

  const text = await runCli(['restore', `file://${bkp}`, join(dir, 'a.sqlite3')]);
  assert.equal(text.code, 0, show(text));
  assert.equal(dataVersion(join(dir, 'a.sqlite3')), 5);
  assert.match(text.stdout, new RegExp(`left out ${cut} byte\\(s\\) at offset ${last.offset}, the end of the backup .*restored up to data_version 5`), show(text));

  const json = await runCli(['restore', '--json', `file://${bkp}`, join(dir, 'j.sqlite3')]);
  assert.equal(json.code, 0, show(json));
  const out = JSON.parse(json.stdout) as { head: number; cut: Array<{ kind: string; offset: number; bytes: number }> };
  assert.equal(out.head, 5);
  assert.deepEqual(out.cut.map((c) => [c.kind, c.offset, c.bytes]), [['torn-tail', last.offset, cut]]);

  // nothing cut: nothing said, and an empty list
  const whole = join(dir, 'whole.bkp');
  backup(whole, 3);
  const clean = await runCli(['restore', '--json', `file://${whole}`, join(dir, 'w.sqlite3')]);
  assert.equal(clean.code, 0, show(clean));
  assert.deepEqual((JSON.parse(clean.stdout) as { cut: unknown[] }).cut, []);
  const cleanText = await runCli(['restore', `file://${whole}`, join(dir, 'w2.sqlite3')]);
  assert.doesNotMatch(cleanText.stdout, /left out/);
});

test('one flipped byte anywhere in the 64-byte file header: inspect and verify say damaged (exit 1); restore refuses, and restores every record with --stop-at-damage, with a warning', async () => {
  const dir = area.dir();
  const good = join(dir, 'good.bkp');
  backup(good, 5);
  const bytes = readFileSync(good);
  // magic, version, header length, flags, backup id, creation time, segment fields, reserved, checksum
  for (const at of [0, 9, 20, 41, 62]) {
    const bkp = join(dir, `h${at}.bkp`);
    const b = Buffer.from(bytes);
    b[at] ^= 0x04;
    writeFileSync(bkp, b);
    const url = `file://${bkp}`;

    const inspect = await runCli(['inspect', url]);
    assert.equal(inspect.code, 1, `byte ${at}: ${show(inspect)}`);
    assert.match(inspect.stdout, /file header is damaged/, `byte ${at}: ${show(inspect)}`);

    const verify = await runCli(['verify', url]);
    assert.equal(verify.code, 1, `byte ${at}: ${show(verify)}`);
    assert.match(verify.stdout, /FAIL: .*damaged/, `byte ${at}: ${show(verify)}`);

    const refused = await runCli(['restore', url, join(dir, `r${at}.sqlite3`)]);
    assert.equal(refused.code, 1, `byte ${at}: ${show(refused)}`);
    assert.match(refused.stderr, /file header is damaged.*--stop-at-damage/, `byte ${at}: ${show(refused)}`);

    const rescued = await runCli(['restore', '--stop-at-damage', url, join(dir, `s${at}.sqlite3`)]);
    assert.equal(rescued.code, 0, `byte ${at}: ${show(rescued)}`);
    assert.equal(dataVersion(join(dir, `s${at}.sqlite3`)), 5, `byte ${at}`);
    assert.match(rescued.stdout, /WARNING: the backup is damaged at offset 0 \(the 64-byte file header is damaged/, `byte ${at}: ${show(rescued)}`);
    assert.doesNotMatch(rescued.stdout, /stopped before damage/, `byte ${at}: every record was restored`);
    rmSync(bkp);
  }
});
