import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listHeaders, type BackupReader } from '../src/backends/backend.js';
import { V1Reader } from '../src/backends/file/v1.js';
import { createV2, encodeChangeRecord, V2Reader } from '../src/backends/file/v2.js';
import { writeFully } from '../src/backends/file/fsutil.js';
import type { EntryHeader } from '../src/engine/entries.js';
import { planBackup, Planner, planRestore, walkPlan, type RestorePlan } from '../src/engine/plan.js';
import { FIXTURES } from './helpers/fixtures.js';
import { serialDiff, u32 } from '../src/engine/versions.js';
import { seedOf } from './helpers/v2-bytes.js';

/**
 * The planner keeps its stack as arithmetic segments instead of one object per entry. This checks it
 * against the plain stack algorithm it replaced (kept here as the reference) on random histories:
 * increasing runs, PRAGMA repeats, rewinds of every depth, crash orphans, snapshots, versions that jump,
 * and data_version wrapping past 2^32.
 */
function reference(headers: readonly EntryHeader[], stopAt?: number): { start: number; dropped: Uint8Array; head: number; applied: number } {
  const n = headers.length;
  const dropped = new Uint8Array(n);
  const stack: number[] = [];
  for (let i = 0; i < n; i++) {
    const e = headers[i]!;
    while (stack.length > 0) {
      const top = headers[stack[stack.length - 1]!]!;
      const d = serialDiff(top.version, e.version);
      if (d < 0) break;
      if (d === 0 && e.pragmaOnly && e.kind === 'change') break;
      dropped[stack.pop()!] = 1;
    }
    stack.push(i);
  }
  let end = n;
  if (stopAt !== undefined) {
    end = 0;
    for (let i = 0; i < n; i++) {
      if (!dropped[i] && serialDiff(headers[i]!.version, stopAt) <= 0) end = i + 1;
      if (!dropped[i] && serialDiff(headers[i]!.version, stopAt) > 0) break;
    }
    for (let i = end; i < n; i++) dropped[i] = 1;
  }
  let start = 0;
  for (let i = end - 1; i >= 0; i--) {
    if (!dropped[i] && headers[i]!.kind === 'snapshot') {
      start = i;
      break;
    }
  }
  let head = 0;
  let applied = 0;
  for (let i = start; i < end; i++) {
    if (dropped[i]) continue;
    applied++;
    head = headers[i]!.version;
  }
  return { start, dropped, head, applied };
}

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x1_0000_0000;
  };
}

function history(seed: number): EntryHeader[] {
  const r = rng(seed);
  const out: EntryHeader[] = [];
  let v = r() < 0.2 ? 0xffff_fff0 : Math.floor(r() * 50);
  const n = 1 + Math.floor(r() * 200);
  for (let i = 0; i < n; i++) {
    const x = r();
    let kind: EntryHeader['kind'] = 'change';
    let pragmaOnly = false;
    if (x < 0.6) v = u32(v + 1);
    else if (x < 0.7) pragmaOnly = true; // lightningd's PRAGMA batch, same version
    else if (x < 0.78) v = u32(v - Math.floor(r() * 3)); // crash orphan or reference rewind: same or lower
    else if (x < 0.82) v = u32(v - Math.floor(r() * 40)); // a deep rewind
    else if (x < 0.88) {
      kind = 'snapshot';
      v = u32(v + (r() < 0.5 ? 0 : 1));
    } else if (x < 0.93) v = u32(v + 2 + Math.floor(r() * 5)); // a gap
    else if (x < 0.96) pragmaOnly = r() < 0.5; // a PRAGMA batch that is not a repeat, or a change of the same version
    else v = u32(v + 1);
    out.push({ kind, version: v, offset: 64 + i * 10, pragmaOnly: kind === 'change' && pragmaOnly });
  }
  return out;
}

test('planner: same plan as the per-entry stack on 3,000 random histories, full and point-in-time', () => {
  for (let seed = 1; seed <= 3000; seed++) {
    const hs = history(seed);
    const want = reference(hs);
    const got = planRestore(hs);
    assert.deepEqual(got, want, `seed ${seed}`);
    const p = new Planner();
    for (const h of hs) p.push(h);
    const plan = p.plan();
    let stale = 0;
    for (const d of want.dropped) stale += d;
    assert.equal(plan.stale, stale, `seed ${seed} stale`);
    const firstKept = hs.findIndex((_, i) => !want.dropped[i]);
    assert.equal(plan.oldest, firstKept < 0 ? null : hs[firstKept]!.version, `seed ${seed} oldest`);
    assert.equal(plan.startOffset, hs[want.start]?.kind === 'snapshot' && !want.dropped[want.start] ? hs[want.start]!.offset : null, `seed ${seed} startOffset`);
    // point in time: at a few versions the history holds
    const r = rng(seed * 7);
    for (let k = 0; k < 3 && hs.length > 0; k++) {
      const at = hs[Math.floor(r() * hs.length)]!.version;
      assert.deepEqual(planRestore(hs, at), reference(hs, at), `seed ${seed} stopAt ${at}`);
    }
  }
});

