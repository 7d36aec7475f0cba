/**
 * Encrypted postgresql: backups (issues 13 and 14, docs/encryption.md "PostgreSQL") against a real
 * PostgreSQL server the test starts (test/helpers/postgres.ts): recorded Core Lightning sessions through
 * the real plugin restore exactly with the key; everything the cluster holds (a pg_dump of the database
 * and the raw bytea of every record and chunk) contains none of the sessions' statements, labels, bolt11
 * strings, node ids or hex blobs; a cluster operator deleting, swapping, replaying, truncating, splicing
 * or flipping rows is caught at restore with the last authenticated version; a wrong key fails with one
 * line and leaves nothing behind; compaction inside the database keeps the chain; an older schema
 * migrates in place.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type pg from 'pg';
import { SimNode } from '../src/sim/lightningd.js';
import { writeKeyFile } from '../src/crypto/keys.js';
import { MIGRATIONS } from '../src/backends/postgres/schema.js';
import { FIXTURES } from './helpers/fixtures.js';
import { runCli, show, type CliRun } from './helpers/cli.js';
import { dump } from './helpers/sqlite.js';
import { findNeedles, sessionNeedles } from './helpers/needles.js';
import { PG_SKIP, PgServer } from './helpers/postgres.js';

const CLN = join(FIXTURES, 'cln-v26.06.6');
const dirs: string[] = [];
let server: PgServer;

function scratch(): string {
  const d = mkdtempSync(join(tmpdir(), 'clnvault-pgenc-'));
  dirs.push(d);
  return d;
}

const nodeRole = (name: string): ReturnType<PgServer['nodeRole']> => server.nodeRole('enc', name);

interface Enc {
  dir: string;
  netDir: string;
  url: string;
  backup: string;
  keyFile: string;
}

async function encrypted(name: string, transcripts: string[], opts: { keyFile?: string; plain?: boolean; env?: NodeJS.ProcessEnv } = {}): Promise<Enc> {
  const { url, backup } = await nodeRole(name);
  const dir = scratch();
  const netDir = join(dir, 'regtest');
  mkdirSync(netDir);
  const keyFile = opts.keyFile ?? join(dir, 'backup.key');
  const init = await runCli(['init', '--lightning-dir', netDir, ...(opts.plain ? [] : ['--encrypt', '--key-file', keyFile]), url], { cwd: dir });
  assert.equal(init.code, 0, show(init));
  if (!opts.plain) {
    assert.match(init.stdout, /key fingerprint [0-9a-f]{16}/);
    assert.deepEqual(JSON.parse(readFileSync(join(netDir, 'backup.lock'), 'utf8')).encrypt, { key_file: keyFile });
  }
  const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000, ...(opts.env ? { env: opts.env } : {}) });
  try {
    for (const [i, t] of transcripts.entries()) {
      if (i > 0) await node.restart();
      const r = await node.replay(join(CLN, t));
      assert.equal(r.failure, undefined, `replay of ${t} failed: ${JSON.stringify(r.failure)}\n${node.stderr.slice(-2000)}`);
    }
  } finally {
    await node.stop();
  }
  assert.deepEqual(node.violations, []);
  return { dir, netDir, url, backup, keyFile };
}

async function restore(e: Enc, keyArgs: string[] = ['--key-file', e.keyFile]): Promise<{ r: CliRun; dest: string }> {
  const dest = join(e.dir, `restored-${Math.random().toString(16).slice(2)}`);
  mkdirSync(dest);
  const r = await runCli(['restore', ...keyArgs, e.url, dest], { cwd: e.dir });
  return { r, dest };
}

async function restoreDump(e: Enc): Promise<{ dump: string; stdout: string }> {
  const { r, dest } = await restore(e);
  assert.equal(r.code, 0, show(r));
  assert.match(r.stdout, /integrity_check ok/);
  assert.match(r.stdout, /newest authenticated version \d+, written at \d{4}-\d\d-\d\dT/);
  return { dump: dump(join(dest, 'lightningd.sqlite3')), stdout: r.stdout };
}

/** A refused restore: non-zero, the message names the last authenticated version, the destination stays empty. */
async function refused(e: Enc, what: RegExp): Promise<string> {
  const { r, dest } = await restore(e);
  assert.notEqual(r.code, 0, `restore of a tampered backup succeeded:\n${show(r)}`);
  assert.match(r.stderr, what, show(r));
  // the last authenticated version; or, when the entry before a break is the forged one, that it fails too; or nothing before it
  assert.match(r.stderr, /last authenticated version \d+, written at \d{4}-|fails authentication too|no record before it authenticated/, show(r));
  assert.deepEqual(readdirSync(dest), [], 'a refused restore leaves nothing behind');
  return r.stderr;
}

