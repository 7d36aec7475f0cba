import { listHeaders } from '../src/backends/backend.js';
import assert from 'node:assert/strict';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { createV2, V2Reader } from '../src/backends/file/v2.js';
import { createV1, V1Reader } from '../src/backends/file/v1.js';
import { FIXTURES } from './helpers/fixtures.js';
import { killAllPlugins, PluginProc } from './helpers/plugin-proc.js';
import { recordsEnd } from './helpers/v2-bytes.js';

const FIX = FIXTURES;
const BASIC = join(FIX, 'cln-v26.06.6/session-basic');

interface HookLine {
  data_version: number;
  writes: string[];
}
const basic: HookLine[] = readFileSync(join(BASIC, 'hooks.jsonl'), 'utf8')
  .split('\n')
  .filter((l) => l.trim())
  .map((l) => JSON.parse(l) as HookLine & { event?: string })
  .filter((l) => l.event === undefined);

const dirs: string[] = [];
after(() => {
  killAllPlugins();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** A network dir with backup.lock pointing at a fresh backup file. */
function netDir(opts: { format?: 'v1' | 'v2'; lock?: string | null } = {}): { dir: string; bkp: string } {
  const dir = mkdtempSync(join(tmpdir(), 'clnvault-plugin-'));
  dirs.push(dir);
  const bkp = join(dir, 'backup.bkp');
  if (opts.format === 'v1') createV1(bkp);
  else createV2(bkp);
  const lock = opts.lock === undefined ? JSON.stringify({ backend_url: `file://${bkp}` }) : opts.lock;
  if (lock !== null) writeFileSync(join(dir, 'backup.lock'), lock);
  return { dir, bkp };
}

function bump(dv: number): string {
  return `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${dv - 1}`;
}

async function started(dir: string): Promise<PluginProc> {
  const p = new PluginProc(dir);
  const r = await p.call('cln:getmanifest#1', 'getmanifest', { 'allow-deprecated-apis': false });
  assert.ok(r.result, `getmanifest answered: ${JSON.stringify(r)}`);
  return p;
}

async function write(p: PluginProc, id: string, dv: number, writes: string[]) {
  return p.call(id, 'db_write', { data_version: dv, writes });
}

describe('plugin protocol', () => {
  it('answers getmanifest with the db_write hook, not dynamic, and the deprecated option', async () => {
    const { dir } = netDir();
    const p = await started(dir);
    const r = await p.reply('cln:getmanifest#1');
    assert.equal(r.jsonrpc, '2.0');
    const m = r.result as { hooks: { name: string }[]; dynamic: boolean; options: { name: string }[]; rpcmethods: { name: string }[] };
    assert.deepEqual(m.hooks, [{ name: 'db_write' }]);
    assert.equal(m.dynamic, false);
    assert.ok(m.options.some((o) => o.name === 'backup-destination'));
    assert.ok(m.rpcmethods.some((o) => o.name === 'clnvault-status'));
    await p.close();
    assert.deepEqual(p.garbage, []);
  });

  it('stores writes that arrive before init durably, before answering them', async () => {
    const { dir, bkp } = netDir();
    const p = await started(dir);
    for (let i = 0; i < 9; i++) {
      const r = await write(p, `cln:db_write#${21 + i}`, basic[i]!.data_version, basic[i]!.writes);
      assert.deepEqual(r.result, { result: 'continue' });
    }
    // SIGKILL right after the last answer: what was acknowledged must already be in the file.
    p.kill('SIGKILL');
    await p.exit;
    const reader = V2Reader.open(bkp);
    const h = listHeaders(reader);
    assert.equal(h.length, 9);
    assert.deepEqual(h.map((x) => x.version), basic.slice(0, 9).map((l) => l.data_version));
    const e = reader.read(h[0]!);
    assert.equal(e.kind, 'change');
    if (e.kind === 'change') assert.deepEqual(e.statements, basic[0]!.writes);
    reader.close();
  });

  it('handles messages split across reads and merged into one read', async () => {
    const { dir } = netDir();
    const p = await started(dir);
    const msg = (id: string, dv: number, w: string[]) =>
      `${JSON.stringify({ jsonrpc: '2.0', id, method: 'db_write', params: { data_version: dv, writes: w } })}\n\n`;
    // One message dribbled byte by byte.
    const first = Buffer.from(msg('cln:db_write#1', 1, basic[0]!.writes));
    for (let i = 0; i < first.length; i += 997) p.sendRaw(first.subarray(i, i + 997));
    assert.deepEqual((await p.reply('cln:db_write#1')).result, { result: 'continue' });
    // Three in one write, the separator of the last split from it.
    const three = msg('cln:db_write#2', 1, basic[1]!.writes) + msg('cln:db_write#3', 2, basic[2]!.writes) + msg('cln:db_write#4', 2, basic[3]!.writes);
    p.sendRaw(three.slice(0, -1));
    await new Promise((r) => setTimeout(r, 50));
    p.sendRaw(three.slice(-1));
    for (const id of ['cln:db_write#2', 'cln:db_write#3', 'cln:db_write#4']) {
      assert.deepEqual((await p.reply(id)).result, { result: 'continue' });
    }
    await p.close();
    assert.deepEqual(p.garbage, []);
  });

  it('echoes string ids and rejects unknown methods with a JSON-RPC error', async () => {
    const { dir } = netDir();
    const p = await started(dir);
    const r = await p.call('cli:frobnicate#7/cln:frobnicate#8', 'frobnicate', {});
    assert.equal(r.id, 'cli:frobnicate#7/cln:frobnicate#8');
    assert.equal(r.error?.code, -32601);
    const n = await p.call('cln:init#2', 'init', { options: {}, configuration: { 'lightning-dir': dir } });
    assert.deepEqual(n.result, {});
    await p.close();
  });

  it('logs malformed JSON, stays up, and answers the next request', async () => {
    const { dir } = netDir();
    const p = await started(dir);
    p.sendRaw('{"jsonrpc":"2.0","id":"x","method":"db_wri\n\n');
    p.sendRaw('[1,2,3]\n\n');
    p.sendRaw(Buffer.from([0xff, 0xfe, 0x7b, 0x0a, 0x0a]));
    const r = await write(p, 'cln:db_write#9', 1, basic[0]!.writes);
    assert.deepEqual(r.result, { result: 'continue' });
    await p.waitForLog(/^error:.*not valid JSON/);
    // A message cut off by the end of input is reported, and the plugin exits cleanly.
    p.sendRaw('{"jsonrpc":"2.0","id":"y","method":"db_write","params":{"data_v');
    p.child.stdin.end();
    const ex = await p.exit;
    assert.equal(ex.code, 0);
    assert.ok(p.logs().some((l) => l.includes('input ended inside a message')), p.logs().join('\n'));
    assert.deepEqual(p.garbage, []);
  });

  it('rejects invalid db_write params without writing anything', async () => {
    const { dir, bkp } = netDir();
    const p = await started(dir);
    const r = await p.call('cln:db_write#1', 'db_write', { data_version: -1, writes: ['x'] });
    assert.ok(r.error, 'an error answer makes lightningd abort without committing');
    await p.close();
    assert.equal(recordsEnd(bkp), 64, 'no record (format 4: the reserved zeros after the header are not one)');
  });
});

describe('plugin start-up refusals', () => {
  const cases: Array<[string, string | null, RegExp]> = [
    ['missing backup.lock', null, /could not find backup\.lock.*clnvault init/],
    ['backup.lock that is not JSON', '{"backend_url": file', /not valid JSON/],
    ['backup.lock without backend_url', '{"url": "file:///x"}', /no "backend_url"/],
    ['unknown URL scheme', JSON.stringify({ backend_url: 'ftp://host/x.bkp' }), /no backend for "ftp:\/\/host\/x\.bkp"/],
    ['backup file that does not exist', JSON.stringify({ backend_url: 'file:///nonexistent/dir/x.bkp' }), /does not exist.*mounted/],
  ];
  for (const [name, lock, re] of cases) {
    it(`${name}: answers getmanifest, then refuses every db_write with a clear error`, async () => {
      const { dir } = netDir({ lock });
      const p = await started(dir);
      const r = await write(p, 'cln:db_write#21', 1, basic[0]!.writes);
      assert.ok(r.error, 'refused');
      assert.match(r.error!.message, re);
      await p.waitForLog(new RegExp(`^error:.*${re.source}`));
      await p.close();
      assert.deepEqual(p.garbage, []);
    });
  }

  it('a corrupt backup file is refused with its path', async () => {
    const { dir, bkp } = netDir();
    writeFileSync(bkp, Buffer.alloc(300, 0x41));
    const p = await started(dir);
    const r = await write(p, 'cln:db_write#21', 1, basic[0]!.writes);
    assert.ok(r.error);
    assert.ok(r.error!.message.includes(bkp), r.error!.message);
    await p.close();
  });

  it('a second plugin on the same backup is refused, the first keeps working', async () => {
    const { dir, bkp } = netDir();
    const a = await started(dir);
    assert.deepEqual((await write(a, 'a1', 1, basic[0]!.writes)).result, { result: 'continue' });
    const b = await started(dir);
    const r = await write(b, 'b1', 2, basic[2]!.writes);
    assert.match(r.error?.message ?? '', /already open for writing/);
    await b.close();
    assert.deepEqual((await write(a, 'a2', 1, basic[1]!.writes)).result, { result: 'continue' });
    await a.close();
    const reader = V2Reader.open(bkp);
    assert.equal(listHeaders(reader).length, 2);
    reader.close();
  });
});

describe('version rules', () => {
  async function seeded(n: number, format: 'v1' | 'v2' = 'v2') {
    const nd = netDir({ format });
    const p = await started(nd.dir);
    for (let i = 0; i < n; i++) {
      const r = await write(p, `s${i}`, basic[i]!.data_version, basic[i]!.writes);
      assert.deepEqual(r.result, { result: 'continue' });
    }
    await p.close();
    return nd;
  }
  const versions = (bkp: string, format: 'v1' | 'v2' = 'v2') => {
    const r = format === 'v2' ? V2Reader.open(bkp) : V1Reader.open(bkp);
    const v = listHeaders(r).map((h) => h.version);
    r.close();
    return v;
  };

  for (const format of ['v2', 'v1'] as const) {
    it(`${format}: the first write re-sending the backup's head version rewinds the uncommitted entry`, async () => {
      const { dir, bkp } = await seeded(12, format);
      assert.deepEqual(versions(bkp, format), [1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      const p = await started(dir);
      const r = await write(p, 'r1', 10, ['UPDATE version SET version=282;', bump(10)]);
      assert.deepEqual(r.result, { result: 'continue' });
      await p.waitForLog(/never committed/);
      await p.close();
      assert.deepEqual(versions(bkp, format), [1, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      const reader = format === 'v2' ? V2Reader.open(bkp) : V1Reader.open(bkp);
      const h = listHeaders(reader);
      const last = reader.read(h[h.length - 1]!);
      assert.equal(last.kind === 'change' && last.statements[0], 'UPDATE version SET version=282;');
      reader.close();
    });
  }

  it('continues in step after a restart (first write = head + 1)', async () => {
    const { dir, bkp } = await seeded(5);
    const p = await started(dir);
    assert.deepEqual((await write(p, 'c', 4, basic[5]!.writes)).result, { result: 'continue' });
    await p.waitForLog(/versions match up/);
    await p.close();
    assert.deepEqual(versions(bkp), [1, 1, 2, 2, 3, 4]);
  });

  it('refuses a node that is behind the backup by more than one write', async () => {
    const { dir, bkp } = await seeded(10);
    const p = await started(dir);
    const r = await write(p, 'b', 6, ['UPDATE version SET version=282;', bump(6)]);
    assert.match(r.error?.message ?? '', /lost committed state.*clnvault restore/);
    assert.ok(r.error!.message.includes(`'clnvault restore file://${bkp} ${dir}/lightningd.sqlite3'`), r.error!.message);
    // Once refused, the node is going down: nothing more is accepted.
    assert.ok((await write(p, 'b2', 9, ['x', bump(9)])).error);
    await p.close();
    assert.deepEqual(versions(bkp), [1, 1, 2, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('refuses a node ahead of the backup when it cannot re-baseline', async () => {
    const { dir } = await seeded(4);
    const p = await started(dir);
    const r = await write(p, 'a', 9, ['UPDATE version SET version=282;', bump(9)]);
    assert.match(r.error?.message ?? '', /only holds up to version 2/);
    await p.close();
  });

  it('refuses gaps and regressions in the middle of a run, accepts repeated versions', async () => {
    const { dir, bkp } = await seeded(0);
    const p = await started(dir);
    for (let i = 0; i < 6; i++) assert.deepEqual((await write(p, `w${i}`, basic[i]!.data_version, basic[i]!.writes)).result, { result: 'continue' });
    const gap = await write(p, 'gap', 7, ['INSERT INTO vars VALUES (1)', bump(7)]);
    assert.match(gap.error?.message ?? '', /jumped from 4 to 7/);
    await p.close();
    assert.deepEqual(versions(bkp), [1, 1, 2, 2, 3, 4]);

    const { dir: dir2 } = await seeded(0);
    const q = await started(dir2);
    for (let i = 0; i < 6; i++) await write(q, `w${i}`, basic[i]!.data_version, basic[i]!.writes);
    const back = await write(q, 'back', 3, ['x', bump(3)]);
    assert.match(back.error?.message ?? '', /went back from 4 to 3/);
    await q.close();
  });

  it('refuses a hook with no statements (a PostgreSQL wallet)', async () => {
    const { dir, bkp } = netDir();
    const p = await started(dir);
    const r = await write(p, 'pg', 1, []);
    assert.match(r.error?.message ?? '', /PostgreSQL/);
    await p.close();
    assert.equal(recordsEnd(bkp), 64, 'no record (format 4: the reserved zeros after the header are not one)');
  });

  it('re-baselines from the live database when the node is ahead (clean stop), and says so', async () => {
    const { dir, bkp } = await seeded(12);
    // The node committed versions 11 and 12 after the plugin was shut down.
    const db = join(dir, 'lightningd.sqlite3');
    copyFileSync(join(BASIC, 'final.sqlite3'), db);
    const live = new Database(db);
    const dv = (live.prepare("SELECT intval FROM vars WHERE name='data_version'").get() as { intval: number }).intval;
    live.close();
    const p = await started(dir);
    // announced at start, taken in the first db_write hook, where no start-up timer runs (issue 10 item 12)
    await p.waitForLog(/re-baselining at the first database write/);
    const r = await write(p, 'n', dv + 1, ['UPDATE version SET version=282;', bump(dv + 1)]);
    assert.deepEqual(r.result, { result: 'continue' });
    await p.waitForLog(/re-baselined/);
    const st = await p.call('cli:status', 'clnvault-status', {});
    assert.equal((st.result as { head_version: number }).head_version, dv + 1);
    await p.close();
    const v = versions(bkp);
    assert.deepEqual(v.slice(-2), [dv, dv + 1]);
    const reader = V2Reader.open(bkp);
    const h = listHeaders(reader);
    assert.equal(h[h.length - 2]!.kind, 'snapshot');
    reader.close();
  });

  it('with rebaseline disabled in backup.lock, a node ahead is refused', async () => {
    const { dir, bkp } = await seeded(4);
    writeFileSync(join(dir, 'backup.lock'), JSON.stringify({ backend_url: `file://${bkp}`, rebaseline: false }));
    copyFileSync(join(BASIC, 'final.sqlite3'), join(dir, 'lightningd.sqlite3'));
    const p = await started(dir);
    const r = await write(p, 'n', 160, ['UPDATE version SET version=282;', bump(160)]);
    assert.match(r.error?.message ?? '', /only holds up to version 2/);
    await p.close();
  });
});

// the important-plugin check (listconfigs, and its config-file fallback): test/plugin-importance.test.ts
