/**
 * Fault injection for the compaction swap, from outside the product: loaded into the real plugin with
 * NODE_OPTIONS=--import=<this file's URL> (faults.ts's faultEnv), it wraps node:fs and makes exactly one call fail
 * with EIO, in the compaction worker thread unless the spec names the main thread. Nothing of this is in src/: production code has no seam.
 *
 * The spec is read from the file named by CLNVAULT_FAULT_FILE each time counting starts, so a test can
 * re-arm it between compactions without restarting the plugin:
 *   {"from": "rename", "at": N}      the Nth counted call after the rename of <backup>.compacting fails
 *   {"from": "rename", "call": "fsyncSync", "at": N}   the Nth fsyncSync after the rename fails
 *   {"from": "segment", "thread": "main", "call": "writeSync", "at": 1}
 *                                    the writer's first write into a segment file it has just created fails
 *   {"from": "compacting", "at": N}  the Nth counted call from the creation of <backup>.compacting on fails
 *                                    (the creation itself is call 1): every step of building and swapping
 *   {"at": 0}                         nothing fails
 * When it fires it writes `<file>.fired` (the call, its argument, and whether the rename had happened), which tells a test that counts up N
 * when it has gone past the last call.
 */
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { isMainThread } from 'node:worker_threads';

interface Spec {
  from?: 'rename' | 'compacting' | 'segment';
  /** the thread whose calls fail: the compaction worker (default) or the plugin's main thread (the writer) */
  thread?: 'worker' | 'main';
  /** count only the calls of this function (default: every counted call) */
  call?: string;
  at: number;
  /** changes at every arming: a spec armed by an earlier compaction that never reached its call is stale */
  nonce?: string;
}

const FILE = process.env.CLNVAULT_FAULT_FILE;
/** the calls counted: every one that touches names, descriptors or durability (not the bulk reads and writes) */
const COUNTED = ['openSync', 'closeSync', 'fsyncSync', 'fdatasyncSync', 'rmSync', 'unlinkSync', 'ftruncateSync', 'linkSync', 'renameSync', 'fstatSync', 'writeSync'] as const;
const SEGMENT_FILE = /\.seg-[0-9a-f]{8}-\d+$/;
const THREAD = isMainThread ? 'main' : 'worker';

if (FILE !== undefined) {
  const real = new Map<string, (...a: unknown[]) => unknown>();
  for (const name of COUNTED) real.set(name, (fs as unknown as Record<string, (...a: unknown[]) => unknown>)[name]!.bind(fs));
  let armed: Spec | null = null;
  let count = 0;
  /** whether this thread's current compaction has renamed its new file over the backup */
  let renamed = false;
  const readSpec = (): Spec | null => {
    try {
      const s = JSON.parse(fs.readFileSync(FILE, 'utf8')) as Spec;
      return s.at > 0 ? s : null;
    } catch {
      return null;
    }
  };
  const start = (from: Spec['from']): void => {
    armed = null;
    const s = readSpec();
    armed = s !== null && (s.from ?? 'rename') === from && (s.thread ?? 'worker') === THREAD ? s : null;
    count = 0;
  };
  const wrap = (name: (typeof COUNTED)[number]) => {
    const f = real.get(name)!;
    return (...args: unknown[]): unknown => {
      if (name === 'openSync' && typeof args[0] === 'string' && args[1] === 'wx') {
        if (args[0].endsWith('.compacting')) {
          renamed = false;
          start('compacting');
        }
        else if (SEGMENT_FILE.test(args[0])) start('segment');
      }
      if (armed !== null && (armed.call === undefined || armed.call === name) && ++count === armed.at) {
        const current = readSpec();
        const stale = current === null || current.nonce !== armed.nonce;
        armed = null;
        if (stale) return f(...args);
        fs.writeFileSync(`${FILE}.fired`, JSON.stringify({ call: name, arg: typeof args[0] === 'string' ? args[0] : null, afterRename: renamed }));
        const e = Object.assign(new Error(`EIO: i/o error (injected), ${name}`), { code: 'EIO', errno: -5, syscall: name });
        // Linux frees the descriptor even when close reports an error
        if (name === 'closeSync') f(...args);
        throw e;
      }
      const r = f(...args);
      if (name === 'renameSync' && typeof args[0] === 'string' && args[0].endsWith('.compacting')) {
        renamed = true;
        start('rename');
      }
      return r;
    };
  };
  for (const name of COUNTED) (fs as unknown as Record<string, unknown>)[name] = wrap(name);
  syncBuiltinESMExports();
}
