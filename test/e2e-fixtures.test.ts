/**
 * The headline guarantee, end to end as a user runs it: `clnvault init`, the recorded Core Lightning
 * traffic through the real plugin (driven by the lightningd simulator), `clnvault restore`, and the
 * restored database's `.dump` equal to the one recorded from the real node. Both formats.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { SimNode } from '../src/sim/lightningd.js';
import { FIXTURES } from './helpers/fixtures.js';
import { referenceStream } from './helpers/reference-reader.js';
import { dump } from './helpers/sqlite.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const CLN = join(FIXTURES, 'cln-v26.06.6');
const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function cli(args: string[], cwd: string): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8' });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

async function replayedNode(format: 'v1' | 'v2', transcripts: string[]): Promise<{ dir: string; netDir: string; url: string; node: SimNode }> {
  const dir = mkdtempSync(join(tmpdir(), 'clnvault-e2e-'));
  dirs.push(dir);
  const netDir = join(dir, 'regtest');
  mkdirSync(netDir);
  const url = `file://${join(dir, 'node.bkp')}`;
  const init = cli(['init', '--lightning-dir', netDir, '--format', format, url], dir);
  assert.equal(init.code, 0, init.stderr);
  assert.match(init.stdout, /Database does not exist yet/);
  const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000 });
  for (const [i, t] of transcripts.entries()) {
    if (i > 0) await node.restart();
    const r = await node.replay(join(CLN, t));
    assert.equal(r.failure, undefined, `replay of ${t} failed: ${JSON.stringify(r.failure)}`);
  }
  await node.stop();
  assert.deepEqual(node.violations, []);
  return { dir, netDir, url, node };
}

function restoreAndDump(dir: string, url: string): string {
  const dest = join(dir, 'restored');
  mkdirSync(dest);
  const r = cli(['restore', url, dest], dir);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /integrity_check ok/);
  return dump(join(dest, 'lightningd.sqlite3'));
}

/** Replays what the reference's reader would stream, the way its restore applies it (one transaction). */
function referenceRestoreDump(dir: string, bkp: string): string {
  const path = join(dir, 'reference-restore.sqlite3');
  let db = new Database(path);
  db.pragma('foreign_keys = 1');
  db.exec('BEGIN');
  for (const e of referenceStream(bkp)) {
    if (e.kind === 'snapshot') {
      db.close();
      writeFileSync(path, e.snapshot);
      db = new Database(path);
      db.pragma('foreign_keys = 1');
      db.exec('BEGIN');
      continue;
    }
    for (const s of e.statements) db.exec(s);
  }
  db.exec('COMMIT');
  db.close();
  return dump(path);
}

const sessions: Array<[string, string[], string]> = [
  ['session-basic', ['session-basic/hooks.jsonl'], 'session-basic/final.dump.sql'],
  ['session-basic + restart', ['session-basic/hooks.jsonl', 'session-basic/hooks-restart.jsonl'], 'session-basic/final-after-restart.dump.sql'],
  ['session-abort (crash between hook and commit, re-sent data_version)', ['session-abort/hooks.jsonl'], 'session-abort/final.dump.sql'],
  ['session-channels', ['session-channels/hooks.jsonl'], 'session-channels/final.dump.sql'],
];

for (const format of ['v2', 'v1'] as const) {
  describe(`recorded CLN v26.06.6 traffic → plugin → clnvault restore (${format})`, () => {
    for (const [name, transcripts, expected] of sessions) {
      it(name, { timeout: 240_000 }, async () => {
        const { dir, url } = await replayedNode(format, transcripts);
        assert.equal(restoreAndDump(dir, url), readFileSync(join(CLN, expected), 'utf8'));
        if (format === 'v1') {
          // The file clnvault wrote is one the reference plugin itself restores correctly: no stale entry.
          assert.equal(referenceRestoreDump(dir, url.slice('file://'.length)), readFileSync(join(CLN, expected), 'utf8'));
        }
      });
    }
  });
}
