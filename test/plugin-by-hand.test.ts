/**
 * Issue 10, item 13: the plugin run by hand (without the LIGHTNINGD_PLUGIN=1 that lightningd sets for
 * its plugins) says what it is and how to load it, touches nothing and exits non-zero.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, chmodSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, test } from 'node:test';
import { createBackup } from '../src/backends/open.js';
import { scratchArea } from './helpers/cli.js';
import { FIXTURES } from './helpers/fixtures.js';
import { PLUGIN } from './helpers/plugin-proc.js';

const area = scratchArea('clnvault-by-hand-');
after(() => area.cleanup());

test('run by hand in a network directory whose database is ahead: no lock, no re-baseline, exit non-zero', () => {
  const net = area.dir();
  const bkp = join(net, 'node.bkp');
  createBackup(pathToFileURL(bkp).href, net, 'v2');
  writeFileSync(join(net, 'backup.lock'), JSON.stringify({ backend_url: `file://${bkp}` }));
  // a database at a version > 0 beside an empty backup: a real start would snapshot it into the backup
  const db = join(net, 'lightningd.sqlite3');
  copyFileSync(join(FIXTURES, 'reference-backups/snapshot-init/expected.sqlite3'), db);
  chmodSync(db, 0o644);
  const before = { names: readdirSync(net).sort(), bkp: readFileSync(bkp), db: readFileSync(db) };
  const env = { ...process.env };
  delete env.LIGHTNINGD_PLUGIN;
  // stdin open and silent, as a terminal would be: the plugin must not wait for it
  const r = spawnSync(PLUGIN, [], { cwd: net, env, input: '', encoding: 'utf8', timeout: 20_000 });
  assert.notEqual(r.status, 0, `exit ${r.status}\n${r.stderr}`);
  assert.equal(r.stdout, '', 'nothing on stdout (it is not speaking JSON-RPC to anyone)');
  assert.match(r.stderr, /this is the clnvault plugin for Core Lightning/);
  assert.match(r.stderr, /LIGHTNINGD_PLUGIN=1/);
  assert.match(r.stderr, new RegExp(`important-plugin=${PLUGIN.replace(/[.]/g, '\\.')}`));
  assert.deepEqual(readdirSync(net).sort(), before.names, 'no lock file, no temp file');
  assert.deepEqual(readFileSync(bkp), before.bkp, 'the backup is unchanged (no re-baseline)');
  assert.deepEqual(readFileSync(db), before.db);
});
