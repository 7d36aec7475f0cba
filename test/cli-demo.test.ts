/**
 * `npm start` = `clnvault demo`: the first thing a newcomer runs. It must work with nothing but the build
 * (no fixtures) and end by saying the restored database matches; what it leaves behind must be a normal
 * node directory and backup that the other commands understand.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, test } from 'node:test';
import { runCli, scratchArea, show } from './helpers/cli.js';

const area = scratchArea('clnvault-cli-demo-');
after(() => area.cleanup());

// The demo's files go to the system tmp dir. On tmpfs fdatasync costs nothing, which keeps this test quick
// on a slow disk; the demo does exactly the same work.
const fastTmp = existsSync('/dev/shm') ? { TMPDIR: '/dev/shm' } : {};

test('clnvault demo (npm start) in a temp dir: ends by saying the restored database matches, removes its files', { timeout: 300_000 }, async () => {
  const cwd = area.dir();
  const r = await runCli(['demo'], { cwd, env: fastTmp, timeoutMs: 280_000 });
  assert.equal(r.code, 0, show(r));
  const lines = r.stdout.trimEnd().split('\n');
  assert.match(lines.at(-1)!, /^The restored database matches the node's database at data_version \d+: every committed transaction was in the backup\.$/);
  assert.match(r.stdout, /^1\. started: the recorded CLN start-up/m);
  assert.match(r.stdout, /^2\. \d+ transactions \(\d+ invoice and \d+ payment updates/m);
  assert.match(r.stdout, /^3\. restarted lightningd: .*versions match up/m);
  assert.match(r.stdout, /^4\. crashed lightningd after the plugin backed up version (\d+) but before the commit .*removed the uncommitted entry/m);
  assert.match(r.stdout, /^8\. compared with the node's database table by table: \d+ tables, \d+ rows, identical schema and content$/m);
  const total = [...r.stdout.matchAll(/^[25]\. (\d+) transactions/gm)].reduce((a, m) => a + Number(m[1]), 0);
  assert.ok(total >= 3000, `a few thousand transactions, got ${total}`);
  const where = /Files were in (\S+) \(removed/.exec(r.stdout)?.[1];
  assert.ok(where, r.stdout);
  assert.equal(existsSync(where), false);
  assert.deepEqual(readdirSync(cwd), [], 'nothing written to the working directory');
  assert.doesNotMatch(r.stderr, /[\r\x1b]/, 'progress is plain lines when not on a terminal');
});

test('clnvault demo --dir keeps a node dir and backup that status, inspect and verify understand', { timeout: 120_000 }, async () => {
  const dir = join(area.dir(), 'demo');
  const r = await runCli(['demo', '--dir', dir, '--transactions', '300'], { timeoutMs: 110_000 });
  assert.equal(r.code, 0, show(r));
  assert.match(r.stdout.trimEnd().split('\n').at(-1)!, /^The restored database matches/);
  // .writer is the plugin's single-writer lock file, kept between runs like the backup itself
  assert.deepEqual(readdirSync(dir).sort(), ['backup.clnvault', 'backup.clnvault.writer', 'regtest', 'restored']);
  const net = join(dir, 'regtest');
  const st = await runCli(['status', '--lightning-dir', net]);
  assert.equal(st.code, 0, show(st));
  assert.match(st.stdout, /^in step: /);
  const url = pathToFileURL(join(dir, 'backup.clnvault')).href;
  const ins = JSON.parse((await runCli(['inspect', '--json', url])).stdout);
  assert.equal(ins.format, 'v2');
  assert.deepEqual(ins.stale, [], 'the crashed transaction was really removed from the backup');
  assert.deepEqual(ins.problems, []);
  const v = await runCli(['verify', url, '--against', net]);
  assert.equal(v.code, 0, show(v));

  const again = await runCli(['demo', '--dir', dir]);
  assert.equal(again.code, 2, show(again));
  assert.match(again.stderr, /exists and is not an empty directory/);
  const bad = await runCli(['demo', '--transactions', 'lots']);
  assert.equal(bad.code, 2, show(bad));
});
