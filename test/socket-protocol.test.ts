/**
 * The reference socket protocol over real TCP on 127.0.0.1: `clnvault server` against the recorded
 * reference client streams, clnvault's client (the built plugin) against the recorded client stream,
 * the server's version rules, and connections that misbehave.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { after, describe, it } from 'node:test';
import { parseSocketUrl } from '../src/backends/socket/url.js';
import { changePacket, packet, parseMetadata, parseMetadataWithId, PKT, reqMetadataPacket, u32Packet } from '../src/backends/socket/protocol.js';
import { FIXTURES } from './helpers/fixtures.js';
import { CLI, runCli, scratchArea } from './helpers/cli.js';
import { killAllPlugins, PluginProc } from './helpers/plugin-proc.js';
import { decoded, killAllServers, parsePackets, RawClient, Relay, startServer } from './helpers/socket-rig.js';
import { dump } from './helpers/sqlite.js';


const REF = join(FIXTURES, 'reference-socket');
const area = scratchArea('clnvault-socket-');
after(async () => {
  killAllPlugins();
  await killAllServers();
  area.cleanup();
});

async function freshServer(extra: string[] = [], format = 'v1'): Promise<{ port: number; url: string; proc: Awaited<ReturnType<typeof startServer>>['proc'] }> {
  const dir = area.dir();
  const url = `file://${join(dir, 'srv.bkp')}`;
  const init = await runCli(['init', '--format', format, url]);
  assert.equal(init.code, 0, init.stderr);
  const s = await startServer(url, 0, extra);
  return { ...s, url };
}

/** The db_write calls of the recorded reference session, decoded from what the reference client sent. */
function recordedCalls(): Array<{ data_version: number; writes: string[] }> {
  return parsePackets(readFileSync(join(REF, 'c2s.bin')))
    .packets.filter((p) => p.type === PKT.CHANGE)
    .map((p) => {
      const d = decoded(p);
      return { data_version: d.version!, writes: d.body.toString('utf8').split('\u0000') };
    });
}

describe('socket: URLs (the reference syntax)', () => {
  it('parses host, IPv6 in brackets, names and the socks5 proxy; refuses what cannot connect', () => {
    assert.deepEqual(parseSocketUrl('socket:127.0.0.1:8700').target, { host: '127.0.0.1', port: 8700, kind: 'ipv4' });
    assert.deepEqual(parseSocketUrl('socket:[::1]:8700').target, { host: '::1', port: 8700, kind: 'ipv6' });
    const onion = parseSocketUrl('socket:abcdefghijklmnop.onion:8700?proxy=socks5:127.0.0.1:9050');
    assert.deepEqual(onion.target, { host: 'abcdefghijklmnop.onion', port: 8700, kind: 'name' });
    assert.deepEqual(onion.proxy, { host: '127.0.0.1', port: 9050, kind: 'ipv4' });
    assert.equal(parseSocketUrl('socket:h:1?proxy=').proxy, null);
    assert.throws(() => parseSocketUrl('socket://h:1'), /no '\/\/'/);
    assert.throws(() => parseSocketUrl('socket:h'), /port number missing/);
    assert.throws(() => parseSocketUrl('socket:[::1'), /unterminated/);
    assert.throws(() => parseSocketUrl('socket:::1:1234'), /brackets/);
    assert.throws(() => parseSocketUrl('socket:h:99999'), /invalid port/);
    assert.throws(() => parseSocketUrl('socket:h:1?proxy=http:p:1'), /unknown proxy type/);
    assert.throws(() => parseSocketUrl('socket:h:1?foo=bar'), /unknown query string parameter/);
    assert.throws(() => parseSocketUrl('socket:h:1?proxy=socks5:a:1&proxy=socks5:b:2'), /one value/);
  });
});

