/**
 * A flipped byte in a backup's newest record leaves a record that is whole in length but fails its
 * checksum. A crash in the middle of an append can leave the same, so no reader can tell them apart;
 * before, every command took it for an interrupted append: after `init` (one snapshot record) a single
 * flipped byte made `verify` say PASS at data_version 0, `inspect` exit 0 and `restore` build an empty
 * database with exit 0. They must say they cannot be sure and stop; `--stop-at-damage` still restores.
 * A file cut short (the usual crash) keeps restoring, with its note.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { FIXTURES } from './helpers/fixtures.js';
import { runCli, scratchArea, show } from './helpers/cli.js';

const area = scratchArea('clnvault-suspect-tail-');
after(() => area.cleanup());

async function initBackup(): Promise<{ dir: string; bkp: string }> {
  const dir = area.dir();
  const net = join(dir, 'net');
  mkdirSync(net);
  copyFileSync(join(FIXTURES, 'reference-socket', 'expected.sqlite3'), join(net, 'lightningd.sqlite3'));
  const bkp = join(dir, 'b.bkp');
  const r = await runCli(['init', '--lightning-dir', net, bkp]);
  assert.equal(r.code, 0, show(r));
  return { dir, bkp };
}

test('one flipped byte in the only (snapshot) record: inspect, verify and restore exit 1, --stop-at-damage restores', async () => {
  const { dir, bkp } = await initBackup();
  const buf = readFileSync(bkp);
  buf[Math.floor(buf.length / 2)] ^= 0x01;
  writeFileSync(bkp, buf);

  const i = await runCli(['inspect', bkp]);
  assert.equal(i.code, 1, show(i));
  const j = await runCli(['inspect', '--json', bkp]);
  assert.equal(JSON.parse(j.stdout).damaged, true, show(j));

  const v = await runCli(['verify', bkp]);
  assert.equal(v.code, 1, show(v));
  assert.doesNotMatch(v.stdout + v.stderr, /PASS/);
  assert.match(v.stdout + v.stderr, /complete in length but fails its checksum/);

  const dest = join(dir, 'restored.sqlite3');
  const r = await runCli(['restore', bkp, dest]);
  assert.equal(r.code, 1, show(r));
  assert.match(r.stderr + r.stdout, /--stop-at-damage/);
  assert.equal(existsSync(dest), false, 'nothing may be written');

  const s = await runCli(['restore', '--stop-at-damage', bkp, dest]);
  assert.equal(s.code, 0, show(s));
  assert.ok(existsSync(dest));
});

test('a backup cut short (the usual crash) still restores, saying what it left out', async () => {
  const { dir, bkp } = await initBackup();
  truncateSync(bkp, statSync(bkp).size - 100);
  const dest = join(dir, 'restored.sqlite3');
  const r = await runCli(['restore', bkp, dest]);
  assert.equal(r.code, 0, show(r));
  assert.match(r.stdout + r.stderr, /left out/);
  const v = await runCli(['verify', bkp]);
  assert.equal(v.code, 0, show(v));
});
