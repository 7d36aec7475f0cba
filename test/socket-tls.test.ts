/**
 * clnvault's own remote mode over real TCP on 127.0.0.1: one `clnvault server --dir` for several nodes,
 * TLS with a pre-shared key per node. Recorded sessions through the plugin and back; wrong keys, a
 * server that is not ours, unknown names and another node's name refused; garbage does not disturb.
 */
import assert from 'node:assert/strict';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { SimNode } from '../src/sim/lightningd.js';
import { FIXTURES } from './helpers/fixtures.js';
import { runCli, scratchArea } from './helpers/cli.js';
import { killAllPlugins, PluginProc } from './helpers/plugin-proc.js';
import { killAllServers, RawClient } from './helpers/socket-rig.js';
import { addNode, nodesServer, recordedCalls, writeThroughServerKills } from './helpers/nodes-rig.js';
import { dump } from './helpers/sqlite.js';

const CLN = join(FIXTURES, 'cln-v26.06.6');
const REF = join(FIXTURES, 'reference-socket');
const area = scratchArea('clnvault-tls-');
after(async () => {
  killAllPlugins();
  await killAllServers();
  area.cleanup();
});

/** A network directory whose key file holds `key`, and backup.lock pointing at the server as `name`. */
function nodeDir(key: string, url: string): string {
  const d = area.dir();
  writeFileSync(join(d, 'clnvault-remote.key'), `${key}\n`, { mode: 0o600 });
  writeFileSync(join(d, 'backup.lock'), JSON.stringify({ backend_url: url, remote_timeout: 3 }));
  return d;
}

async function restore(url: string, cwd: string): Promise<{ code: number | null; stderr: string; dest: string }> {
  const dest = join(area.dir(), 'restored.sqlite3');
  const r = await runCli(['restore', url, dest], { cwd, env: { ...process.env, TMPDIR: area.dir() } });
  return { code: r.code, stderr: r.stderr, dest };
}