describe('clnvault server answers the recorded reference client', () => {
  it('session: the recorded client stream gets the recorded server stream, byte for byte', async () => {
    const s = await freshServer();
    const c = await RawClient.connect(s.port);
    const expected = readFileSync(join(REF, 's2c.bin'));
    // packet by packet, as the reference client does (it waits for each ACK)
    const sent = parsePackets(readFileSync(join(REF, 'c2s.bin'))).packets;
    const got: Buffer[] = [];
    for (const p of sent) {
      c.send(Buffer.concat([Buffer.from([p.type]), Buffer.from(u32(p.length)), p.payload]));
      const r = await c.packet();
      got.push(Buffer.concat([Buffer.from([r.type]), Buffer.from(u32(r.length)), r.payload]));
    }
    c.close();
    assert.deepEqual(Buffer.concat(got), expected);
  });

  it('restore: the recorded RESTORE gets the recorded entries (same packets once inflated), then DONE', async () => {
    const s = await freshServer();
    const w = await RawClient.connect(s.port);
    w.send(readFileSync(join(REF, 'c2s.bin')));
    for (let i = 0; i < 18; i++) await w.packet();
    w.close();
    const c = await RawClient.connect(s.port);
    c.send(readFileSync(join(REF, 'restore-c2s.bin')));
    const expected = parsePackets(readFileSync(join(REF, 'restore-s2c.bin'))).packets;
    for (const e of expected) {
      const g = await c.packet();
      const [gd, ed] = [decoded(g), decoded(e)];
      assert.equal(gd.type, ed.type);
      assert.equal(gd.version, ed.version);
      assert.deepEqual(gd.body, ed.body);
      // framing: the length states exactly the payload that follows (deflate bytes may differ between zlib builds)
      assert.equal(g.length, g.payload.length);
    }
    c.close();
  });
});

describe("clnvault's client sends what the reference client sent", () => {
  it('the plugin, given the recorded session, sends the recorded client stream packet for packet; restore gives the recorded DB', async () => {
    const s = await freshServer();
    const relay = new Relay(s.port);
    const rport = await relay.listen();
    const netDir = area.dir();
    const init = await runCli(['init', '--lightning-dir', netDir, `socket:127.0.0.1:${rport}`]);
    assert.equal(init.code, 0, init.stderr);
    const plugin = new PluginProc(netDir);
    const calls = recordedCalls();
    for (const [i, c] of calls.entries()) {
      const r = await plugin.call(`w${i}`, 'db_write', c);
      assert.deepEqual(r.result, { result: 'continue' }, JSON.stringify(r));
    }
    await plugin.close();
    relay.close();
    // the first session was init's REQ_METADATA; the plugin's is the second
    const ours = parsePackets(Buffer.concat(relay.sessions[1]!.c2s));
    const recorded = parsePackets(readFileSync(join(REF, 'c2s.bin'))).packets;
    assert.equal(ours.rest, 0);
    assert.equal(ours.packets.length, recorded.length);
    for (const [i, p] of ours.packets.entries()) {
      const [a, b] = [decoded(p), decoded(recorded[i]!)];
      assert.equal(a.type, b.type, `packet ${i}`);
      assert.equal(a.version, b.version, `packet ${i}`);
      assert.deepEqual(a.body, b.body, `packet ${i}`);
      assert.equal(p.length, p.payload.length);
    }
    const dest = join(area.dir(), 'restored.sqlite3');
    const r = await runCli(['restore', `socket:127.0.0.1:${s.port}`, dest]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(dump(dest), readFileSync(join(REF, 'expected.dump.sql'), 'utf8'));
  });

  it('each packet leaves in one write (header and payload together), so Nagle cannot split it', async () => {
    const s = await freshServer();
    const relay = new Relay(s.port);
    const rport = await relay.listen();
    const netDir = area.dir();
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: `socket:127.0.0.1:${rport}` }));
    const plugin = new PluginProc(netDir);
    for (const [i, c] of recordedCalls().slice(0, 5).entries()) await plugin.call(`w${i}`, 'db_write', c);
    await plugin.close();
    relay.close();
    // every chunk the relay read starts a packet and holds it whole (loopback keeps one write one segment)
    for (const chunk of relay.sessions[0]!.c2s) assert.equal(parsePackets(chunk).rest, 0, 'a packet split across reads');
  });
});

