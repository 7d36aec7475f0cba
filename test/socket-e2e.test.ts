/**
 * socket: end to end over real TCP on 127.0.0.1: the recorded Core Lightning sessions through the built
 * plugin (lightningd simulator) to `clnvault server`, restored through the socket; the server SIGKILLed
 * and restarted under a writing plugin; outages past remote_timeout; a SOCKS5 proxy resolving the name.
 */
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { metadataPacket, PKT } from '../src/backends/socket/protocol.js';
import { SimNode } from '../src/sim/lightningd.js';
import { FIXTURES } from './helpers/fixtures.js';
import { runCli, scratchArea } from './helpers/cli.js';
import { killAllPlugins, PluginProc } from './helpers/plugin-proc.js';
import { decoded, killAllServers, onPackets, parsePackets, referenceShapedServer, Socks5Proxy, startServer } from './helpers/socket-rig.js';
import { dump } from './helpers/sqlite.js';

const CLN = join(FIXTURES, 'cln-v26.06.6');
const REF = join(FIXTURES, 'reference-socket');
const area = scratchArea('clnvault-socket-e2e-');
after(async () => {
  killAllPlugins();
  await killAllServers();
  area.cleanup();
});

async function serverFile(format: 'v1' | 'v2'): Promise<string> {
  const url = `file://${join(area.dir(), 'srv.bkp')}`;
  const init = await runCli(['init', '--format', format, url]);
  assert.equal(init.code, 0, init.stderr);
  return url;
}

async function restoreDump(url: string): Promise<string> {
  // a TMPDIR of its own, so that the check below sees only this restore's scratch copy
  const tmp = area.dir();
  const dest = join(area.dir(), 'restored.sqlite3');
  const r = await runCli(['restore', url, dest], { env: { ...process.env, TMPDIR: tmp } });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(readdirSync(tmp), [], 'the restore left its scratch copy behind');
  return dump(dest);
}

function recordedCalls(): Array<{ data_version: number; writes: string[] }> {
  return parsePackets(readFileSync(join(REF, 'c2s.bin')))
    .packets.filter((p) => p.type === PKT.CHANGE)
    .map((p) => {
      const d = decoded(p);
      return { data_version: d.version!, writes: d.body.toString('utf8').split('\u0000') };
    });
}

const sessions: Array<[string, string[], string]> = [
  ['session-basic + restart', ['session-basic/hooks.jsonl', 'session-basic/hooks-restart.jsonl'], 'session-basic/final-after-restart.dump.sql'],
  ['session-abort (crash between hook and commit: REWIND of the re-sent version)', ['session-abort/hooks.jsonl'], 'session-abort/final.dump.sql'],
  ['session-channels', ['session-channels/hooks.jsonl'], 'session-channels/final.dump.sql'],
];

for (const format of ['v2', 'v1'] as const) {
  describe(`recorded CLN traffic → plugin → socket: → clnvault server (${format} file) → restore through the socket`, () => {
    for (const [name, transcripts, expected] of sessions) {
      it(name, { timeout: 240_000 }, async () => {
        const fileUrl = await serverFile(format);
        const { port } = await startServer(fileUrl);
        const url = `socket:127.0.0.1:${port}`;
        const netDir = area.dir();
        const init = await runCli(['init', '--lightning-dir', netDir, url]);
        assert.equal(init.code, 0, init.stderr);
        const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000 });
        for (const [i, t] of transcripts.entries()) {
          if (i > 0) await node.restart();
          const r = await node.replay(join(CLN, t));
          assert.equal(r.failure, undefined, `replay of ${t} failed: ${JSON.stringify(r.failure)}`);
        }
        await node.stop();
        assert.deepEqual(node.violations, []);
        const want = readFileSync(join(CLN, expected), 'utf8');
        assert.equal(await restoreDump(url), want);
        // and the server's own file says the same
        assert.equal(await restoreDump(fileUrl), want);
        if (format === 'v2') {
          // the server keeps zeros reserved after its newest record, as the plugin does, so an append's
          // fdatasync changes no file size (no journal commit on the ack's path)
          const ins = await runCli(['inspect', '--json', fileUrl]);
          assert.equal(ins.code, 0, ins.stderr);
          assert.ok((JSON.parse(ins.stdout) as { reservedBytes?: number }).reservedBytes! > 0, ins.stdout);
        }
      });
    }
  });
}

