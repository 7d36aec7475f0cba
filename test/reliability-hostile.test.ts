/**
 * Hostile input for every parser: property-based (fast-check) and fuzzed. The stdin framing, JSON-RPC
 * messages to the real plugin process (wrong types, missing fields, huge numbers, non-UTF-8), backup.lock,
 * URLs, and the v1 and v2 readers. Each must give a result or a clean, typed error: no other exception, no
 * hang, and no allocation sized by a length field the file merely claims.
 */
import { listHeaders } from '../src/backends/backend.js';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { crc32 } from 'node:zlib';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { V1Reader, V1Writer } from '../src/backends/file/v1.js';
import { decodeChangePayload, encodeChangeRecord, recordSeedOf, V2Reader, V2Writer } from '../src/backends/file/v2.js';
import { createBackup } from '../src/backends/open.js';
import { parseBackupUrl, UrlError } from '../src/backends/url.js';
import { LockFileError, readBackupLock } from '../src/engine/backup-lock.js';
import { BackupError } from '../src/engine/entries.js';
import { FrameError, MessageSplitter } from '../src/plugin/framing.js';
import { killAllPlugins, PluginProc } from './helpers/plugin-proc.js';
import { recordsEnd } from './helpers/v2-bytes.js';

const root = mkdtempSync(join(tmpdir(), 'clnvault-hostile-'));
after(() => {
  killAllPlugins();
  rmSync(root, { recursive: true, force: true });
});
let seq = 0;
const fresh = (name: string) => join(root, `${seq++}-${name}`);

/** fast-check runs: a fixed seed in CI so a failure reproduces; CLNVAULT_FC_SEED / _RUNS to explore. */
const FC = { seed: Number(process.env.CLNVAULT_FC_SEED ?? 20261126), numRuns: Number(process.env.CLNVAULT_FC_RUNS ?? 300) };

describe('stdin framing (MessageSplitter)', () => {
  test('any messages, cut into any chunks, come out exactly once each and in order', () => {
    const message = fc.string({ maxLength: 300 }).map((s) => JSON.stringify({ s }));
    fc.assert(
      fc.property(fc.array(message, { maxLength: 20 }), fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 30 }), (msgs, cuts) => {
        const stream = Buffer.from(msgs.map((m) => `${m}\n\n`).join(''), 'utf8');
        const sp = new MessageSplitter(16);
        const got: string[] = [];
        let pos = 0;
        for (let i = 0; pos < stream.length; i++) {
          const n = Math.min(cuts[i % cuts.length]!, stream.length - pos);
          sp.push(stream.subarray(pos, pos + n), (b, s, e) => got.push(b.toString('utf8', s, e)));
          pos += n;
        }
        assert.deepEqual(got, msgs);
        assert.equal(sp.leftover().length, 0);
      }),
      FC,
    );
  });

  test('arbitrary bytes: messages or a FrameError past the size limit, nothing else; memory bounded by the limit', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 600 }), { maxLength: 20 }), (chunks) => {
        const sp = new MessageSplitter(8, 1024);
        let out = 0;
        try {
          for (const c of chunks) sp.push(c, (_b, s, e) => (out += e - s));
        } catch (e) {
          assert.ok(e instanceof FrameError, String(e));
        }
        assert.ok(sp.leftover().length <= 1024 + 600);
      }),
      FC,
    );
  });
});

