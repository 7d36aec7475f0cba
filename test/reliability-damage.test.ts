/**
 * Torn writes and bit rot. A crash (power cut) can leave any prefix of the last append; a disk can flip any
 * bit. For v2 every such case must be detected, the torn tail cut back to the last complete record, and
 * nothing may restore to a wrong database. For v1 (the reference format, no checksums) the suite measures
 * and pins what it can and cannot detect (docs/reliability.md, docs/format-v1.md).
 */
import { listHeaders } from '../src/backends/backend.js';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { V1Reader, V1Writer } from '../src/backends/file/v1.js';
import { V2Reader, V2Writer } from '../src/backends/file/v2.js';
import { BackupError } from '../src/engine/entries.js';
import { restoreBackup, RestoreError } from '../src/restore/restore.js';
import { SimDb } from '../src/sim/db.js';
import { Prng } from '../src/sim/workload.js';
import { contentOf, makeHistory, readAll, statesOf, writeBackup, type Batch } from './helpers/rel-history.js';
import { mountTmpfs, type Tmpfs } from './helpers/rel-tmpfs.js';

const CLI = fileURLToPath(new URL('../src/cli/main.js', import.meta.url));

let fs: Tmpfs | null = null;
let dir = '';
let history: Batch[] = [];
let states: string[] = [];
let seq = 0;

before(() => {
  // restores fsync; on a tmpfs that costs nothing, so every case can be restored, not just a sample
  const m = mountTmpfs('256m');
  if ('dir' in m) {
    fs = m;
    dir = m.dir;
  } else {
    dir = mkdtempSync(join(tmpdir(), 'clnvault-damage-'));
  }
  history = makeHistory(40, 5);
  states = statesOf(history, dir);
});
after(() => {
  if (fs) fs.unmount();
  else rmSync(dir, { recursive: true, force: true });
});

function scratchFile(bytes: Buffer): string {
  const p = join(dir, `case-${seq++}.bkp`);
  writeFileSync(p, bytes);
  return p;
}

type Outcome = { restored: string } | { refused: string };

function restoreOutcome(path: string, format: 'v1' | 'v2', opts: { stopAtDamage?: boolean } = {}): Outcome {
  let reader;
  try {
    reader = format === 'v2' ? V2Reader.open(path) : V1Reader.open(path);
  } catch (e) {
    if (!(e instanceof BackupError)) throw e;
    return { refused: e.message };
  }
  const out = join(dir, `restored-${seq++}.sqlite3`);
  try {
    restoreBackup(reader, out, opts);
    return { restored: contentOf(out) };
  } catch (e) {
    if (!(e instanceof RestoreError)) throw e;
    return { refused: e.message };
  } finally {
    reader.close();
    rmSync(out, { force: true });
  }
}

function cleanup(p: string): void {
  rmSync(p, { force: true });
  rmSync(`${p}.writer`, { force: true });
  rmSync(`${p}.writer-journal`, { force: true });
}

/** index of the entry whose bytes contain `off` */
function entryAt(offsets: number[], off: number): number {
  let i = 0;
  while (offsets[i + 1]! <= off) i++;
  return i;
}