/** Everything the cluster holds: pg_dump of the whole database, and every bytea value raw. */
async function clusterBytes(): Promise<{ dumpText: Buffer; raw: Buffer }> {
  const d = spawnSync(join(server.bin, 'pg_dump'), ['-h', server.dir, '-p', String(server.port), '-U', 'postgres', '-d', 'clnvault'], { maxBuffer: 1 << 30 });
  assert.equal(d.status, 0, d.stderr?.toString());
  const c = await server.superClient();
  try {
    const parts: Buffer[] = [];
    for (const row of (await c.query('SELECT record FROM clnvault.entries WHERE record IS NOT NULL')).rows) parts.push(row.record as Buffer);
    for (const row of (await c.query('SELECT data FROM clnvault.snapshot_chunks')).rows) parts.push(row.data as Buffer);
    return { dumpText: d.stdout, raw: Buffer.concat(parts) };
  } finally {
    await c.end();
  }
}

/** Runs `tamper` on the backup's rows as the cluster's superuser, then `check`, then puts every row back. */
async function tampered(backup: string, tamper: (c: pg.Client, id: number, seqs: number[]) => Promise<void>, check: () => Promise<void>): Promise<void> {
  const c = await server.superClient();
  try {
    const id = Number((await c.query('SELECT id FROM clnvault.backups WHERE name = $1', [backup])).rows[0].id);
    await c.query('CREATE TEMP TABLE saved_entries AS SELECT * FROM clnvault.entries WHERE backup_id = $1', [id]);
    await c.query('CREATE TEMP TABLE saved_chunks AS SELECT * FROM clnvault.snapshot_chunks WHERE backup_id = $1', [id]);
    const seqs = (await c.query('SELECT seq FROM clnvault.entries WHERE backup_id = $1 AND kind = 0 ORDER BY seq', [id])).rows.map((r) => Number(r.seq));
    try {
      await tamper(c, id, seqs);
      await check();
    } finally {
      await c.query('DELETE FROM clnvault.entries WHERE backup_id = $1', [id]);
      await c.query('INSERT INTO clnvault.entries SELECT * FROM saved_entries');
      await c.query('INSERT INTO clnvault.snapshot_chunks SELECT * FROM saved_chunks');
      await c.query('DROP TABLE saved_entries, saved_chunks');
      await c.query('CREATE UNIQUE INDEX IF NOT EXISTS entries_one_per_version ON clnvault.entries (backup_id, version) WHERE kind = 0 AND NOT pragma_only');
    }
  } finally {
    await c.end();
  }
}