describe('JSON-RPC messages to the real plugin', () => {
  function pluginDir(): { dir: string; bkp: string } {
    const dir = fresh('net');
    mkdirSync(dir);
    const bkp = join(dir, 'b.bkp');
    createBackup(pathToFileURL(bkp).href, dir, 'v2');
    writeFileSync(join(dir, 'backup.lock'), JSON.stringify({ backend_url: pathToFileURL(bkp).href }));
    return { dir, bkp };
  }

  const hostileValue = fc.oneof(
    fc.constant(null),
    fc.boolean(),
    fc.double(),
    fc.constantFrom(1e308, -1, 2 ** 32, 2 ** 53 + 1, 4294967295.5, -0, Number.MAX_SAFE_INTEGER),
    fc.string({ maxLength: 20 }),
    fc.array(fc.oneof(fc.string({ maxLength: 10 }), fc.integer(), fc.constant(null)), { maxLength: 4 }),
    fc.dictionary(fc.string({ maxLength: 8 }), fc.integer(), { maxKeys: 3 }),
  );
  // db_write params that must never be accepted: a missing or wrong-typed field, an out-of-range data_version
  const badParams = fc.oneof(
    hostileValue,
    fc.record({ data_version: hostileValue, writes: hostileValue }, { requiredKeys: [] }),
    fc.record({ data_version: fc.constantFrom(-1, 2 ** 32, 1.5, 1e308, '3', null), writes: fc.array(fc.string({ maxLength: 30 }), { minLength: 1, maxLength: 3 }) }),
    fc.record({ data_version: fc.nat(5), writes: fc.array(fc.oneof(fc.integer(), fc.constant(null), fc.object()), { minLength: 1, maxLength: 3 }) }),
  );
  const hostileMessage = fc.oneof(
    fc.record({ jsonrpc: fc.constant('2.0'), id: fc.string({ minLength: 1, maxLength: 12 }), method: fc.constant('db_write'), params: badParams }),
    fc.record({ jsonrpc: hostileValue, id: hostileValue, method: hostileValue, params: hostileValue }, { requiredKeys: [] }),
    fc.record({ jsonrpc: fc.constant('2.0'), id: fc.oneof(fc.string({ maxLength: 12 }), fc.integer()), method: fc.string({ maxLength: 12 }), params: hostileValue }),
    hostileValue,
  );

  test('hundreds of malformed requests: each one with an id is answered once, an invalid db_write refused, nothing written, no crash, no hang', { timeout: 120_000 }, async () => {
    const { dir, bkp } = pluginDir();
    const before = recordsEnd(bkp);
    const msgs = fc.sample(hostileMessage, { seed: FC.seed, numRuns: 400 });
    const p = new PluginProc(dir);
    const expected: Array<string | number> = [];
    let chunk = '';
    for (const m of msgs) {
      const text = JSON.stringify(m);
      chunk += `${text}\n\n`;
      const o = m as Record<string, unknown> | null;
      if (o && typeof o === 'object' && !Array.isArray(o) && typeof o.method === 'string' && (typeof o.id === 'string' || typeof o.id === 'number')) {
        // the plugin echoes ids as given; JSON cannot carry -0, and ids are compared after a round trip
        expected.push(JSON.parse(JSON.stringify(o.id)) as string | number);
      }
    }
    // raw bytes that are not UTF-8 and not JSON, and a huge number, in between
    p.sendRaw(Buffer.concat([Buffer.from('{"jsonrpc":"2.0","id":"nu8","method":"nope","params":"'), Buffer.from([0xff, 0xfe, 0xc0]), Buffer.from('"}\n\n')]));
    expected.push('nu8');
    p.sendRaw(`{"jsonrpc":"2.0","id":"big","method":"db_write","params":{"data_version":${'9'.repeat(400)},"writes":["x"]}}\n\n`);
    expected.push('big');
    p.sendRaw(Buffer.from([0x00, 0x01, 0xff, 0x0a, 0x0a, 0x7b, 0x7d, 0x0a, 0x0a]));
    p.sendRaw(chunk);
    const last = await p.call('final', 'clnvault-status', {});
    assert.ok(last.result !== undefined, JSON.stringify(last));
    for (const id of expected) {
      const replies = p.messages.filter((m) => m.method === undefined && m.id === id);
      assert.ok(replies.length >= 1, `no reply to ${JSON.stringify(id)}`);
    }
    for (const m of p.messages) {
      if (m.method !== undefined || m.id === 'final') continue;
      // a db_write from this stream must never have been accepted
      assert.ok(!(m.result && typeof m.result === 'object' && (m.result as { result?: string }).result === 'continue'), `accepted: ${JSON.stringify(m)}`);
    }
    assert.deepEqual(p.garbage, []);
    assert.equal(recordsEnd(bkp), before, 'nothing may be appended from malformed input');
    await p.close();
    const exit = await p.exit;
    assert.equal(exit.signal, null);
    assert.equal(exit.code, 0, p.stderr);
  });

  test('a db_write whose statements are not valid UTF-8 is refused, not stored with replacement characters', { timeout: 60_000 }, async () => {
    const { dir, bkp } = pluginDir();
    const before = recordsEnd(bkp);
    const p = new PluginProc(dir);
    await p.call('m', 'getmanifest', { 'allow-deprecated-apis': false });
    p.sendRaw(
      Buffer.concat([
        Buffer.from(`{"jsonrpc":"2.0","id":"cln:db_write#1","method":"db_write","params":{"data_version":1,"writes":["INSERT INTO t VALUES ('`),
        Buffer.from([0xc3, 0x28, 0xff]),
        Buffer.from(`')"]}}\n\n`),
      ]),
    );
    const r = await p.reply('cln:db_write#1');
    assert.ok(r.error, `accepted a statement that is not UTF-8: ${JSON.stringify(r)}`);
    assert.match(r.error!.message, /UTF-8/);
    assert.equal(recordsEnd(bkp), before);
    await p.close();
  });
});

