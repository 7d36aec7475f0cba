/**
 * Issue 10, the format's share of "the bad day": no command may be silently wrong about a damaged or
 * incomplete v2 backup. Real files, the built CLI as its own process.
 */
import assert from 'node:assert/strict';
import { appendFileSync, copyFileSync, existsSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { after, test } from 'node:test';
import { crc32 } from 'node:zlib';
import { listHeaders } from '../src/backends/backend.js';
import { createV2, encodeSealRecord, V2Reader, V2Writer } from '../src/backends/file/v2.js';
import { encodeSegmentHeader, readSegmentHeader, SegmentedWriter } from '../src/backends/file/segments.js';
import { runCli, scratchArea, show } from './helpers/cli.js';
import { dataVersion } from './helpers/sqlite.js';

const area = scratchArea('clnvault-badday-format-');
after(() => area.cleanup());

/** A v2 backup of versions 1..n: a table, then one row per version. */
function backup(path: string, n: number): void {
  createV2(path);
  const w = V2Writer.open(path);
  w.appendChange(1, ['CREATE TABLE vars (name TEXT, intval INTEGER)', "INSERT INTO vars VALUES ('data_version', 1)"]);
  for (let v = 2; v <= n; v++) {
    w.appendChange(v, [`INSERT INTO vars VALUES ('n${v}', ${v})`, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${v - 1}`]);
  }
  w.close();
}

test('a backup cut short: restore says how many bytes it left out, where, and the version it stopped at (text and --json)', async () => {
  const dir = area.dir();
  const bkp = join(dir, 'b.bkp');
  backup(bkp, 6);
  const r = V2Reader.open(bkp);
  const last = listHeaders(r).at(-1)!;
  r.close();
  const size = statSync(bkp).size;
  truncateSync(bkp, size - 20); // `truncate -s -20`: the newest record (version 6) loses its end
  const cut = size - 20 - last.offset;

  const text = await runCli(['restore', `file://${bkp}`, join(dir, 'a.sqlite3')]);
  assert.equal(text.code, 0, show(text));
  assert.equal(dataVersion(join(dir, 'a.sqlite3')), 5);
  assert.match(text.stdout, new RegExp(`left out ${cut} byte\\(s\\) at offset ${last.offset}, the end of the backup .*restored up to data_version 5`), show(text));

  const json = await runCli(['restore', '--json', `file://${bkp}`, join(dir, 'j.sqlite3')]);
  assert.equal(json.code, 0, show(json));
  const out = JSON.parse(json.stdout) as { head: number; cut: Array<{ kind: string; offset: number; bytes: number }> };
  assert.equal(out.head, 5);
  assert.deepEqual(out.cut.map((c) => [c.kind, c.offset, c.bytes]), [['torn-tail', last.offset, cut]]);

  // nothing cut: nothing said, and an empty list
  const whole = join(dir, 'whole.bkp');
  backup(whole, 3);
  const clean = await runCli(['restore', '--json', `file://${whole}`, join(dir, 'w.sqlite3')]);
  assert.equal(clean.code, 0, show(clean));
  assert.deepEqual((JSON.parse(clean.stdout) as { cut: unknown[] }).cut, []);
  const cleanText = await runCli(['restore', `file://${whole}`, join(dir, 'w2.sqlite3')]);
  assert.doesNotMatch(cleanText.stdout, /left out/);
});

test('one flipped byte anywhere in the 64-byte file header: inspect and verify say damaged (exit 1); restore refuses, and restores every record with --stop-at-damage, with a warning', async () => {
  const dir = area.dir();
  const good = join(dir, 'good.bkp');
  backup(good, 5);
  const bytes = readFileSync(good);
  // magic, version, header length, flags, backup id, creation time, segment fields, reserved, checksum
  for (const at of [0, 9, 20, 41, 62]) {
    const bkp = join(dir, `h${at}.bkp`);
    const b = Buffer.from(bytes);
    b[at] ^= 0x04;
    writeFileSync(bkp, b);
    const url = `file://${bkp}`;

    const inspect = await runCli(['inspect', url]);
    assert.equal(inspect.code, 1, `byte ${at}: ${show(inspect)}`);
    assert.match(inspect.stdout, /file header is damaged/, `byte ${at}: ${show(inspect)}`);

    const verify = await runCli(['verify', url]);
    assert.equal(verify.code, 1, `byte ${at}: ${show(verify)}`);
    assert.match(verify.stdout, /FAIL: .*damaged/, `byte ${at}: ${show(verify)}`);

    const refused = await runCli(['restore', url, join(dir, `r${at}.sqlite3`)]);
    assert.equal(refused.code, 1, `byte ${at}: ${show(refused)}`);
    assert.match(refused.stderr, /file header is damaged.*--stop-at-damage/, `byte ${at}: ${show(refused)}`);

    const rescued = await runCli(['restore', '--stop-at-damage', url, join(dir, `s${at}.sqlite3`)]);
    assert.equal(rescued.code, 0, `byte ${at}: ${show(rescued)}`);
    assert.equal(dataVersion(join(dir, `s${at}.sqlite3`)), 5, `byte ${at}`);
    assert.match(rescued.stdout, /WARNING: the backup is damaged at offset 0 \(the 64-byte file header is damaged/, `byte ${at}: ${show(rescued)}`);
    assert.doesNotMatch(rescued.stdout, /stopped before damage/, `byte ${at}: every record was restored`);
    rmSync(bkp);
  }
});

/** A segmented v2 backup (4 KiB segments) of versions 1..n in `dir`/b.bkp; returns its files in order. */
function segmented(dir: string, n: number): string[] {
  const path = join(dir, 'b.bkp');
  createV2(path);
  const w = SegmentedWriter.open(path, { segmentBytes: 4096 });
  w.appendChange(1, ['CREATE TABLE vars (name TEXT, intval INTEGER)', "INSERT INTO vars VALUES ('data_version', 1)"]);
  for (let v = 2; v <= n; v++) {
    w.appendChange(v, [`INSERT INTO vars VALUES ('n${v}', '${'x'.repeat(300)}')`, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${v - 1}`]);
  }
  const files = w.segmentFiles().map((s) => s.path);
  w.close();
  return files;
}

/** Copies the backup files `names` (base names) from `from` into a fresh directory. */
function copyOf(from: string, names: string[]): string {
  const to = area.dir();
  for (const n of names) copyFileSync(join(from, n), join(to, n));
  return to;
}

/** The highest version whose records are all in the first `k` files. */
function versionIn(files: string[], k: number): number {
  let v = 0;
  for (const f of files.slice(0, k)) {
    const r = V2Reader.open(f, (rec) => (v = Math.max(v, rec.version)));
    r.close();
  }
  return v;
}

test('a segmented backup with files missing (first, middle, last, all but the first) is damaged: inspect, verify and restore exit 1 naming the missing file; --stop-at-damage restores what precedes the gap', async () => {
  const src = area.dir();
  const files = segmented(src, 40);
  const names = files.map((f) => basename(f));
  assert.ok(names.length >= 4, `${names.length} segments`);
  const cases: Array<{ what: string; keep: string[]; missing: string; before: number | null }> = [
    { what: 'only the first file copied', keep: names.slice(0, 1), missing: names[1]!, before: versionIn(files, 1) },
    { what: 'the last segment deleted', keep: names.slice(0, -1), missing: names.at(-1)!, before: versionIn(files, names.length - 1) },
    { what: 'a middle segment deleted', keep: names.filter((_, i) => i !== 2), missing: names[2]!, before: versionIn(files, 2) },
    { what: 'the first file deleted', keep: names.slice(1), missing: names[0]!, before: null },
  ];
  for (const c of cases) {
    const dir = copyOf(src, c.keep);
    const url = `file://${join(dir, 'b.bkp')}`;
    const missing = join(dir, c.missing);
    const inspect = await runCli(['inspect', url]);
    assert.equal(inspect.code, 1, `${c.what}: ${show(inspect)}`);
    assert.ok((inspect.stdout + inspect.stderr).includes(missing), `${c.what}: names ${missing}: ${show(inspect)}`);
    const verify = await runCli(['verify', url]);
    assert.equal(verify.code, 1, `${c.what}: ${show(verify)}`);
    assert.ok(verify.stdout.includes(missing), `${c.what}: ${show(verify)}`);
    const restore = await runCli(['restore', url, join(dir, 'r.sqlite3')]);
    assert.equal(restore.code, 1, `${c.what}: ${show(restore)}`);
    assert.ok(restore.stderr.includes(missing), `${c.what}: ${show(restore)}`);
    assert.ok(!existsSync(join(dir, 'r.sqlite3')));
    if (c.before !== null) {
      const salvage = await runCli(['restore', '--stop-at-damage', url, join(dir, 's.sqlite3')]);
      assert.equal(salvage.code, 0, `${c.what}: ${show(salvage)}`);
      assert.equal(dataVersion(join(dir, 's.sqlite3')), c.before, c.what);
      assert.match(salvage.stdout, /WARNING: stopped before damage/, c.what);
    }
  }
  // the whole set: undamaged
  const all = copyOf(src, names);
  const ok = await runCli(['inspect', `file://${join(all, 'b.bkp')}`]);
  assert.equal(ok.code, 0, show(ok));
});

test('a crash while rolling over to the next segment reads and reopens cleanly, before and after the seal; writer and reader agree', async () => {
  const src = area.dir();
  const files = segmented(src, 20);
  const names = files.map((f) => basename(f));
  const head = versionIn(files, files.length);
  // (a) the next segment was created (header only), the seal not yet written; (b) both, nothing appended yet
  for (const sealed of [false, true]) {
    const dir = copyOf(src, names);
    const last = join(dir, names.at(-1)!);
    const next = join(dir, `b.bkp.seg-00000000-${String(names.length + 1).padStart(6, '0')}`);
    const h = readSegmentHeader(last);
    writeFileSync(next, encodeSegmentHeader({ ...h, index: names.length + 1 }));
    if (sealed) appendFileSync(last, encodeSealRecord({ next: names.length + 1, setId: h.setId, backupId: h.backupId }));
    const url = `file://${join(dir, 'b.bkp')}`;
    const inspect = await runCli(['inspect', url]);
    assert.equal(inspect.code, 0, `sealed=${sealed}: ${show(inspect)}`);
    const restore = await runCli(['restore', url, join(dir, 'r.sqlite3')]);
    assert.equal(restore.code, 0, `sealed=${sealed}: ${show(restore)}`);
    assert.equal(dataVersion(join(dir, 'r.sqlite3')), head);
    // the writer goes on from there, and what it leaves reads whole
    const w = SegmentedWriter.open(join(dir, 'b.bkp'), { segmentBytes: 4096 });
    assert.equal(w.head(), head);
    for (let v = head + 1; v <= head + 15; v++) w.appendChange(v, [`INSERT INTO vars VALUES ('m${v}', '${'y'.repeat(300)}')`, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${v - 1}`]);
    w.close();
    const again = await runCli(['restore', url, join(dir, 'r2.sqlite3')]);
    assert.equal(again.code, 0, `sealed=${sealed}: ${show(again)}`);
    assert.equal(dataVersion(join(dir, 'r2.sqlite3')), head + 15);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('files of the earlier format version 2 (no seals) still read, restore and are written on, segmented or not', async () => {
  const src = area.dir();
  const files = segmented(src, 30);
  const head = versionIn(files, files.length);
  // what an earlier clnvault wrote: version 2 in every header, no seals
  for (const f of files) {
    const b = readFileSync(f);
    const sealed = b.length >= 64 + 64 && b.readUInt8(b.length - 64 + 4) === 4;
    const out = Buffer.from(sealed ? b.subarray(0, b.length - 64) : b);
    out.writeUInt16BE(2, 8);
    out.writeUInt32BE(crc32(out.subarray(0, 60)), 60);
    // and unseeded record header CRCs, as before format 4 (docs/format-v2.md, "Preallocation")
    for (let o = 64; o < out.length; o += 40 + Number(out.readBigUInt64BE(o + 16))) out.writeUInt32BE(crc32(out.subarray(o, o + 28)), o + 28);
    writeFileSync(f, out);
  }
  const url = `file://${join(src, 'b.bkp')}`;
  const inspect = await runCli(['inspect', url]);
  assert.equal(inspect.code, 0, show(inspect));
  const restore = await runCli(['restore', url, join(src, 'r.sqlite3')]);
  assert.equal(restore.code, 0, show(restore));
  assert.equal(dataVersion(join(src, 'r.sqlite3')), head);
  // the writer goes on in the same format: new segments say version 2 and nothing is sealed
  const w = SegmentedWriter.open(join(src, 'b.bkp'), { segmentBytes: 4096 });
  for (let v = head + 1; v <= head + 15; v++) w.appendChange(v, [`INSERT INTO vars VALUES ('m${v}', '${'y'.repeat(300)}')`, `UPDATE vars SET intval = intval + 1 WHERE name = 'data_version' AND intval = ${v - 1}`]);
  const after = w.segmentFiles().map((s) => s.path);
  w.close();
  assert.ok(after.length > files.length);
  for (const f of after) assert.equal(readSegmentHeader(f).version, 2, f);
  const again = await runCli(['restore', url, join(src, 'r2.sqlite3')]);
  assert.equal(again.code, 0, show(again));
  assert.equal(dataVersion(join(src, 'r2.sqlite3')), head + 15);
});
