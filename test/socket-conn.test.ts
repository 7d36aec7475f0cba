/**
 * The socket client's reads over real TCP on 127.0.0.1: every read keeps its own deadline although one
 * lazily checked timer serves them all (src/backends/socket/conn.ts), a packet that arrives whole is read
 * in one step, and a CHANGE's zlib stream (sized to its batch) inflates as the reference inflates it.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { after, describe, it } from 'node:test';
import { inflateSync } from 'node:zlib';
import { Conn } from '../src/backends/socket/conn.js';
import { changePacket, inflateChange, PKT, splitStatements } from '../src/backends/socket/protocol.js';

const servers: Server[] = [];
const sockets: Socket[] = [];
after(() => {
  // a failed assertion skips a test's own clean-up: nothing may be left to keep the run alive
  for (const s of sockets) s.destroy();
  for (const s of servers) s.close();
});

/** A connected pair: our Conn on the client end, the raw server end to send from. */
async function pair(): Promise<{ conn: Conn; peer: Socket }> {
  const srv = createServer();
  servers.push(srv);
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address() as { port: number };
  const accepted = once(srv, 'connection');
  const sock = connect(port, '127.0.0.1');
  await once(sock, 'connect');
  const [peer] = (await accepted) as [Socket];
  sockets.push(sock, peer);
  return { conn: new Conn(sock, `127.0.0.1:${port}`), peer };
}

async function timedOut(p: Promise<unknown>): Promise<number> {
  const t0 = Date.now();
  await assert.rejects(p, (e: Error) => e.name === 'TimeoutError');
  return Date.now() - t0;
}

describe('Conn: a deadline on every read, one timer for all of them', () => {
  it('a short deadline after a long one fires on time (the timer armed for the long one is brought forward)', async () => {
    const { conn, peer } = await pair();
    const first = conn.readExact(3, 20_000, 'the first read');
    peer.write('abc');
    assert.equal((await first).toString(), 'abc');
    const ms = await timedOut(conn.readExact(3, 300, 'the second read'));
    assert.ok(ms >= 250 && ms < 3000, `timed out after ${ms} ms, expected ~300`);
    conn.close();
    peer.destroy();
  });

  it('a long deadline after a short one is not cut short by the timer the short one armed', async () => {
    const { conn, peer } = await pair();
    const first = conn.readExact(3, 300, 'the first read');
    peer.write('abc');
    await first;
    // the timer armed for ~300 ms fires during this read: it must re-arm, not time the read out
    const second = conn.readExact(3, 1500, 'the second read');
    setTimeout(() => peer.write('def'), 900);
    assert.equal((await second).toString(), 'def');
    const ms = await timedOut(conn.readExact(1, 400, 'the third read'));
    assert.ok(ms >= 350 && ms < 3000, `timed out after ${ms} ms, expected ~400`);
    conn.close();
    peer.destroy();
  });

  it('each wait of a read keeps the read\'s deadline: bytes that trickle in do not extend it', async () => {
    const { conn, peer } = await pair();
    const read = conn.readExact(10, 800, 'a trickle');
    let i = 0;
    const drip = setInterval(() => peer.write(Buffer.from([i++])), 200);
    const ms = await timedOut(read);
    clearInterval(drip);
    assert.ok(ms >= 750 && ms < 3000, `timed out after ${ms} ms, expected ~800`);
    conn.close();
    peer.destroy();
  });

  it('a connection left idle after a read with a long deadline does not keep the process alive', async () => {
    // a child process: its exit is what is under test
    const script = `
      import { createServer, connect } from 'node:net';
      import { once } from 'node:events';
      import { Conn } from ${JSON.stringify(new URL('../src/backends/socket/conn.js', import.meta.url).href)};
      const srv = createServer((s) => s.end('abc'));
      srv.listen(0, '127.0.0.1');
      await once(srv, 'listening');
      const sock = connect(srv.address().port, '127.0.0.1');
      const conn = new Conn(sock, 'x');
      await conn.readExact(3, 60_000, 'a read');
      srv.close();
      sock.destroy();
    `;
    const t0 = Date.now();
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: 'inherit' });
    const [code] = (await once(child, 'exit')) as [number];
    assert.equal(code, 0);
    assert.ok(Date.now() - t0 < 20_000, `the process lived ${Date.now() - t0} ms: the read's timer kept it alive`);
  });

  it('readPacket: a packet in one chunk, one split over several, and one larger than the limit', async () => {
    const { conn, peer } = await pair();
    const pkt = changePacket(7, ['INSERT INTO t VALUES (1)']);
    peer.write(pkt);
    const a = await conn.readPacket(1000, 1000, 1 << 20);
    assert.equal(a!.type, PKT.CHANGE);
    assert.deepEqual(a!.payload, pkt.subarray(5));
    const b = conn.readPacket(1000, 1000, 1 << 20);
    for (let i = 0; i < pkt.length; i++) {
      peer.write(pkt.subarray(i, i + 1));
      await new Promise((r) => setTimeout(r, 2));
    }
    assert.deepEqual((await b)!.payload, pkt.subarray(5));
    peer.write(pkt);
    await assert.rejects(conn.readPacket(1000, 1000, 8), /larger than the limit of 8/);
    conn.close();
    peer.destroy();
  });
});

describe('CHANGE packets: a zlib stream sized to the batch', () => {
  it('inflates with a 32 KiB window (what the reference server and restore use) at every window size, and compresses', () => {
    // around the sizes where the window (2^9..2^15) and the block size change
    for (const n of [0, 1, 200, 510, 511, 512, 513, 1023, 1024, 1025, 2047, 2048, 5000, 16_383, 16_384, 40_000, 70_000, 300_000]) {
      const stmt = `INSERT INTO t VALUES ('${'ab01'.repeat(Math.ceil(n / 4)).slice(0, n)}')`;
      const pkt = changePacket(9, [stmt, 'UPDATE vars SET intval=9']);
      const raw = inflateSync(pkt.subarray(9));
      assert.deepEqual(splitStatements(raw), [stmt, 'UPDATE vars SET intval=9'], `${n} bytes`);
      assert.deepEqual(splitStatements(inflateChange(pkt.subarray(5), 1 << 20).raw), [stmt, 'UPDATE vars SET intval=9'], `${n} bytes`);
      if (n >= 1000) assert.ok(pkt.length < n / 4, `${n} repetitive bytes compressed to ${pkt.length}`);
    }
  });
});