describe('clnvault server --dir: many nodes, one key each', () => {
  it('recorded CLN sessions of two nodes at once through one server; each restores to its own database', { timeout: 240_000 }, async () => {
    const dir = area.dir();
    const keyA = await addNode(dir, 'alice');
    const keyB = await addNode(dir, 'bob');
    const { port } = await nodesServer(dir);
    const run = async (name: string, key: string, transcript: string): Promise<string> => {
      const netDir = area.dir();
      writeFileSync(join(netDir, 'clnvault-remote.key'), `${key}\n`, { mode: 0o600 });
      const url = `clnvault://${name}@127.0.0.1:${port}`;
      const init = await runCli(['init', '--lightning-dir', netDir, url]);
      assert.equal(init.code, 0, init.stderr);
      const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000 });
      const r = await node.replay(join(CLN, transcript));
      assert.equal(r.failure, undefined, JSON.stringify(r.failure));
      await node.stop();
      const out = await restore(url, netDir);
      assert.equal(out.code, 0, out.stderr);
      return dump(out.dest);
    };
    const [a, b] = await Promise.all([run('alice', keyA, 'session-abort/hooks.jsonl'), run('bob', keyB, 'session-basic/hooks.jsonl')]);
    assert.equal(a, readFileSync(join(CLN, 'session-abort/final.dump.sql'), 'utf8'));
    assert.equal(b, readFileSync(join(CLN, 'session-basic/final.dump.sql'), 'utf8'));
  });

  it('wrong key, unknown name, another node name, a server that is not ours: all refused, and alike', { timeout: 60_000 }, async () => {
    const dir = area.dir();
    const keyA = await addNode(dir, 'alice');
    await addNode(dir, 'bob');
    const { proc, port } = await nodesServer(dir);
    const calls = recordedCalls();

    // alice herself works
    const good = new PluginProc(nodeDir(keyA, `clnvault://alice@127.0.0.1:${port}`));
    for (const [i, c] of calls.slice(0, 3).entries()) assert.deepEqual((await good.call(`w${i}`, 'db_write', c)).result, { result: 'continue' });
    await good.close();

    const refused = async (key: string, url: string): Promise<string> => {
      const p = new PluginProc(nodeDir(key, url));
      const r = await p.call('w0', 'db_write', calls[0]);
      await p.close();
      assert.ok(r.error, JSON.stringify(r));
      return r.error.message;
    };
    const wrongKey = await refused('11'.repeat(32), `clnvault://alice@127.0.0.1:${port}`);
    assert.match(wrongKey, /did not prove it holds node alice's key/);
    // alice's key presented as bob: bob's backup is out of reach
    const asBob = await refused(keyA, `clnvault://bob@127.0.0.1:${port}`);
    assert.match(asBob, /did not prove it holds node bob's key/);
    // a name that does not exist fails exactly like a wrong key: nothing tells which names exist
    const unknown = await refused(keyA, `clnvault://carol@127.0.0.1:${port}`);
    assert.equal(unknown.replace(/carol/g, 'X'), asBob.replace(/bob/g, 'X'));

    // an impostor server (another directory with a node called alice, but not our key) is refused by the node
    const other = area.dir();
    await addNode(other, 'alice');
    const impostor = await nodesServer(other);
    const fake = await refused(keyA, `clnvault://alice@127.0.0.1:${impostor.port}`);
    assert.match(fake, /did not prove it holds node alice's key/);
    await impostor.proc.kill();

    // bob's backup is untouched by all this, alice's holds her three writes
    const netDir = nodeDir(keyA, `clnvault://alice@127.0.0.1:${port}`);
    const inspect = await runCli(['inspect', '--json', `clnvault://alice@127.0.0.1:${port}`], { cwd: netDir });
    assert.equal(inspect.code, 0, inspect.stderr);
    assert.equal(JSON.parse(inspect.stdout).head, 2);
    const bobFile = await runCli(['inspect', '--json', `file://${join(dir, 'nodes', 'bob', 'backup.bkp')}`]);
    assert.equal(JSON.parse(bobFile.stdout).entries, 0);
    assert.match(proc.out, /refused in the TLS handshake/);
    await proc.kill();
  });

  it('a key file others can read is refused; garbage and a silent client do not disturb a node', { timeout: 60_000 }, async () => {
    const dir = area.dir();
    const key = await addNode(dir, 'alice');
    const { port } = await nodesServer(dir);
    const netDir = nodeDir(key, `clnvault://alice@127.0.0.1:${port}`);
    chmodSync(join(netDir, 'clnvault-remote.key'), 0o644);
    const p = new PluginProc(netDir);
    const r = await p.call('w0', 'db_write', recordedCalls()[0]);
    await p.close();
    assert.match(r.error?.message ?? '', /readable by other users.*chmod 600/);
    chmodSync(join(netDir, 'clnvault-remote.key'), 0o600);

    const garbage = await RawClient.connect(port);
    garbage.send(Buffer.from('\x04\x00\x00\x00\x00not tls at all'));
    const silent = await RawClient.connect(port);
    const node = new PluginProc(netDir);
    const t0 = Date.now();
    for (const [i, c] of recordedCalls().entries()) assert.deepEqual((await node.call(`w${i}`, 'db_write', c)).result, { result: 'continue' });
    await node.close();
    assert.ok(Date.now() - t0 < 20_000);
    assert.ok(await garbage.closedWithin(5000), 'garbage was not dropped');
    silent.close();
  });

  it('the server SIGKILLed mid-write and restarted on the same port: the plugin reconnects (TLS again), nothing acknowledged is lost, nothing doubled', { timeout: 120_000 }, async () => {
    const dir = area.dir();
    const key = await addNode(dir, 'alice');
    let { proc, port } = await nodesServer(dir);
    const url = `clnvault://alice@127.0.0.1:${port}`;
    const netDir = nodeDir(key, url);
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: url, remote_timeout: 30 }));
    const plugin = new PluginProc(netDir);
    await plugin.call('m', 'getmanifest', {});
    proc = await writeThroughServerKills(plugin, dir, port, proc);
    await plugin.close();
    const out = await restore(url, netDir);
    assert.equal(out.code, 0, out.stderr);
    assert.equal(dump(out.dest), readFileSync(join(REF, 'expected.dump.sql'), 'utf8'));
    await proc.kill();
  });

  it('the server down longer than remote_timeout: the write is refused within the bound, naming what to do', { timeout: 60_000 }, async () => {
    const dir = area.dir();
    const key = await addNode(dir, 'alice');
    const { proc, port } = await nodesServer(dir);
    const url = `clnvault://alice@127.0.0.1:${port}`;
    const netDir = nodeDir(key, url);
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: url, remote_timeout: 2 }));
    const plugin = new PluginProc(netDir);
    const calls = recordedCalls();
    assert.deepEqual((await plugin.call('w0', 'db_write', calls[0])).result, { result: 'continue' });
    await proc.kill('SIGKILL');
    const t0 = Date.now();
    const r = await plugin.call('w1', 'db_write', calls[1]);
    const took = Date.now() - t0;
    assert.ok(r.error, JSON.stringify(r));
    assert.match(r.error.message, /could not be reached within remote_timeout \(2 s/);
    assert.ok(took >= 1500 && took < 20_000, `refused after ${took} ms`);
    await plugin.close();
  });
});
