/** `clnvault restore` on a damaged v2 backup: refuses by default, salvages only when asked, and says so. */
import { listHeaders } from '../src/backends/backend.js';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, test } from 'node:test';
import { createV2, V2Reader, V2Writer } from '../src/backends/file/v2.js';
import { dataVersion } from './helpers/sqlite.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'clnvault-damage-cli-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('a flipped byte in a middle record: refused with its offset, restored up to it only with --stop-at-damage', () => {
  const bkp = join(dir, 'b.bkp');
  createV2(bkp);
  const w = V2Writer.open(bkp);
  w.appendChange(1, ['CREATE TABLE vars (name TEXT, intval INTEGER)', "INSERT INTO vars VALUES ('data_version', 1)"]);
  for (let v = 2; v <= 6; v++) {
    w.appendChange(v, [`INSERT INTO vars VALUES ('n${v}', ${v})`, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${v - 1}`]);
  }
  w.close();
  const r = V2Reader.open(bkp);
  const victim = listHeaders(r)[3]!; // version 4
  r.close();
  const bytes = readFileSync(bkp);
  bytes[victim.offset + 40] ^= 0x01; // inside its payload
  writeFileSync(bkp, bytes);

  const refused = cli('restore', `file://${bkp}`, join(dir, 'a.sqlite3'));
  assert.equal(refused.code, 1, refused.stderr);
  assert.match(refused.stderr, new RegExp(`\\b${victim.offset}\\b`));
  assert.deepEqual(readdirSync(dir).sort(), ['b.bkp', 'b.bkp.writer']);

  const salvaged = cli('restore', '--stop-at-damage', `file://${bkp}`, join(dir, 'b.sqlite3'));
  assert.equal(salvaged.code, 0, salvaged.stderr);
  assert.match(salvaged.stdout, new RegExp(`WARNING: stopped before damage at offset ${victim.offset}.*as of version 3`));
  assert.equal(dataVersion(join(dir, 'b.sqlite3')), 3);
});