/**
 * A host name that resolves only to ::1, through the real resolver (getaddrinfo, /etc/hosts): the plugin
 * and the CLI run in a mount namespace of their own where /etc/hosts is a file of the test's. Needs
 * unshare(1) and the right to mount (root or CAP_SYS_ADMIN); elsewhere the test says why it skips.
 */
const V6_NAME = 'clnvault-v6only.test';
let hostsPath: string | null = null;
function hostsFile(): string {
  if (hostsPath === null) {
    hostsPath = join(area.dir(), 'hosts');
    writeFileSync(hostsPath, `::1 ${V6_NAME}\n`);
  }
  return hostsPath;
}
function withV6Name(hosts: string): string[] {
  return ['unshare', '-m', 'sh', '-c', 'mount --bind "$0" /etc/hosts && exec "$@"', hosts];
}
const V6_NAME_SKIP: string | false = (() => {
  if (!existsSync('/proc/net/if_inet6') || !readFileSync('/proc/net/if_inet6', 'utf8').includes('00000000000000000000000000000001')) {
    return 'no IPv6 loopback (::1) on this machine';
  }
  const [cmd, ...args] = withV6Name(hostsFile());
  const probe = spawnSync(cmd!, [...args, 'getent', 'ahosts', V6_NAME], { encoding: 'utf8' });
  if (probe.error !== undefined || probe.status !== 0 || !/^::1\s/m.test(probe.stdout)) {
    return `cannot give a process a private /etc/hosts (unshare -m, mount --bind: ${probe.error?.message ?? probe.stderr.trim()}); needs root or CAP_SYS_ADMIN`;
  }
  return false;
})();

describe('IPv6', () => {
  it('server on [::1], plugin and restore with socket:[::1]:PORT', async () => {
    const dir = area.dir();
    const fileUrl = `file://${join(dir, 'srv.bkp')}`;
    assert.equal((await runCli(['init', fileUrl])).code, 0);
    const { port, proc } = await startServer(fileUrl, 0, [], undefined, '::1');
    assert.match(proc.out, /on ::1:\d+/);
    assert.doesNotMatch(proc.out, /WARNING/, 'loopback ::1 must not warn');
    const netDir = area.dir();
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: `socket:[::1]:${port}` }));
    const plugin = new PluginProc(netDir);
    for (const [i, c] of recordedCalls().entries()) assert.deepEqual((await plugin.call(`w${i}`, 'db_write', c)).result, { result: 'continue' });
    await plugin.close();
    const dest = join(area.dir(), 'restored.sqlite3');
    const r = await runCli(['restore', `socket:[::1]:${port}`, dest]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(dump(dest), readFileSync(join(REF, 'expected.dump.sql'), 'utf8'));
  });

  it('a host NAME that resolves only to ::1 (no IPv4 address at all): plugin and restore connect over IPv6', { skip: V6_NAME_SKIP }, async () => {
    const dir = area.dir();
    const fileUrl = `file://${join(dir, 'srv.bkp')}`;
    assert.equal((await runCli(['init', fileUrl])).code, 0);
    // the server listens on ::1 only: a client that asked for IPv4 (as the reference did) finds nothing
    const { port, proc } = await startServer(fileUrl, 0, [], undefined, '::1');
    const netDir = area.dir();
    const url = `socket:${V6_NAME}:${port}`;
    writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: url, remote_timeout: 5 }));
    const plugin = new PluginProc(netDir, {}, withV6Name(hostsFile()));
    for (const [i, c] of recordedCalls().entries()) assert.deepEqual((await plugin.call(`w${i}`, 'db_write', c)).result, { result: 'continue' }, plugin.stderr);
    await plugin.close();
    assert.match(proc.out, /connection \d+ from ::1:/);
    const dest = join(area.dir(), 'restored.sqlite3');
    const r = spawnSync(withV6Name(hostsFile())[0]!, [...withV6Name(hostsFile()).slice(1), process.execPath, CLI, 'restore', url, dest], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(dump(dest), readFileSync(join(REF, 'expected.dump.sql'), 'utf8'));
    // and outside that namespace the name does not resolve at all: the test is not passing by accident
    const outside = await runCli(['inspect', url], { timeoutMs: 30_000 });
    assert.notEqual(outside.code, 0);
  });

  it('a server told to listen beyond loopback says loudly that the protocol has no authentication', async () => {
    const dir = area.dir();
    const fileUrl = `file://${join(dir, 'srv.bkp')}`;
    assert.equal((await runCli(['init', fileUrl])).code, 0);
    const { proc } = await startServer(fileUrl, 0, [], undefined, '0.0.0.0');
    await new Promise((r) => setTimeout(r, 200));
    assert.match(proc.out, /WARNING: listening on 0\.0\.0\.0:0, not on loopback\. This protocol has no authentication/);
    await proc.kill();
  });
});

