/**
 * Issue 10, item 14: whether clnvault was loaded with important-plugin= is asked of lightningd
 * (listconfigs over lightning-rpc, after init, off the main thread) instead of parsed from config
 * files, which missed included files (where reckless writes). A real unix socket server speaks
 * lightningd's JSON-RPC here; the built plugin runs as a child process over real pipes.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { createV2 } from '../src/backends/file/v2.js';
import { killAllPlugins, PLUGIN, PluginProc } from './helpers/plugin-proc.js';

const dirs: string[] = [];
after(() => {
  killAllPlugins();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function netDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'clnvault-importance-'));
  dirs.push(dir);
  createV2(join(dir, 'backup.bkp'));
  writeFileSync(join(dir, 'backup.lock'), JSON.stringify({ backend_url: `file://${join(dir, 'backup.bkp')}` }));
  return dir;
}

/** lightningd's listconfigs (v23.08+ shape) for the given plugin lines, answered on DIR/lightning-rpc. */
async function fakeRpc(dir: string, plugins: { important: Array<[string, string]>; plain: Array<[string, string]> }): Promise<{ server: Server; requests: string[] }> {
  const requests: string[] = [];
  const server = createServer((s: Socket) => {
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString();
      let req: { id: unknown; method: string };
      try {
        req = JSON.parse(buf) as typeof req;
      } catch {
        return;
      }
      buf = '';
      requests.push(req.method);
      const multi = (l: Array<[string, string]>) => ({ values_str: l.map((x) => x[0]), sources: l.map((x) => x[1]) });
      const result = {
        configs: {
          conf: { value_str: join(dir, 'config'), source: 'cmdline' },
          plugin: multi(plugins.plain),
          'important-plugin': multi(plugins.important),
          'disable-plugin': { values_str: [], sources: [] },
        },
      };
      // split in two writes: the reader must wait for the whole object
      const text = `${JSON.stringify({ jsonrpc: '2.0', id: req.id, result })}\n\n`;
      s.write(text.slice(0, 40));
      setTimeout(() => s.write(text.slice(40)), 20);
    });
  });
  await new Promise<void>((resolve) => server.listen(join(dir, 'lightning-rpc'), resolve));
  return { server, requests };
}

async function startedWithInit(dir: string): Promise<PluginProc> {
  const p = new PluginProc(dir);
  const r = await p.call('cln:getmanifest#1', 'getmanifest', { 'allow-deprecated-apis': false });
  assert.ok(r.result);
  const i = await p.call('cln:init#2', 'init', {
    options: {},
    configuration: { 'lightning-dir': dir, 'rpc-file': 'lightning-rpc', network: 'regtest', startup: true },
  });
  assert.ok(i.result);
  return p;
}

/** The answer is logged when the plugin next handles a message (its main thread blocks on stdin). */
async function logMatching(p: PluginProc, re: RegExp, timeoutMs = 20_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (let n = 0; ; n++) {
    const hit = p.logs().find((l) => re.test(l));
    if (hit) return hit;
    if (Date.now() > deadline) throw new Error(`no log matching ${re}; logs:\n${p.logs().join('\n')}`);
    await p.call(`cli:status#${n}`, 'clnvault-status', {});
    await new Promise((r) => setTimeout(r, 50));
  }
}

const close = (s: Server) => new Promise((r) => s.close(r));

describe('important-plugin check through listconfigs', () => {
  const self = realpathSync(PLUGIN);

  it('loaded with plugin= from a file the config includes (where reckless writes): warns, naming the file and line', async () => {
    const dir = netDir();
    // the config only includes the file with the plugin line: parsing config files missed this
    writeFileSync(join(dir, 'config'), 'network=regtest\ninclude reckless.conf\n');
    writeFileSync(join(dir, 'reckless.conf'), `plugin=${self}\n`);
    const { server, requests } = await fakeRpc(dir, { important: [], plain: [[self, `${join(dir, 'reckless.conf')}:1`]] });
    try {
      const p = await startedWithInit(dir);
      const line = await logMatching(p, /^warn: clnvault: loaded with plugin= /);
      assert.ok(line.includes(`(${join(dir, 'reckless.conf')}:1)`), line);
      assert.match(line, /not important-plugin=/);
      assert.doesNotMatch(line, /listconfigs failed/);
      assert.deepEqual(requests, ['listconfigs']);
      await p.close();
    } finally {
      await close(server);
    }
  });

  it('loaded with important-plugin=: no warning (a debug line says where lightningd has it from)', async () => {
    const dir = netDir();
    const { server } = await fakeRpc(dir, { important: [[self, 'cmdline']], plain: [] });
    try {
      const p = await startedWithInit(dir);
      await logMatching(p, /^debug: clnvault: loaded with important-plugin= \(cmdline\), per listconfigs/);
      assert.ok(!p.logs().some((l) => /^(warn|info): .*important-plugin/.test(l)), p.logs().join('\n'));
      await p.close();
    } finally {
      await close(server);
    }
  });

  it('listed under neither (a plugin directory, plugin start): says to use important-plugin=', async () => {
    const dir = netDir();
    const { server } = await fakeRpc(dir, { important: [['/usr/lib/other-plugin', 'cmdline']], plain: [] });
    try {
      const p = await startedWithInit(dir);
      await logMatching(p, /^info: clnvault: make sure this plugin is loaded with important-plugin=.*lists it under neither/);
      await p.close();
    } finally {
      await close(server);
    }
  });

  it('the db_write path is not held up while lightningd is slow to answer', async () => {
    const dir = netDir();
    // a socket that accepts, reads and never answers
    const sockets: Socket[] = [];
    const server = createServer((s) => {
      sockets.push(s);
      s.on('error', () => undefined);
      s.resume();
    });
    await new Promise<void>((resolve) => server.listen(join(dir, 'lightning-rpc'), resolve));
    try {
      const p = await startedWithInit(dir);
      const w = await p.call('cln:db_write#3', 'db_write', { data_version: 1, writes: ['CREATE TABLE t (a)'] });
      assert.deepEqual(w.result, { result: 'continue' });
      await p.close();
    } finally {
      for (const s of sockets) s.destroy();
      await close(server);
    }
  });
});

describe('fallback when listconfigs fails: config files, and the log says so', () => {
  const self = realpathSync(PLUGIN);
  for (const [line, re] of [
    [`plugin=${self}`, /^warn: clnvault: loaded with plugin= .*not important-plugin=.*listconfigs failed/],
    [`important-plugin=${self}`, /^info: clnvault: loaded with important-plugin= .*listconfigs failed/],
    ['', /^info: clnvault: make sure this plugin is loaded with important-plugin=.*listconfigs failed/],
  ] as const) {
    it(`no lightning-rpc, config ${line ? `"${line.split('=')[0]}="` : 'without the plugin'}`, async () => {
      const dir = netDir();
      writeFileSync(join(dir, 'config'), `network=regtest\n${line}\nlog-level=debug\n`);
      const p = await startedWithInit(dir);
      await logMatching(p, re);
      await p.close();
    });
  }
});