describe('socket: faults', () => {
  it('server SIGKILLed around writes and restarted: the plugin reconnects, nothing acknowledged is lost, nothing doubled', { timeout: 120_000 }, async () => {
    const fileUrl = await serverFile('v2');
    let { proc, port } = await startServer(fileUrl);
    const netDir = area.dir();
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: `socket:127.0.0.1:${port}`, remote_timeout: 30 }));
    const plugin = new PluginProc(netDir);
    // lightningd asks for the manifest first; log lines wait for it
    await plugin.call('m', 'getmanifest', {});
    const calls = recordedCalls();
    for (const [i, c] of calls.entries()) {
      plugin.request(`w${i}`, 'db_write', c);
      if (i % 4 === 2) {
        // killed while the write is on its way or being stored: it may or may not have landed
        await new Promise((r) => setTimeout(r, (i * 3) % 7));
        await proc.kill('SIGKILL');
        await new Promise((r) => setTimeout(r, 300));
        ({ proc } = await startServer(fileUrl, port));
      }
      const r = await plugin.reply(`w${i}`, 40_000);
      assert.deepEqual(r.result, { result: 'continue' }, JSON.stringify(r));
    }
    await plugin.close();
    assert.ok(plugin.logs().some((l) => /reconnected to 127\.0\.0\.1/.test(l)), plugin.logs().join('\n'));
    assert.equal(await restoreDump(`socket:127.0.0.1:${port}`), readFileSync(join(REF, 'expected.dump.sql'), 'utf8'));
    await proc.kill();
  });

  it('an outage longer than remote_timeout: the write is refused (lightningd stops without committing) with what to do', { timeout: 60_000 }, async () => {
    const fileUrl = await serverFile('v2');
    const { proc, port } = await startServer(fileUrl);
    const netDir = area.dir();
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: `socket:127.0.0.1:${port}`, remote_timeout: 2 }));
    const plugin = new PluginProc(netDir);
    const calls = recordedCalls();
    assert.deepEqual((await plugin.call('w0', 'db_write', calls[0])).result, { result: 'continue' });
    await proc.kill('SIGKILL');
    const t0 = Date.now();
    const r = await plugin.call('w1', 'db_write', calls[1]);
    const took = Date.now() - t0;
    assert.ok(r.error, JSON.stringify(r));
    assert.match(r.error.message, /could not be reached within remote_timeout \(2 s/);
    assert.match(r.error.message, /remote_timeout" in backup\.lock/);
    assert.ok(took >= 1500 && took < 20_000, `refused after ${took} ms`);
    await plugin.waitForLog(/refuses this database write/);
    await plugin.close();
  });

  it('no server at start-up: the plugin gives up after remote_timeout and refuses the first write', { timeout: 60_000 }, async () => {
    const fileUrl = await serverFile('v2');
    const { proc, port } = await startServer(fileUrl);
    await proc.kill();
    const netDir = area.dir();
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: `socket:127.0.0.1:${port}`, remote_timeout: 1 }));
    const plugin = new PluginProc(netDir);
    const r = await plugin.call('w0', 'db_write', recordedCalls()[0]);
    assert.ok(r.error, JSON.stringify(r));
    assert.match(r.error.message, /could not be reached within remote_timeout/);
    await plugin.close();
  });
});