describe('backup.lock and URLs', () => {
  test('backup.lock with any content: a lock or a LockFileError', () => {
    const dir = fresh('lock');
    mkdirSync(dir);
    const content = fc.oneof(
      fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b)),
      fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v) ?? 'null')),
      fc.record({ backend_url: fc.oneof(fc.string(), fc.integer(), fc.constant(null)), rebaseline: fc.oneof(fc.boolean(), fc.string(), fc.integer()) }, { requiredKeys: [] }).map((o) => Buffer.from(JSON.stringify(o))),
    );
    fc.assert(
      fc.property(content, (bytes) => {
        writeFileSync(join(dir, 'backup.lock'), bytes);
        try {
          const l = readBackupLock(dir);
          assert.equal(typeof l.backend_url, 'string');
          assert.ok(l.backend_url.length > 0);
          assert.ok(l.rebaseline === undefined || typeof l.rebaseline === 'boolean');
        } catch (e) {
          assert.ok(e instanceof LockFileError, String(e));
        }
      }),
      FC,
    );
  });

  test('any URL string: a file path that is absolute, a socket URL, or a UrlError', () => {
    const url = fc.oneof(
      fc.string({ maxLength: 80 }),
      fc.tuple(fc.constantFrom('file:', 'FILE:', 'file://', 'file:///', 'socket:', 'File:'), fc.string({ maxLength: 60 })).map(([a, b]) => a + b),
      fc.webUrl(),
    );
    fc.assert(
      fc.property(url, (u) => {
        try {
          const r = parseBackupUrl(u, '/net/dir');
          if (r.scheme === 'file') {
            assert.ok(isAbsolute(r.path), r.path);
            assert.ok(!/[\0\r\n]/.test(r.path));
          }
        } catch (e) {
          assert.ok(e instanceof UrlError, String(e));
        }
      }),
      FC,
    );
  });
});