describe('torn writes: a cut at every byte offset of the last records', () => {
  test('v2: every cut is detected, cut back to the last complete record, reported, and restores to exactly that state', () => {
    const b = writeBackup(dir, 'torn.v2', 'v2', history);
    const full = readAll(b.path);
    const n = history.length;
    const from = b.offsets[n - 3]!;
    let cases = 0;
    for (let cut = from; cut < full.length; cut++) {
      const k = entryAt(b.offsets, cut); // complete records before the cut
      const atBoundary = b.offsets[k] === cut;
      const p = scratchFile(full.subarray(0, cut));
      const r = V2Reader.open(p);
      try {
        const probs = r.problems();
        if (atBoundary) assert.deepEqual(probs, [], `cut ${cut}`);
        else {
          assert.equal(probs.length, 1, `cut ${cut}: ${JSON.stringify(probs)}`);
          assert.equal(probs[0]!.kind, 'torn-tail');
          assert.equal(probs[0]!.offset, b.offsets[k], `cut ${cut}`);
        }
        assert.equal(listHeaders(r).length, k, `cut ${cut}`);
      } finally {
        r.close();
      }
      const w = V2Writer.open(p);
      try {
        const rep = w.repaired();
        assert.equal(rep.length, atBoundary ? 0 : 1, `cut ${cut}`);
        if (!atBoundary) assert.match(rep[0]!.message, new RegExp(`cut ${cut - b.offsets[k]!} bytes at offset ${b.offsets[k]}`));
        assert.equal(w.head(), k === 0 ? 0 : history[k - 1]!.version);
      } finally {
        w.close();
      }
      assert.equal(statSync(p).size, b.offsets[k], `cut ${cut}: the writer must cut back to the last complete record`);
      assert.ok(readAll(p).equals(full.subarray(0, b.offsets[k]!)), `cut ${cut}: the kept bytes are untouched`);
      // the kept bytes are proven identical above, so restoring a sample (every boundary) shows the rest
      if (atBoundary || cut % 5 === 0) {
        const o = restoreOutcome(p, 'v2');
        assert.ok('restored' in o && o.restored === states[k], `cut ${cut}: restore must give the state after ${k} batches`);
      }
      cleanup(p);
      cases++;
    }
    assert.equal(cases, full.length - from);
  });

  test('v2: every byte of the last records flipped: detected at the damaged record; the last one is cut, any other refused', () => {
    const b = writeBackup(dir, 'flip.v2', 'v2', history);
    const full = readAll(b.path);
    const n = history.length;
    const rng = new Prng(9);
    for (let off = b.offsets[n - 3]!; off < full.length; off++) {
      const bad = Buffer.from(full);
      bad[off]! ^= rng.int(1, 255);
      const i = entryAt(b.offsets, off);
      const p = scratchFile(bad);
      const r = V2Reader.open(p);
      const probs = r.problems();
      r.close();
      assert.ok(probs.length >= 1, `flip at ${off} went unnoticed`);
      assert.equal(probs[0]!.offset, b.offsets[i], `flip at ${off}: reported at ${probs[0]!.offset}, the record starts at ${b.offsets[i]}`);
      if (off % 3 !== 0 && i !== n - 1) {
        cleanup(p);
        continue;
      }
      const o = restoreOutcome(p, 'v2');
      if (i === n - 1) {
        // indistinguishable from a torn append: cut; the node, one version ahead, is re-baselined at its next start
        assert.equal(probs[0]!.kind, 'torn-tail');
        assert.ok('restored' in o && o.restored === states[n - 1], `flip at ${off}`);
      } else {
        assert.equal(probs[0]!.kind, 'corrupt');
        assert.ok('refused' in o && o.refused.includes(`offset ${b.offsets[i]}`), `flip at ${off}: ${JSON.stringify(o).slice(0, 300)}`);
        const s = restoreOutcome(p, 'v2', { stopAtDamage: true });
        assert.ok('restored' in s && s.restored === states[i], `flip at ${off}: stopAtDamage must restore the ${i} batches before the damage`);
      }
      cleanup(p);
    }
  });

  test('v1: an append cut at every byte (header not yet rewritten) is cut back; a cut under the new header is refused or a PRAGMA-only loss', () => {
    const n = history.length;
    const prev = writeBackup(dir, 'torn-prev.v1', 'v1', history.slice(0, n - 1));
    const b = writeBackup(dir, 'torn.v1', 'v1', history);
    const full = readAll(b.path);
    const prevBytes = readAll(prev.path);
    const entry = full.subarray(b.offsets[n - 1]!);
    // the writer's order: entry, fdatasync, header, fdatasync. A power cut before the header sync leaves the old header.
    for (let cut = 1; cut < entry.length; cut++) {
      const p = scratchFile(Buffer.concat([prevBytes, entry.subarray(0, cut)]));
      const r = V1Reader.open(p);
      assert.equal(listHeaders(r).length, n - 1, `cut ${cut}`);
      assert.equal(r.problems().length, 1);
      assert.equal(r.problems()[0]!.offset, b.offsets[n - 1]);
      r.close();
      const w = V1Writer.open(p);
      assert.equal(w.repaired().length, 1);
      w.close();
      assert.ok(readAll(p).equals(prevBytes), `cut ${cut}: repaired back to the previous file`);
      const o = restoreOutcome(p, 'v1');
      assert.ok('restored' in o && o.restored === states[n - 1], `cut ${cut}`);
      cleanup(p);
    }
    // Not a crash the writer can produce (the header is synced after the entry), but a disk can lose the end of a file.
    let refused = 0;
    let pragmaLoss = 0;
    for (let cut = b.offsets[n - 3]!; cut < full.length; cut++) {
      const p = scratchFile(full.subarray(0, cut));
      const o = restoreOutcome(p, 'v1');
      if ('refused' in o) refused++;
      else {
        const k = entryAt(b.offsets, cut);
        // accepted only when every lost entry is a PRAGMA batch carrying the head's version (same content)
        assert.equal(o.restored, states[n], `cut ${cut}: v1 accepted a cut file and restored a different state`);
        assert.ok(history.slice(k).every((h) => h.statements.every((s) => s.startsWith('PRAGMA'))), `cut ${cut}`);
        pragmaLoss++;
      }
      cleanup(p);
    }
    assert.ok(refused > 0);
    console.log(`# v1 cut under the new header: ${refused} refused, ${pragmaLoss} accepted with only a PRAGMA batch missing`);
  });

  test('v1: flips in the last 2 records: measured, and a flipped payload byte is NOT detected (v1 has no checksums)', () => {
    const b = writeBackup(dir, 'flip.v1', 'v1', history);
    const full = readAll(b.path);
    const n = history.length;
    const rng = new Prng(10);
    const tally = { refused: 0, sameDb: 0, wrongDb: 0, torn: 0 };
    const undetectedPayload: number[] = [];
    for (let off = b.offsets[n - 2]!; off < full.length; off++) {
      const bad = Buffer.from(full);
      bad[off]! ^= rng.int(1, 255);
      const p = scratchFile(bad);
      const o = restoreOutcome(p, 'v1');
      const i = entryAt(b.offsets, off);
      if ('refused' in o) tally.refused++;
      else if (o.restored === states[n]) tally.sameDb++;
      else if (o.restored === states[i]) tally.torn++;
      else {
        tally.wrongDb++;
        if (off >= b.offsets[i]! + 9) undetectedPayload.push(off);
      }
      cleanup(p);
    }
    console.log(`# v1 single-byte flips in the last 2 entries: ${JSON.stringify(tally)}`);
    assert.ok(tally.refused > 0, 'some flips (length, type, version bytes) make v1 refuse');
    assert.ok(undetectedPayload.length > 0, 'docs/format-v1.md says payload flips go unnoticed; if this changed, update the docs');
  });
});