describe('clnvault server enforces the version rules', () => {
  it('refuses gaps and regressions (NACK with its version), rewinds for real once, and stores PRAGMA-only re-sends', async () => {
    const s = await freshServer();
    const c = await RawClient.connect(s.port);
    const ack = async (b: Buffer): Promise<[number, number]> => {
      c.send(b);
      const p = await c.packet();
      return [p.type, p.payload.readUInt32BE(0)];
    };
    assert.deepEqual(await ack(changePacket(1, ['CREATE TABLE t (x)'])), [PKT.ACK, 1]);
    assert.deepEqual(await ack(changePacket(2, ['INSERT INTO t VALUES (2)'])), [PKT.ACK, 2]);
    assert.deepEqual(await ack(changePacket(2, ['PRAGMA foreign_keys = ON'])), [PKT.ACK, 2]);
    assert.deepEqual(await ack(changePacket(3, ['INSERT INTO t VALUES (3)'])), [PKT.ACK, 3]);
    assert.deepEqual(await ack(changePacket(5, ['INSERT INTO t VALUES (5)'])), [PKT.NACK, 3], 'gap');
    assert.deepEqual(await ack(changePacket(3, ['INSERT INTO t VALUES (33)'])), [PKT.NACK, 3], 'regression');
    assert.deepEqual(await ack(changePacket(1, ['INSERT INTO t VALUES (1)'])), [PKT.NACK, 3], 'regression');
    assert.deepEqual(await ack(u32Packet(PKT.REWIND, 1)), [PKT.NACK, 3], 'rewind to a version that is not the previous one');
    assert.deepEqual(await ack(u32Packet(PKT.REWIND, 2)), [PKT.ACK, 2]);
    assert.deepEqual(await ack(u32Packet(PKT.REWIND, 0)), [PKT.NACK, 2], 'a second rewind');
    assert.deepEqual(await ack(changePacket(3, ['INSERT INTO t VALUES (30)'])), [PKT.ACK, 3]);
    c.send(packet(PKT.REQ_METADATA));
    const m = await c.packet();
    assert.equal(m.type, PKT.METADATA);
    assert.deepEqual([m.payload.readUInt32BE(4), m.payload.readUInt32BE(8), Number(m.payload.readBigUInt64BE(12))], [3, 2, 4]);
    c.close();
    // the rewound entry is gone from the file: a restore streams 1, 2, 2(pragma), 3 (the replacement)
    const r = await RawClient.connect(s.port);
    r.send(packet(PKT.RESTORE));
    const got: string[] = [];
    for (;;) {
      const p = await r.packet();
      if (p.type === PKT.DONE) break;
      const d = decoded(p);
      got.push(`${d.version}:${d.body.toString()}`);
    }
    r.close();
    assert.deepEqual(got, ['1:CREATE TABLE t (x)', '2:INSERT INTO t VALUES (2)', '2:PRAGMA foreign_keys = ON', '3:INSERT INTO t VALUES (30)']);
  });
});