describe('backup readers', () => {
  function v2File(): Buffer {
    const p = fresh('seed.v2');
    createBackup(pathToFileURL(p).href, root, 'v2');
    const w = V2Writer.open(p);
    for (let v = 1; v <= 6; v++) w.appendChange(v, [`INSERT INTO t VALUES (${v}, 'é${'x'.repeat(v * 7)}')`, 'PRAGMA foreign_keys = ON;']);
    w.close();
    return readFileSync(p);
  }
  function v1File(): Buffer {
    const p = fresh('seed.v1');
    createBackup(pathToFileURL(p).href, root, 'v1');
    const w = V1Writer.open(p);
    for (let v = 1; v <= 6; v++) w.appendChange(v, [`INSERT INTO t VALUES (${v}, 'é${'x'.repeat(v * 7)}')`]);
    w.close();
    return readFileSync(p);
  }

  /** Opens and reads everything; only BackupError may escape. */
  function readEverything(path: string, format: 'v1' | 'v2'): void {
    let r;
    try {
      r = format === 'v2' ? V2Reader.open(path) : V1Reader.open(path);
    } catch (e) {
      assert.ok(e instanceof BackupError, `${format} open: ${(e as Error).stack}`);
      return;
    }
    try {
      r.problems();
      r.stats();
      let hs;
      try {
        hs = listHeaders(r);
      } catch (e) {
        assert.ok(e instanceof BackupError, `${format} headers: ${(e as Error).stack}`);
        return;
      }
      for (const h of hs) {
        try {
          const e = r.read(h);
          if (e.kind === 'snapshot') {
            const out = fresh('snap');
            e.writeTo(out);
            rmSync(out, { force: true });
          }
        } catch (e) {
          assert.ok(e instanceof BackupError, `${format} read: ${(e as Error).stack}`);
        }
      }
    } finally {
      r.close();
    }
  }

  const mutation = fc.array(
    fc.oneof(
      fc.record({ kind: fc.constant('set' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
      fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
      fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 40 }) }),
      fc.record({ kind: fc.constant('u32' as const), at: fc.nat(), value: fc.constantFrom(0, 1, 0x7fffffff, 0xffffffff, 0x80000000) }),
    ),
    { minLength: 1, maxLength: 6 },
  );
  type Mutation = { kind: string; at: number; byte?: number; bytes?: Uint8Array; value?: number };
  function mutate(base: Buffer, ms: Mutation[]): Buffer {
    let b = Buffer.from(base);
    for (const m of ms) {
      const at = b.length === 0 ? 0 : m.at % b.length;
      if (m.kind === 'set') b[at] = m.byte!;
      else if (m.kind === 'cut') b = b.subarray(0, at);
      else if (m.kind === 'insert') b = Buffer.concat([b.subarray(0, at), m.bytes!, b.subarray(at)]);
      else if (at + 4 <= b.length) b.writeUInt32BE(m.value!, at);
    }
    return b;
  }

  for (const format of ['v2', 'v1'] as const) {
    test(`${format}: mutated files (bytes set, cut, inserted, length fields maxed) read or fail with a BackupError`, () => {
      const base = format === 'v2' ? v2File() : v1File();
      fc.assert(
        fc.property(mutation, (ms) => {
          const p = fresh(`m.${format}`);
          writeFileSync(p, mutate(base, ms));
          readEverything(p, format);
          rmSync(p, { force: true });
        }),
        FC,
      );
    });
  }

  test('lengths a file merely claims never size an allocation (v2 with valid header CRCs, v1 at 4 GiB)', () => {
    const base = v2File();
    const mem0 = process.memoryUsage().arrayBuffers;
    let peak = 0;
    for (const claim of [2n ** 32n, 2n ** 40n, 2n ** 53n, 2n ** 64n - 1n, 10n ** 15n]) {
      // a record header that vouches for a huge payload: magic, type, version, L, a payload CRC, and a CORRECT header CRC
      const h = Buffer.alloc(40);
      h.writeUInt32BE(0x43565231, 0);
      h[4] = 1;
      h.writeUInt32BE(7, 8);
      h.writeBigUInt64BE(claim, 16);
      h.writeUInt32BE(0, 24);
      // format 4: the header CRC is seeded with the file's ids (docs/format-v2.md, "Preallocation")
      h.writeUInt32BE(crc32(h.subarray(0, 28), recordSeedOf(base.subarray(0, 64))), 28);
      for (const where of ['end', 'middle'] as const) {
        const file = where === 'end' ? Buffer.concat([base, h]) : Buffer.concat([base.subarray(0, 64), h, base.subarray(64)]);
        const p = fresh('claim.v2');
        writeFileSync(p, file);
        readEverything(p, 'v2');
        try {
          V2Writer.open(p).close();
        } catch (e) {
          assert.ok(e instanceof BackupError, String(e));
        }
        peak = Math.max(peak, process.memoryUsage().arrayBuffers - mem0);
      }
    }
    // a change payload that claims 2^32-1 statements or a 4 GiB statement
    for (const payload of [Buffer.from([0xff, 0xff, 0xff, 0xff]), Buffer.from([0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x41])]) {
      assert.throws(() => decodeChangePayload(payload), Error);
      assert.ok(encodeChangeRecord(1, ['x']).length > 0);
    }
    const v1 = v1File();
    for (const len of [0xffffffff, 0x7fffffff]) {
      const e = Buffer.alloc(9);
      e.writeUInt32BE(len, 0);
      e.writeUInt32BE(7, 4);
      e[8] = 1;
      const p = fresh('claim.v1');
      const hdr = Buffer.from(v1.subarray(0, 512));
      hdr.writeUInt32BE(7, 4);
      writeFileSync(p, Buffer.concat([hdr, v1.subarray(512), e, Buffer.from('abc')]));
      readEverything(p, 'v1');
      peak = Math.max(peak, process.memoryUsage().arrayBuffers - mem0);
    }
    assert.ok(peak < 64 << 20, `reading files that claim huge lengths held ${peak} bytes`);
  });
});
