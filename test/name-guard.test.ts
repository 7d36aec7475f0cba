/**
 * The check after every append that the backup's path still names the open file (src/backends/file/fsutil.ts,
 * NameGuard): its common path reads /proc/self/fd and stats the directory instead of the file (a stat of the
 * file makes the next append dirty the inode: see NameGuard). Each way the name can stop pointing at the
 * open file must still refuse the append, and a path that still names it must not.
 */
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { createV2, V2Writer } from '../src/backends/file/v2.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function fresh(): { root: string; dir: string; path: string } {
  const root = mkdtempSync(join(tmpdir(), 'clnvault-nameguard-'));
  dirs.push(root);
  const dir = join(root, 'vault');
  mkdirSync(dir);
  const path = join(dir, 'node.bkp');
  createV2(path);
  return { root, dir, path };
}

/** Opens `path` and makes a few appends (the guard is made at the first and takes its fast path after). */
function writing(path: string): V2Writer {
  const w = V2Writer.open(path);
  for (let v = 1; v <= 3; v++) w.appendChange(v, [`UPDATE vars SET intval=${v} WHERE name='x';`]);
  return w;
}

const next = (w: V2Writer): number => w.appendChange(w.head() + 1, ["UPDATE vars SET intval=0 WHERE name='x';"]);

test('the file removed: the next append is refused', () => {
  const { path } = fresh();
  const w = writing(path);
  unlinkSync(path);
  assert.throws(() => next(w), /no longer reachable/);
  w.close();
});

test('the file renamed within its directory: refused', () => {
  const { dir, path } = fresh();
  const w = writing(path);
  renameSync(path, join(dir, 'moved.bkp'));
  assert.throws(() => next(w), /no longer reachable/);
  w.close();
});

test('another file renamed over the path: refused', () => {
  const { dir, path } = fresh();
  const w = writing(path);
  writeFileSync(join(dir, 'other'), 'x');
  renameSync(join(dir, 'other'), path);
  assert.throws(() => next(w), /different file/);
  w.close();
});

test('the path reaches its directory through a symlink that is switched to a copy: refused (the open file itself did not move)', () => {
  const { root, dir, path } = fresh();
  const link = join(root, 'current');
  symlinkSync(dir, link);
  const w = writing(join(link, 'node.bkp'));
  const copy = join(root, 'copy');
  mkdirSync(copy);
  copyFileSync(path, join(copy, 'node.bkp'));
  unlinkSync(link);
  symlinkSync(copy, link);
  assert.throws(() => next(w), /different file/);
  w.close();
});

test('the directory renamed and linked back under its old name: the path still names the file, appends go on', () => {
  const { root, dir, path } = fresh();
  const w = writing(path);
  renameSync(dir, join(root, 'vault2'));
  symlinkSync(join(root, 'vault2'), dir);
  for (let i = 0; i < 3; i++) next(w);
  assert.equal(w.head(), 6);
  w.close();
});