describe('socket: through a SOCKS5 proxy', () => {
  it('the name goes to the proxy unresolved (remote DNS, as Tor needs for .onion), writes and restores work', { timeout: 60_000 }, async () => {
    const fileUrl = await serverFile('v1');
    const { port } = await startServer(fileUrl);
    const onion = 'vaultvaultvaultvaultvaultvaultvaultvaultvaultvaultvaultv.onion';
    const proxy = new Socks5Proxy({ [onion]: '127.0.0.1' });
    const pport = await proxy.listen();
    const url = `socket:${onion}:${port}?proxy=socks5:127.0.0.1:${pport}`;
    const netDir = area.dir();
    const init = await runCli(['init', '--lightning-dir', netDir, url]);
    assert.equal(init.code, 0, init.stderr);
    const plugin = new PluginProc(netDir);
    for (const [i, c] of recordedCalls().entries()) {
      assert.deepEqual((await plugin.call(`w${i}`, 'db_write', c)).result, { result: 'continue' });
    }
    await plugin.close();
    assert.equal(await restoreDump(url), readFileSync(join(REF, 'expected.dump.sql'), 'utf8'));
    assert.ok(proxy.requests.length >= 3);
    for (const r of proxy.requests) assert.deepEqual(r, { atyp: 3, host: onion, port });
    proxy.close();
  });
});

describe('socket: compaction through the protocol (backup-compact)', () => {
  it('a server that compacts and takes one connection at a time (as backup-cli server does): COMPACT goes on the writer\'s connection after the second one got no answer, the RPC returns its statistics, and the entry count it reports afterwards is the one the client checks against', { timeout: 60_000 }, async () => {
    // a minimal server of the reference's shape: one connection at a time, ACK to CHANGE, COMPACT_RES
    // (JSON) to COMPACT, after which it holds fewer entries, as a compacted file does
    const { server: srv, port, seen } = await referenceShapedServer({ compactTo: 2, oneConnectionAtATime: true });
    try {
      const netDir = area.dir();
      writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: `socket:127.0.0.1:${port}`, remote_timeout: 5 }));
      const plugin = new PluginProc(netDir);
      const calls = recordedCalls().slice(0, 6);
      for (const [i, c] of calls.slice(0, 4).entries()) assert.deepEqual((await plugin.call(`w${i}`, 'db_write', c)).result, { result: 'continue' });
      const r = await plugin.call('c', 'backup-compact', {});
      assert.deepEqual(r.result, { before: { version_count: 4 }, after: { version_count: 2 } }, JSON.stringify(r));
      for (const [i, c] of calls.slice(4).entries()) assert.deepEqual((await plugin.call(`x${i}`, 'db_write', c)).result, { result: 'continue' });
      await plugin.close();
      // COMPACT was followed by a fresh REQ_METADATA: the count the client checks a lost write against is the compacted one
      const at = seen.indexOf(PKT.COMPACT);
      assert.equal(seen[at + 1], PKT.REQ_METADATA, JSON.stringify(seen));
      assert.equal(seen.filter((t) => t === PKT.COMPACT).length, 1, JSON.stringify(seen));
    } finally {
      srv.close();
    }
  });
});

describe('socket: restore from a server that sends garbage', () => {
  it('a SNAPSHOT that is not a zlib stream ends the restore at once with an error naming it (no hang, no crash)', { timeout: 60_000 }, async () => {
    const srv = createServer((c) => {
      onPackets(c, (p) => {
        if (p.type === PKT.REQ_METADATA) c.write(metadataPacket({ protocol: 1, version: 7, prevVersion: 6, versionCount: 1 }));
        else if (p.type === PKT.RESTORE) {
          // 4 MiB claimed and sent, none of it zlib: more than the inflater buffers before it wants a drain
          const body = Buffer.alloc(4 << 20, 0x5a);
          const head = Buffer.alloc(9);
          head[0] = PKT.SNAPSHOT;
          head.writeUInt32BE(4 + body.length, 1);
          head.writeUInt32BE(7, 5);
          c.write(Buffer.concat([head, body]));
        }
      });
    });
    srv.listen(0, '127.0.0.1');
    await once(srv, 'listening');
    const port = (srv.address() as { port: number }).port;
    try {
      const r = await runCli(['restore', `socket:127.0.0.1:${port}`, join(area.dir(), 'restored.sqlite3')], { timeoutMs: 50_000 });
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /the snapshot of version 7 is not a valid zlib stream/);
      assert.doesNotMatch(r.stderr, /unhandled|at async/i);
    } finally {
      srv.close();
    }
  });
});