describe('bit rot in a v2 backup', () => {
  test('random bit flips anywhere (file header, changes, a snapshot) are reported with the damaged record\'s offset (reader, inspect, verify); restore refuses, or stops before the damage when asked', () => {
    const n = history.length;
    const snapDb = join(dir, 'snap.sqlite3');
    const db = new SimDb(snapDb);
    db.open();
    for (const h of history.slice(0, 20)) db.apply(h.statements);
    db.close();
    const b = writeBackup(dir, 'rot.v2', 'v2', history, { after: 20, dbPath: snapDb, version: history[19]!.version });
    rmSync(snapDb);
    const full = readAll(b.path);
    // batches applied when entry i is the first damaged one (the snapshot sits at index 20)
    const stateBefore = (i: number) => states[i <= 20 ? i : i - 1]!;
    const last = b.offsets.length - 2;
    const rng = new Prng(11);
    const flips = 400;
    let headerCases = 0;
    let cliChecked = 0;
    for (let t = 0; t < flips; t++) {
      const off = rng.int(0, full.length - 1);
      const bit = 1 << rng.int(0, 7);
      const bad = Buffer.from(full);
      bad[off]! ^= bit;
      const p = scratchFile(bad);
      if (off < 64) {
        // the header holds nothing a restore needs (every record checks itself): reported as damage at
        // offset 0, refused by a plain restore, and every record restored when asked (issue 10 item 5)
        const r = V2Reader.open(p);
        const probs = r.problems();
        assert.throws(
          () => listHeaders(r),
          (e: unknown) => e instanceof BackupError && e.offset === 0 && /file header is damaged/.test(e.message),
          `flip in the file header at ${off}`,
        );
        r.close();
        assert.equal(probs[0]?.kind, 'corrupt', `flip in the file header at ${off}`);
        assert.equal(probs[0]?.offset, 0, `flip in the file header at ${off}`);
        const o = restoreOutcome(p, 'v2');
        assert.ok('refused' in o && o.refused.includes('file header is damaged'), `flip in the file header at ${off}`);
        const s = restoreOutcome(p, 'v2', { stopAtDamage: true });
        assert.ok('restored' in s && s.restored === states[n], `flip in the file header at ${off}: every record restored`);
        headerCases++;
        cleanup(p);
        continue;
      }
      const i = entryAt(b.offsets, off);
      const r = V2Reader.open(p);
      const probs = r.problems();
      r.close();
      assert.ok(probs.length >= 1, `bit flip at ${off} went unnoticed`);
      assert.equal(probs[0]!.offset, b.offsets[i], `bit flip at ${off} (entry ${i})`);
      const o = restoreOutcome(p, 'v2');
      if (i === last) {
        assert.ok('restored' in o && o.restored === stateBefore(i), `flip at ${off}`);
      } else {
        assert.ok('refused' in o && o.refused.includes(`offset ${b.offsets[i]}`), `flip at ${off}`);
        const s = restoreOutcome(p, 'v2', { stopAtDamage: true });
        assert.ok('restored' in s && s.restored === stateBefore(i), `flip at ${off}: stop-at-damage restores what precedes entry ${i}`);
        if (cliChecked < 4) {
          // the operator's view: inspect and verify fail and name the offset
          const cmd = cliChecked % 2 === 0 ? 'verify' : 'inspect';
          let code = 0;
          let text = '';
          try {
            text = execFileSync(process.execPath, [CLI, cmd, `file://${p}`], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
          } catch (e) {
            const x = e as { status: number; stdout: string; stderr: string };
            code = x.status;
            text = `${x.stdout}${x.stderr}`;
          }
          assert.equal(code, 1, `${cmd}: ${text}`);
          assert.ok(text.includes(`offset ${b.offsets[i]}`), `${cmd}: ${text}`);
          cliChecked++;
        }
      }
      cleanup(p);
    }
    assert.ok(headerCases < flips && cliChecked === 4);
    assert.ok(full.length > 64 * 20);
    assert.equal(b.offsets.length, n + 2);
  });
});