test('planner: a long increasing history is one segment, whatever its length', () => {
  const p = new Planner();
  const n = 2_000_000;
  for (let i = 0; i < n; i++) p.push({ kind: 'change', version: i + 1, offset: i, pragmaOnly: false });
  const plan = p.plan();
  assert.equal(plan.head, n);
  assert.equal(plan.applied, n);
  assert.equal(plan.stale, 0);
  assert.equal((p as unknown as { segs: { n: number } }).segs.n, 1);
  const at = p.plan(1234);
  assert.equal(at.end, 1234);
  assert.equal(at.head, 1234);
});

// ---------------------------------------------------------------------------------------------------
// Readers plan during their open scan (saving a walk): that plan must be the walk's.

function samePlan(reader: BackupReader, what: string, beforeDamage = false): void {
  const opened = planBackup(reader, { beforeDamage });
  const walked = walkPlan(reader, { beforeDamage });
  const hs = listHeaders(reader, { beforeDamage });
  const strip = (p: RestorePlan): Omit<RestorePlan, 'cursor'> => {
    const { cursor: _c, ...rest } = p;
    return rest;
  };
  assert.deepEqual(strip(opened.plan()), strip(walked.plan()), what);
  assert.equal(opened.entries, hs.length, `${what}: entries`);
  const ref = reference(hs);
  assert.equal(opened.plan().head, ref.head, `${what}: head`);
  for (const h of hs.slice(0, 30)) {
    assert.deepEqual(strip(opened.plan(h.version)), strip(walked.plan(h.version)), `${what} at ${h.version}`);
  }
}

test('planner: the plan readers make while opening equals the plan of a walk (v1 reference files, v2 with rewinds and damage)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'clnvault-plan-'));
  try {
    let files = 0;
    for (const set of readdirSync(join(FIXTURES, 'reference-backups'))) {
      const d = join(FIXTURES, 'reference-backups', set);
      if (!statSync(d).isDirectory()) continue;
      // backup-after-crash.dbak: orphans after the acknowledged head, which the plan must not count
      for (const f of readdirSync(d).filter((n) => n.endsWith('.dbak'))) {
        const r = V1Reader.open(join(d, f));
        files++;
        try {
          samePlan(r, `${set}/${f}`);
        } finally {
          r.close();
        }
      }
    }
    assert.ok(files >= 6, `only ${files} reference files found`);
    // v2 records written as they are (a writer never leaves stale entries; the reference's files do)
    const versions = [1, 2, 3, 3, 4, 2, 3, 4, 5, 5, 6, 7, 4, 5, 6, 7, 8];
    const path = join(dir, 'rewinds.v2');
    createV2(path);
    const seed = seedOf(path);
    const recs = versions.map((v, i) => encodeChangeRecord(v, i === 9 ? ['PRAGMA foreign_keys = ON;'] : [`INSERT INTO t VALUES (${i})`], undefined, seed));
    const fd = openSync(path, 'r+');
    writeFully(fd, Buffer.concat(recs), statSync(path).size);
    closeSync(fd);
    const r = V2Reader.open(path);
    try {
      samePlan(r, 'v2 rewinds');
      assert.equal(planBackup(r).plan().stale, reference(listHeaders(r)).dropped.reduce((a, b) => a + b, 0));
    } finally {
      r.close();
    }
    // damage in the middle: both plan the entries before it (salvage), and both refuse without asking
    const bytes = readFileSync(path);
    const at = 64 + recs.slice(0, 8).reduce((n, b) => n + b.length, 0) + 35;
    bytes[at] = bytes[at]! ^ 0xff;
    writeFileSync(join(dir, 'damaged.v2'), bytes);
    const d = V2Reader.open(join(dir, 'damaged.v2'));
    try {
      assert.throws(() => planBackup(d), /is damaged/);
      assert.throws(() => walkPlan(d), /is damaged/);
      samePlan(d, 'v2 damaged', true);
      assert.equal(planBackup(d, { beforeDamage: true }).entries, 8);
    } finally {
      d.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('u32 is n mod 2^32 for every integer a double holds (it runs as ToUint32 there); serialDiff wraps', () => {
  const MOD = 2n ** 32n;
  const ref = (n: number): number => Number(((BigInt(n) % MOD) + MOD) % MOD);
  const edges = [0, 1, -1, 2 ** 31 - 1, 2 ** 31, -(2 ** 31), 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 5, -(2 ** 32) - 7, 2 ** 52 + 3, 2 ** 53 - 1, -(2 ** 53 - 1), 2 ** 53, 2 ** 60, -(2 ** 60)];
  let seed = 12345;
  const r = (): number => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const values = [...edges];
  for (let i = 0; i < 20000; i++) values.push(Math.floor((r() - 0.5) * 2 ** (1 + Math.floor(r() * 60))));
  for (const v of values) assert.equal(u32(v), ref(v), `u32(${v})`);
  // not an integer: the arithmetic as before (NaN stays NaN; it never becomes a valid version)
  assert.ok(Number.isNaN(u32(NaN)));
  assert.equal(u32(1.5), 1.5);
  assert.equal(u32(-0.5), 2 ** 32 - 0.5);
  assert.equal(serialDiff(0, 2 ** 32 - 1), 1);
  assert.equal(serialDiff(2 ** 32 - 1, 0), -1);
  assert.equal(serialDiff(2 ** 31, 0), -(2 ** 31));
});
