import { listHeaders } from '../src/backends/backend.js';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import { createV2, V2Reader } from '../src/backends/file/v2.js';
import { PLUGIN } from './helpers/plugin-proc.js';

/**
 * lightningd hands the plugin a blocking pipe, which the plugin reads with read(2) on its main thread.
 * A stdin that is non-blocking (O_NONBLOCK on a shared open file description) makes that read fail with
 * EAGAIN, and the plugin must then go on through its event-loop reader: this drives that path.
 */

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('plugin stdin', () => {
  it('serves a non-blocking stdin (EAGAIN between and inside messages) without losing or mangling a write', { timeout: 30_000 }, async () => {
    const dir = mkdtempSync(join(tmpdir(), 'clnvault-stdin-'));
    dirs.push(dir);
    const bkp = join(dir, 'backup.bkp');
    createV2(bkp);
    writeFileSync(join(dir, 'backup.lock'), JSON.stringify({ backend_url: `file://${bkp}` }));
    const fifo = join(dir, 'stdin.fifo');
    execFileSync('mkfifo', [fifo]);
    const rfd = openSync(fifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const wfd = openSync(fifo, constants.O_WRONLY);
    const child = spawn(PLUGIN, [], { cwd: dir, env: { ...process.env, LIGHTNINGD_PLUGIN: '1' }, stdio: [rfd, 'pipe', 'pipe'] });
    // spawn() clears O_NONBLOCK on the child's stdio, and the flag lives on the open file description the
    // two processes share: a libuv pipe handle on our copy (never read from) sets it again for both.
    const nonblocking = new Socket({ fd: rfd, readable: false, writable: false });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const replyTo = async (id: string): Promise<{ result?: unknown; error?: unknown }> => {
      const deadline = Date.now() + 10_000;
      for (;;) {
        for (const raw of out.split('\n\n')) {
          if (!raw.trim()) continue;
          const m = JSON.parse(raw) as { id?: string; method?: string; result?: unknown; error?: unknown };
          if (m.id === id && m.method === undefined) return m;
        }
        if (Date.now() > deadline) throw new Error(`no reply to ${id}; stdout: ${out}; stderr: ${stderr}`);
        await sleep(10);
      }
    };

    writeSync(wfd, `${JSON.stringify({ jsonrpc: '2.0', id: 'cln:getmanifest#1', method: 'getmanifest', params: {} })}\n\n`);
    assert.ok((await replyTo('cln:getmanifest#1')).result);
    const flags = /flags:\s*([0-7]+)/.exec(readFileSync(`/proc/${child.pid}/fdinfo/0`, 'utf8'))![1]!;
    assert.ok((parseInt(flags, 8) & constants.O_NONBLOCK) !== 0, `the plugin's stdin is non-blocking (flags ${flags})`);
    const batches: string[][] = [];
    for (let dv = 1; dv <= 3; dv++) {
      // a non-ASCII statement too: the fallback must hand over the same bytes as the blocking reader
      const writes = [`INSERT INTO t VALUES (${dv}, 'größe ✓')`, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${dv - 1}`];
      batches.push(writes);
      const msg = Buffer.from(`${JSON.stringify({ jsonrpc: '2.0', id: `cln:db_write#${dv}`, method: 'db_write', params: { data_version: dv, writes } })}\n\n`);
      // half a message, a pause (the plugin's read finds the pipe empty), then the rest
      const cut = msg.length >> 1;
      writeSync(wfd, msg.subarray(0, cut));
      await sleep(50);
      writeSync(wfd, msg.subarray(cut));
      assert.deepEqual((await replyTo(`cln:db_write#${dv}`)).result, { result: 'continue' });
    }
    closeSync(wfd);
    nonblocking.destroy();
    assert.equal(await exit, 0, `plugin exits cleanly at end of input; stderr: ${stderr}`);
    assert.equal(stderr, '');

    const reader = V2Reader.open(bkp);
    try {
      const h = listHeaders(reader);
      assert.deepEqual(h.map((x) => x.version), [1, 2, 3]);
      h.forEach((x, i) => {
        const e = reader.read(x);
        assert.equal(e.kind, 'change');
        if (e.kind === 'change') assert.deepEqual(e.statements, batches[i]);
      });
    } finally {
      reader.close();
    }
  });
});