describe("the backup id: clnvault's addition to REQ_METADATA (docs/destinations.md)", () => {
  it('a server answers the 20 reference bytes unless asked; asked, a v2 backup adds its 16-byte id, a v1 one has none; a client reads both', async () => {
    const v2 = await freshServer([], 'v2');
    const header = readFileSync(v2.url.slice('file://'.length)).subarray(16, 32);
    const c = await RawClient.connect(v2.port);
    c.send(packet(PKT.REQ_METADATA));
    const plain = await c.packet();
    assert.equal(plain.payload.length, 20, 'a reference client gets the reference answer');
    c.send(reqMetadataPacket(true));
    const asked = await c.packet();
    assert.equal(asked.type, PKT.METADATA);
    assert.equal(asked.payload.length, 36);
    assert.deepEqual(asked.payload.subarray(20), header);
    assert.deepEqual(parseMetadataWithId(asked.payload), { meta: parseMetadata(plain.payload), id: header.toString('hex') });
    // what an older clnvault server answers to the same ask: no id, nothing checked, the client goes on
    assert.deepEqual(parseMetadataWithId(plain.payload), { meta: parseMetadata(plain.payload), id: null });
    c.close();
    const v1 = await freshServer([], 'v1');
    const d = await RawClient.connect(v1.port);
    d.send(reqMetadataPacket(true));
    assert.equal((await d.packet()).payload.length, 20, 'a v1 file has no backup id');
    d.close();
  });
});

describe('clnvault server: misbehaving connections do not disturb others', () => {
  it('garbage, an oversized frame, a zip bomb, a cut mid-packet and a one-byte-a-second client: each dropped or ignored, the writer goes on', async () => {
    const s = await freshServer(['--packet-timeout', '2', '--max-change-bytes', '100000']);
    const writer = await RawClient.connect(s.port);
    let v = 0;
    const write = async (): Promise<void> => {
      v++;
      const t0 = Date.now();
      writer.send(changePacket(v, [v === 1 ? 'CREATE TABLE t (x)' : `INSERT INTO t VALUES (${v})`]));
      const p = await writer.packet();
      assert.deepEqual([p.type, p.payload.readUInt32BE(0)], [PKT.ACK, v]);
      assert.ok(Date.now() - t0 < 1500, 'a write waited on a misbehaving connection');
    };
    await write();

    const garbage = await RawClient.connect(s.port);
    garbage.send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    assert.ok(await garbage.closedWithin(3000), 'garbage was not dropped');
    await write();

    const big = await RawClient.connect(s.port);
    big.send(Buffer.from([PKT.CHANGE, 0xff, 0xff, 0xff, 0xf0]));
    assert.ok(await big.closedWithin(3000), 'a 4 GiB frame header was not dropped');
    await write();

    const bomb = await RawClient.connect(s.port);
    const z = deflateSync(Buffer.alloc(300 << 20));
    const payload = Buffer.concat([Buffer.from(u32(v + 1)), z]);
    bomb.send(Buffer.concat([Buffer.from([PKT.CHANGE]), Buffer.from(u32(payload.length)), payload]));
    assert.ok(await bomb.closedWithin(5000), 'a CHANGE inflating past the limit was not dropped');
    await write();

    const cut = await RawClient.connect(s.port);
    const half = changePacket(v + 1, ['INSERT INTO t VALUES (999)']);
    cut.send(half.subarray(0, half.length - 3));
    await new Promise((r) => setTimeout(r, 100));
    cut.close();
    await write(); // the half packet stored nothing: the next version is still v+1

    const slow = await RawClient.connect(s.port);
    const slowPkt = changePacket(v + 1, ['INSERT INTO t VALUES (7)']);
    let i = 0;
    const drip = setInterval(() => slow.send(slowPkt.subarray(i, ++i)), 1000);
    for (let k = 0; k < 3; k++) await write();
    assert.ok(await slow.closedWithin(8000), 'a one-byte-a-second client was not timed out');
    clearInterval(drip);
    await write();
    writer.close();
  });
});

function u32(n: number): Uint8Array {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

