/**
 * CPU per CHANGE packet on each side of a socket: connection, without the network: what the plugin spends
 * building one (encode + deflate) and the server parsing one (inflate + split), with clnvault's zlib options
 * beside the reference's (deflate at its defaults: level 6, a 32 KiB window). CPU time of this process
 * (process.cpuUsage), interleaved blocks, medians: a figure the machine's load barely moves.
 *
 *   node dist/bench/socket-packet.js [--blocks 7] [--n 20000]
 *
 * Two batches of ~1 KB: the hook bench's (bench/plugin.ts: repetitive hex) and one shaped like lightningd's
 * channel updates (random keys and an onion: what compresses less).
 */
import { randomBytes } from 'node:crypto';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { deflateSync } from 'node:zlib';
import { changePacket, encodeStatements, HEADER_SIZE, inflateChange, splitStatements } from '../src/backends/socket/protocol.js';
import { batch } from './plugin.js';

const { values } = parseArgs({ options: { blocks: { type: 'string', default: '7' }, n: { type: 'string', default: '20000' } } });
const blocks = Number(values.blocks);
const n = Number(values.n);

const hex = (k: number): string => randomBytes(k).toString('hex');
const batches: Record<string, string[]> = {
  'hook bench batch': batch(7, 1024),
  'channel-update batch': [
    `UPDATE channels SET short_channel_id='812x1x0', full_channel_id=x'${hex(32)}', state=2, next_index_local=12, next_index_remote=12, next_htlc_id=3, funding_tx_id=x'${hex(32)}', funding_satoshi=1000000 WHERE id=1;`,
    `INSERT INTO channel_htlcs (channel_id, channel_htlc_id, direction, msatoshi, cltv_expiry, payment_hash, hstate, shared_secret, routing_onion) VALUES (1, 3, 0, 100000, 700, x'${hex(32)}', 1, x'${hex(32)}', x'${hex(200)}');`,
    `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = 41`,
  ],
};

/** The reference client's packet: the same bytes but for deflate at zlib's defaults. */
function referencePacket(version: number, statements: string[]): Buffer {
  const z = deflateSync(encodeStatements(version, statements));
  const b = Buffer.allocUnsafe(HEADER_SIZE + 4 + z.length);
  b[0] = 1;
  b.writeUInt32BE(4 + z.length, 1);
  b.writeUInt32BE(version, HEADER_SIZE);
  z.copy(b, HEADER_SIZE + 4);
  return b;
}

function cpuUs(f: () => unknown): number {
  const c0 = process.cpuUsage();
  for (let i = 0; i < n; i++) f();
  const c = process.cpuUsage(c0);
  return (c.user + c.system) / n;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

console.log(`CHANGE packets, CPU per packet (median of ${blocks} interleaved blocks of ${n}); load average ${loadavg().map((x) => x.toFixed(2)).join(', ')}`);
for (const [name, st] of Object.entries(batches)) {
  const ours = changePacket(7, st);
  const ref = referencePacket(7, st);
  const cases: Record<string, () => unknown> = {
    'build, clnvault': () => changePacket(7, st),
    'build, reference zlib defaults': () => referencePacket(7, st),
    'parse, clnvault packet': () => splitStatements(inflateChange(ours.subarray(HEADER_SIZE), 256 << 20).raw),
    'parse, reference packet': () => splitStatements(inflateChange(ref.subarray(HEADER_SIZE), 256 << 20).raw),
  };
  for (const f of Object.values(cases)) cpuUs(f); // warm-up: V8 tiers the code up
  const us: Record<string, number[]> = {};
  for (let b = 0; b < blocks; b++) for (const [k, f] of Object.entries(cases)) (us[k] ??= []).push(cpuUs(f));
  console.log(`${name} (${encodeStatements(7, st).length} B raw; packet ${ours.length} B, reference ${ref.length} B):`);
  for (const [k, xs] of Object.entries(us)) console.log(`  ${k.padEnd(32)} ${median(xs).toFixed(2).padStart(7)} µs`);
}
console.log(`load average after: ${loadavg().map((x) => x.toFixed(2)).join(', ')}`);