describe('encrypted postgresql: backups', { skip: PG_SKIP }, () => {
  before(async () => {
    server = await PgServer.startWithSchema();
  });
  after(async () => {
    await server?.stop();
    if (!process.env.CLNVAULT_KEEP_TMP) for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  const sessions: Array<[string, string[], string]> = [
    ['session-basic + restart', ['session-basic/hooks.jsonl', 'session-basic/hooks-restart.jsonl'], 'session-basic/final-after-restart.dump.sql'],
    ['session-abort (the rewind re-uses a version)', ['session-abort/hooks.jsonl'], 'session-abort/final.dump.sql'],
    ['session-channels', ['session-channels/hooks.jsonl'], 'session-channels/final.dump.sql'],
  ];
  const made: Enc[] = [];
  for (const [name, transcripts, expected] of sessions) {
    it(`recorded ${name} → plugin → encrypted postgresql: → restore with the key is exact`, { timeout: 240_000 }, async () => {
      const e = await encrypted(name, transcripts);
      made.push(e);
      assert.equal((await restoreDump(e)).dump, readFileSync(join(CLN, expected), 'utf8'));
    });
  }
  // the sessions above ran on the plugin's event loop (a lone destination); this is the worker thread's path
  // (several destinations, and CLNVAULT_REMOTE_WORKER=1), which must seal and rewind the same way
  it('session-abort through the worker thread (CLNVAULT_REMOTE_WORKER=1): the rewind keeps the chain, restore is exact', { timeout: 240_000 }, async () => {
    const e = await encrypted('worker path', ['session-abort/hooks.jsonl'], { env: { CLNVAULT_REMOTE_WORKER: '1' } });
    assert.equal((await restoreDump(e)).dump, readFileSync(join(CLN, 'session-abort/final.dump.sql'), 'utf8'));
  });

  it('the cluster holds none of the sessions\' plaintext (pg_dump and every record and chunk raw); a plaintext backup of the same session does', { timeout: 240_000 }, async () => {
    const needles = sessionNeedles(CLN, sessions.flatMap(([, t]) => t));
    assert.ok(needles.length > 20, `${needles.length} needles`);
    // compaction debris too: a covering snapshot of session-channels, encrypted
    const ch = made.find((m) => m.backup.startsWith('sessionchannels'))!;
    const c = await runCli(['compact', '--json', '--key-file', ch.keyFile, ch.url], { cwd: ch.dir });
    assert.equal(c.code, 0, show(c));
    assert.equal((JSON.parse(c.stdout) as { compacted: boolean }).compacted, true);
    const enc = await clusterBytes();
    assert.ok(enc.raw.length > 100_000, `${enc.raw.length} bytes of records and chunks`);
    assert.deepEqual(findNeedles(enc.dumpText, needles).slice(0, 5), [], 'pg_dump of the database holds plaintext');
    assert.deepEqual(findNeedles(enc.raw, needles).slice(0, 5), [], 'a record or chunk holds plaintext');
    // the same search finds the plaintext of an unencrypted backup: it can fail
    await encrypted('plain', ['session-basic/hooks.jsonl'], { plain: true });
    const plain = await clusterBytes();
    assert.ok(findNeedles(plain.dumpText, needles).length > 10, 'the search finds a plaintext backup\'s statements');
  });

  it('the plugin\'s re-baseline stores an encrypted multi-chunk snapshot (3 MiB blob) that restores exactly, and the chain goes on after it', { timeout: 240_000 }, async () => {
    const e = await encrypted('rebaseline', ['session-basic/hooks.jsonl']);
    const node = new SimNode({ netDir: e.netDir, hookSafetyTimeoutMs: 60_000 });
    // committed without the hook (what lightningd does after plugins stopped): the node is now ahead
    node.commitWithoutHook(["INSERT INTO vars (name, blobval) VALUES ('pg-enc-big', randomblob(3145728))"]);
    try {
      await node.boot();
      assert.match(node.stderr + JSON.stringify(node.logs), /re-baselined/);
      for (let k = 0; k < 3; k++) assert.equal((await node.transaction([`INSERT INTO vars (name, intval) VALUES ('enc-after-${k}', ${k})`])).answered, 'continue');
    } finally {
      await node.stop();
    }
    const c = await server.superClient();
    try {
      const r = await c.query(
        `SELECT count(*) AS n FROM clnvault.snapshot_chunks s JOIN clnvault.backups b ON b.id = s.backup_id WHERE b.name = $1`,
        [e.backup],
      );
      assert.ok(Number(r.rows[0].n) >= 4, JSON.stringify(r.rows));
    } finally {
      await c.end();
    }
    const { dest, r } = await restore(e);
    assert.equal(r.code, 0, show(r));
    assert.equal(dump(join(dest, 'lightningd.sqlite3')), dump(node.dbPath));
    // the scratch ciphertext of the snapshot was removed from the network directory
    assert.deepEqual(readdirSync(e.netDir).filter((f) => f.includes('ciphertext') || f.includes('rebaseline')), []);
    const v = await runCli(['verify', '--key-file', e.keyFile, e.url], { cwd: e.dir });
    assert.equal(v.code, 0, show(v));
  });

  describe('a hostile cluster operator', () => {
    let e: Enc;
    let other: Enc;
    let head: number;
    before(async () => {
      e = await encrypted('tamper', ['session-channels/hooks.jsonl']);
      // a snapshot row (compaction inside the database), then writes after it
      const c = await runCli(['compact', '--json', '--key-file', e.keyFile, e.url], { cwd: e.dir });
      assert.equal(c.code, 0, show(c));
      const node = new SimNode({ netDir: e.netDir, hookSafetyTimeoutMs: 60_000 });
      try {
        await node.boot();
        for (let k = 0; k < 6; k++) assert.equal((await node.transaction([`INSERT INTO vars (name, intval) VALUES ('after-compact-${k}', ${k})`])).answered, 'continue');
      } finally {
        await node.stop();
      }
      const ok = await restoreDump(e);
      head = Number(/newest authenticated version (\d+)/.exec(ok.stdout)![1]);
      // another encrypted backup with the same key: its rows must not fit into this one
      other = await encrypted('other', ['session-basic/hooks.jsonl'], { keyFile: e.keyFile });
    });

    it('a row deleted from the middle', { timeout: 120_000 }, async () => {
      await tampered(e.backup, async (c, id, seqs) => {
        await c.query('DELETE FROM clnvault.entries WHERE backup_id = $1 AND seq = $2 AND kind = 0', [id, seqs[seqs.length - 3]]);
      }, async () => void (await refused(e, /breaks the chain/)));
    });

    it('two rows\' contents swapped', { timeout: 120_000 }, async () => {
      await tampered(e.backup, async (c, id, seqs) => {
        const [a, b] = [seqs[seqs.length - 4]!, seqs[seqs.length - 2]!];
        await c.query(
          `UPDATE clnvault.entries t SET record = s.record FROM clnvault.entries s
            WHERE t.backup_id = $1 AND s.backup_id = $1 AND t.kind = 0 AND s.kind = 0 AND ((t.seq = $2 AND s.seq = $3) OR (t.seq = $3 AND s.seq = $2))`,
          [id, a, b],
        );
      }, async () => void (await refused(e, /breaks the chain|fails authentication/)));
    });

    it('a row replayed at the end', { timeout: 120_000 }, async () => {
      await tampered(e.backup, async (c, id, seqs) => {
        await c.query('DROP INDEX clnvault.entries_one_per_version');
        await c.query(
          `INSERT INTO clnvault.entries (backup_id, seq, kind, version, pragma_only, record, bytes)
             SELECT backup_id, $3, kind, version, pragma_only, record, bytes FROM clnvault.entries WHERE backup_id = $1 AND seq = $2 AND kind = 0`,
          [id, seqs[seqs.length - 2], seqs[seqs.length - 1]! + 1],
        );
      }, async () => void (await refused(e, /breaks the chain/)));
    });

    it('a row from another encrypted backup (same key) spliced in', { timeout: 120_000 }, async () => {
      await tampered(e.backup, async (c, id, seqs) => {
        const oid = Number((await c.query('SELECT id FROM clnvault.backups WHERE name = $1', [other.backup])).rows[0].id);
        await c.query(
          `UPDATE clnvault.entries SET record = (SELECT record FROM clnvault.entries WHERE backup_id = $3 AND kind = 0 ORDER BY seq DESC LIMIT 1)
            WHERE backup_id = $1 AND seq = $2 AND kind = 0`,
          [id, seqs[seqs.length - 1], oid],
        );
      }, async () => void (await refused(e, /breaks the chain|fails authentication/)));
    });

    it('the tail truncated: restores the authenticated prefix and says how new it is', { timeout: 120_000 }, async () => {
      await tampered(e.backup, async (c, id, seqs) => {
        await c.query('DELETE FROM clnvault.entries WHERE backup_id = $1 AND seq >= $2', [id, seqs[seqs.length - 3]]);
      }, async () => {
        const r = await restoreDump(e);
        const v = Number(/newest authenticated version (\d+)/.exec(r.stdout)![1]);
        assert.equal(v, head - 3, r.stdout);
      });
    });

    it('a single flipped byte: in a change\'s ciphertext, its prefix, its tag, and in a snapshot chunk', { timeout: 240_000 }, async () => {
      for (const [where, at] of [['ciphertext', 60], ['prefix time', 30], ['tag', -1]] as const) {
        await tampered(e.backup, async (c, id, seqs) => {
          const pos = at < 0 ? 'length(record) - 3' : String(at);
          await c.query(
            `UPDATE clnvault.entries SET record = set_byte(record, ${pos}, get_byte(record, ${pos}) # 1) WHERE backup_id = $1 AND seq = $2 AND kind = 0`,
            [id, seqs[seqs.length - 2]],
          );
        }, async () => void (await refused(e, new RegExp(where === 'tag' ? 'breaks the chain|fails authentication' : 'fails authentication'))));
      }
      await tampered(e.backup, async (c, id) => {
        const n = await c.query('UPDATE clnvault.snapshot_chunks SET data = set_byte(data, 1000, get_byte(data, 1000) # 128) WHERE backup_id = $1 AND chunk = 0', [id]);
        assert.equal(n.rowCount, 1);
      }, async () => void (await refused(e, /snapshot .* fails authentication/)));
      // verify reads every row: a flip in a row a restore would not apply is caught there
      await tampered(e.backup, async (c, id) => {
        await c.query('UPDATE clnvault.entries SET record = set_byte(record, 70, get_byte(record, 70) # 4) WHERE backup_id = $1 AND kind = 1', [id]);
      }, async () => {
        const v = await runCli(['verify', '--key-file', e.keyFile, e.url], { cwd: e.dir });
        assert.notEqual(v.code, 0, show(v));
        assert.match(v.stdout + v.stderr, /fails authentication/);
      });
    });

    it('a wrong or missing key: one clear line, nothing left behind; inspect without a key shows the key', { timeout: 120_000 }, async () => {
      const wrong = join(e.dir, 'wrong.key');
      writeKeyFile(wrong);
      const w = await restore(e, ['--key-file', wrong]);
      assert.notEqual(w.r.code, 0);
      assert.match(w.r.stderr, /wrong key/);
      assert.equal(w.r.stderr.trim().split('\n').length, 1, w.r.stderr);
      assert.deepEqual(readdirSync(w.dest), []);
      const none = await restore(e, []);
      assert.notEqual(none.r.code, 0);
      assert.match(none.r.stderr, /no key given.*--key-file/);
      assert.deepEqual(readdirSync(none.dest), []);
      const i = await runCli(['inspect', '--json', e.url], { cwd: e.dir });
      assert.equal(i.code, 0, show(i));
      const rep = JSON.parse(i.stdout) as { head: number; encryption: { keyKind: string; keyFingerprint: string; keyGiven: boolean } };
      assert.equal(rep.encryption.keyKind, 'key-file');
      assert.match(rep.encryption.keyFingerprint, /^[0-9a-f]{16}$/);
      assert.equal(rep.encryption.keyGiven, false);
      const v = await runCli(['verify', '--key-file', e.keyFile, e.url], { cwd: e.dir });
      assert.equal(v.code, 0, show(v));
      assert.match(v.stdout, /records authenticated; newest authenticated version \d+/);
      const s = await runCli(['status', '--json', '--lightning-dir', e.netDir], { cwd: e.dir });
      assert.equal(s.code, 0, show(s));
      assert.equal((JSON.parse(s.stdout) as { state: string }).state, 'in-step');
    });
  });

  it('an older schema (version 2, with a plaintext backup) migrates in place and its backup still reads', { timeout: 120_000 }, async () => {
    const c = await server.superClient();
    try {
      await c.query('CREATE DATABASE clnvault_old');
    } finally {
      await c.end();
    }
    const o = await server.superClient('clnvault_old');
    try {
      await o.query('CREATE SCHEMA clnvault');
      await o.query('CREATE TABLE clnvault.schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())');
      for (const v of [1, 2]) {
        await o.query(MIGRATIONS[v - 1]!);
        await o.query('INSERT INTO clnvault.schema_version(version) VALUES ($1)', [v]);
      }
      const id = (await o.query(`INSERT INTO clnvault.backups (name) VALUES ('old') RETURNING id`)).rows[0].id;
      await o.query(`INSERT INTO clnvault.entries (backup_id, seq, kind, version, statements, bytes) VALUES ($1, 1, 0, 5, ARRAY['CREATE TABLE x (a)'], 17)`, [id]);
    } finally {
      await o.end();
    }
    const url = `postgresql://postgres:super-secret@127.0.0.1:${server.port}/clnvault_old?backup=old`;
    const m = await runCli(['init', '--schema-only', url]);
    assert.equal(m.code, 0, show(m));
    assert.match(m.stdout, /schema version 2 -> 5/);
    const i = await runCli(['inspect', '--json', url]);
    assert.equal(i.code, 0, show(i));
    assert.equal((JSON.parse(i.stdout) as { head: number }).head, 5);
    const o2 = await server.superClient('clnvault_old');
    try {
      const cons = (await o2.query(`SELECT conname FROM pg_constraint WHERE conrelid = 'clnvault.entries'::regclass AND contype = 'c' ORDER BY conname`)).rows.map((r) => r.conname);
      assert.ok(cons.includes('entries_payload') && !cons.includes('entries_check'), cons.join(','));
      // a change needs exactly one of statements and record; a snapshot neither statements nor record required
      await assert.rejects(o2.query(`INSERT INTO clnvault.entries (backup_id, seq, kind, version, bytes) VALUES (1, 2, 0, 6, 0)`), /entries_payload/);
    } finally {
      await o2.end();
    }
  });
});
