/**
 * The crash soak: the lightningd simulator drives the real plugin through a mixed workload while faults are
 * injected at random moments, and after every fault the backup is restored and compared with the DB the
 * simulator committed. Shared by `test/reliability-soak.test.ts` (a short run) and `bench/soak.ts`
 * (`npm run soak -- --trials N`).
 *
 * The invariant checked after every fault: a restore of the backup equals the simulator's DB, or the DB
 * plus exactly the one batch that was sent to the plugin but never committed (lightningd died between
 * the hook and COMMIT). Anything else, in particular a restore that lacks a committed batch, is a
 * divergence. After every restart, and at checkpoints, the restore must equal the DB exactly.
 */
import {
  closeSync,
  fstatSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Database from 'better-sqlite3';
import { createBackup, openReader } from '../../src/backends/open.js';
import { RECORD_HEADER_LEN, RECORD_MAGIC, RECORD_OVERHEAD, V2Reader } from '../../src/backends/file/v2.js';
import type { BackupFormat } from '../../src/engine/entries.js';
import { restoreBackup } from '../../src/restore/restore.js';
import { dataVersionBump, SimDb } from '../../src/sim/db.js';
import { SimNode, type DbWriteResult } from '../../src/sim/lightningd.js';
import { Prng, Workload, type WorkBatch } from '../../src/sim/workload.js';
import { rpc } from './compact-sim.js';
import { armFault, faultEnv, faultFired } from './faults.js';
import { dump } from './sqlite.js';
import { unlockAndAuthenticate } from '../../src/crypto/authenticate.js';
import { keyKindCode } from '../../src/crypto/records.js';
import { writeKeyFile, type BackupKey } from '../../src/crypto/keys.js';

export const FAULTS = [
  'kill-mid-append',
  'kill-on-growth',
  'power-cut',
  'crash-before-commit',
  'crash-and-kill',
  'crash-in-pragma-pair',
  'kill-idle',
  'kill-startup',
  'kill-rebaseline',
  'io-error-swap',
  'compact-repeat',
] as const;
export type Fault = (typeof FAULTS)[number];

export interface SoakOptions {
  trials: number;
  seed: number;
  format: BackupFormat;
  /** full restore-and-compare after every restart when true; otherwise every `checkpointEvery` trials */
  checkAfterEveryRestart?: boolean;
  checkpointEvery?: number;
  /** a fresh node and backup every so many trials, so restores stay short on long runs */
  trialsPerNode?: number;
  /** replay this recorded CLN transcript at the start of each node (falls back to a fresh boot) */
  transcript?: string;
  /** datastore value sizes (bytes), log-uniform */
  datastoreSize?: [number, number];
  pluginPath?: string;
  log?: (line: string) => void;
  /** stop at the first divergence (tests) or collect them all (long runs) */
  stopOnDivergence?: boolean;
  /**
   * Online compaction in the plugin (backup.lock "compaction"), with a threshold low enough that it runs
   * every few trials: kills then also land while the worker builds or swaps in the compacted file.
   */
  compactAtBytes?: number;
  /** an encrypted backup (docs/encryption.md): a key file in backup.lock; every check authenticates the whole chain */
  encrypt?: boolean;
}

export interface Divergence {
  trial: number;
  fault: Fault | 'checkpoint' | 'restart';
  detail: string;
}

export interface SoakReport {
  format: BackupFormat;
  seed: number;
  trials: number;
  byFault: Record<Fault, number>;
  /** restore-and-compare checks done (after faults, after restarts, checkpoints) */
  checks: number;
  /** checks where the backup was exactly one uncommitted batch ahead of the DB */
  aheadByOne: number;
  divergences: Divergence[];
  /** torn or orphan tails the plugin cut when it reopened the backup */
  tailRepairs: number;
  rewinds: number;
  rebaselines: number;
  committed: number;
  nodes: number;
  plugins: number;
  /** hook calls whose plugin was SIGKILLed before it answered */
  killedInHook: number;
  /** kills that landed after the record was written but before the answer: the backup was one ahead */
  aheadAfterKill: number;
  /** power cuts that dropped part of an unacknowledged append */
  powerCuts: number;
  /** online compactions that completed, and SIGKILLs that landed while one was running */
  compactions: number;
  killedCompacting: number;
  /** io-error-swap: EIO injected into a compaction before its rename, after it, or not reached */
  ioErrorsBeforeRename: number;
  ioErrorsAfterRename: number;
  ioErrorsNotReached: number;
  /** compact-repeat: compactions run back to back with no write between */
  repeatedCompactions: number;
}

type Batch = { kind: 'tx' | 'pragma'; writes: string[] };

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const immediate = () => new Promise<void>((r) => setImmediate(r));

export const PLUGIN_PATH = fileURLToPath(new URL('../../src/plugin/main.js', import.meta.url));

export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  const rep: SoakReport = {
    format: opts.format,
    seed: opts.seed,
    trials: 0,
    byFault: Object.fromEntries(FAULTS.map((f) => [f, 0])) as Record<Fault, number>,
    checks: 0,
    aheadByOne: 0,
    divergences: [],
    tailRepairs: 0,
    rewinds: 0,
    rebaselines: 0,
    committed: 0,
    nodes: 0,
    plugins: 0,
    killedInHook: 0,
    aheadAfterKill: 0,
    powerCuts: 0,
    compactions: 0,
    killedCompacting: 0,
    ioErrorsBeforeRename: 0,
    ioErrorsAfterRename: 0,
    ioErrorsNotReached: 0,
    repeatedCompactions: 0,
  };
  const perNode = opts.trialsPerNode ?? 400;
  let trial = 0;
  let epoch = 0;
  while (trial < opts.trials && !(opts.stopOnDivergence && rep.divergences.length > 0)) {
    const n = Math.min(perNode, opts.trials - trial);
    const s = new SoakNode(opts, rep, opts.seed * 1000 + epoch);
    try {
      await s.run(trial, n);
    } finally {
      await s.dispose();
    }
    trial += n;
    epoch++;
  }
  return rep;
}

class SoakNode {
  readonly dir = mkdtempSync(join(tmpdir(), 'clnvault-soak-'));
  readonly netDir = join(this.dir, 'regtest');
  readonly backupPath = join(this.dir, 'backup', 'node.bkp');
  readonly backupUrl = pathToFileURL(this.backupPath).href;
  readonly node: SimNode;
  /** the I/O fault spec the plugin's preload reads (test/helpers/fault-preload.ts) */
  readonly faultSpec = join(this.dir, 'fault.json');
  private readonly rng: Prng;
  private wl!: Workload;
  private wlSeed: number;
  /** the batch sent to the plugin and not (yet) committed by the node */
  private pending: Batch | null = null;
  private checkSeq = 0;
  private trial = 0;
  private key: BackupKey | null = null;

  constructor(
    private readonly opts: SoakOptions,
    private readonly rep: SoakReport,
    seed: number,
  ) {
    mkdirSync(this.netDir, { recursive: true });
    mkdirSync(dirname(this.backupPath));
    const lock: Record<string, unknown> = { backend_url: this.backupUrl };
    if (opts.encrypt) {
      const keyPath = join(this.dir, 'soak.key');
      this.key = writeKeyFile(keyPath);
      createBackup(this.backupUrl, this.dir, opts.format, { kind: keyKindCode(this.key.kind), fingerprint: Buffer.from(this.key.fingerprint, 'hex') });
      lock.encrypt = { key_file: keyPath };
    } else {
      createBackup(this.backupUrl, this.dir, opts.format);
    }
    lock.compaction = opts.compactAtBytes ? { auto: true, min_bytes: opts.compactAtBytes, factor: 1, history: 1 } : { auto: false };
    writeFileSync(join(this.netDir, 'backup.lock'), JSON.stringify(lock));
    this.rng = new Prng(seed);
    this.faultRng = new Prng(seed ^ 0x5eed);
    this.wlSeed = seed;
    this.node = new SimNode({
      netDir: this.netDir,
      pluginPath: opts.pluginPath ?? PLUGIN_PATH,
      // lightningd never times out a hook; a hung plugin must fail the soak instead of hanging it
      hookSafetyTimeoutMs: 60_000,
      exitGraceMs: 10_000,
      onLog: (e) => this.onLog(e.message),
      env: faultEnv(this.faultSpec),
    });
    rep.nodes++;
  }

  /** a compaction started and not yet reported done in this plugin process */
  private compacting = false;

  /**
   * Faults come in shuffled rounds of every kind, from a PRNG of their own: how many random draws the
   * traffic makes depends on timing (where kills land), and the fault mix must not, so that even a short
   * run injects every kind.
   */
  private readonly faultRng: Prng;
  private round: Fault[] = [];

  private nextFault(): Fault {
    if (this.round.length === 0) {
      this.round = [...FAULTS];
      for (let i = this.round.length - 1; i > 0; i--) {
        const j = this.faultRng.int(0, i);
        [this.round[i], this.round[j]] = [this.round[j]!, this.round[i]!];
      }
    }
    return this.round.pop()!;
  }

  private onLog(msg: string): void {
    if (/compaction of .* started/.test(msg)) this.compacting = true;
    else if (/^clnvault: compaction done/.test(msg)) {
      this.compacting = false;
      this.rep.compactions++;
    } else if (/^clnvault: compaction of .* failed|^clnvault: compaction: nothing to compact/.test(msg)) this.compacting = false;
    else if (/repaired the backup on open/.test(msg)) this.rep.tailRepairs++;
    else if (/was never committed by lightningd: removed it/.test(msg)) this.rep.rewinds++;
    else if (/^clnvault: re-baselined/.test(msg)) this.rep.rebaselines++;
  }

  async dispose(): Promise<void> {
    await this.node.stop().catch(() => undefined);
    if (!process.env.CLNVAULT_KEEP_TMP) rmSync(this.dir, { recursive: true, force: true });
  }

  async run(firstTrial: number, trials: number): Promise<void> {
    const t = this.opts.transcript;
    this.rep.plugins++;
    if (t && existsSync(t)) {
      const r = await this.node.replay(t);
      if (r.failure) throw new Error(`replaying ${t} failed at line ${r.failure.line}: ${r.failure.detail}`);
      this.rep.committed += r.committed;
    } else {
      await this.node.boot();
    }
    this.freshWorkload();
    const every = this.opts.checkpointEvery ?? 25;
    for (let i = 0; i < trials; i++) {
      this.trial = firstTrial + i;
      // a stretch of normal traffic between faults
      const items = this.rng.int(0, 4);
      for (let k = 0; k < items; k++) await this.item();
      // Auto-compaction only starts once the backup outgrows the database, which a short run may never see;
      // an occasional backup-compact (lightning-cli's way) makes sure kills also land during compactions.
      if (this.opts.compactAtBytes && !this.compacting && this.node.pluginAlive && this.rng.next() < 0.08) {
        void rpc(this.node, 'backup-compact', {}, 120_000).catch(() => undefined);
        await sleep(this.rng.int(0, 40));
      }
      // Those requests are usually killed before the worker has even started, so halfway through a node's
      // run one compaction is run to the end if none has completed yet: every soak covers at least one.
      if (this.opts.compactAtBytes && i === trials >> 1 && this.rep.compactions === 0 && !this.compacting && this.node.pluginAlive) {
        await rpc(this.node, 'backup-compact', {}, 120_000).catch(() => undefined);
      }
      // half the time let a running compaction finish, so that some complete and some are killed midway
      if (this.compacting && this.rng.next() < 0.5) {
        for (let w = 0; w < 500 && this.compacting && this.node.pluginAlive; w++) await sleep(10);
      }
      const fault = this.nextFault();
      this.rep.byFault[fault]++;
      await this.inject(fault);
      await this.restartAndGoOn(fault);
      this.rep.trials++;
      if (this.opts.checkAfterEveryRestart || (i + 1) % every === 0) this.check('checkpoint');
      if (this.opts.stopOnDivergence && this.rep.divergences.length > 0) return;
      if ((this.rep.trials % 100) === 0) this.opts.log?.(progress(this.rep));
    }
    // the end of a node's life: a clean stop, then the final comparison
    await this.node.stop();
    this.check('checkpoint');
  }

  // ---------------------------------------------------------------------------------------------------
  // traffic

  private freshWorkload(): void {
    this.wl = Workload.fromDb(this.node.dbPath, this.wlSeed++, {
      datastoreSize: this.opts.datastoreSize ?? [100, 1 << 20],
      datastoreKeys: 8,
      mix: { rebuild: 6 },
    });
  }

  /** Sends one workload item; returns false when the node went down. */
  private async item(): Promise<boolean> {
    const it = this.wl.next();
    for (const b of it.batches) {
      const r = await this.send(b);
      if (r.answered !== 'continue') throw new Error(`trial ${this.trial}: plugin refused normal traffic: ${detailOf(r)}`);
    }
    return true;
  }

  /** One hook call with the batch recorded as pending until the node commits it. */
  private async send(b: WorkBatch, how: { crashBeforeCommit?: boolean; killAfter?: () => Promise<void> } = {}): Promise<DbWriteResult> {
    const dv = this.node.dataVersion();
    const batch: Batch =
      b.kind === 'pragma' ? { kind: 'pragma', writes: [b.statement] } : { kind: 'tx', writes: [...b.statements, dataVersionBump(dv)] };
    this.pending = batch;
    let p: Promise<DbWriteResult>;
    if (b.kind === 'pragma') p = this.node.pragma(b.statement);
    else if (how.crashBeforeCommit) p = this.node.crashBeforeCommit(b.statements);
    else p = this.node.transaction(b.statements);
    let killer: Promise<void> | undefined;
    if (how.killAfter) killer = how.killAfter().then(() => this.kill());
    const r = await p;
    await killer;
    if (r.answered === 'continue' && !how.crashBeforeCommit) {
      this.pending = null;
      this.rep.committed++;
    }
    if (r.answered === 'error' && /Plugin terminated/.test(r.detail)) this.rep.killedInHook++;
    return r;
  }

  private bigTx(): WorkBatch {
    const item = this.wl.datastore(this.rng.logUniform(16 << 10, 1 << 20));
    return item.batches[0]!;
  }

  // ---------------------------------------------------------------------------------------------------
  // faults

  private async inject(fault: Fault): Promise<void> {
    const node = this.node;
    switch (fault) {
      case 'kill-mid-append': {
        // a delay drawn over the span of a big append: lands while the plugin reads, writes or syncs
        const delay = this.rng.next() < 0.3 ? 0 : this.rng.int(0, 12);
        await this.send(this.bigTx(), { killAfter: () => (delay === 0 ? immediate() : sleep(delay)) });
        break;
      }
      case 'kill-on-growth': {
        // SIGKILL as soon as the backup grows: between the write and its fdatasync or reply
        const before = this.written();
        await this.send(this.bigTx(), { killAfter: () => this.waitForGrowth(before) });
        break;
      }
      case 'power-cut': {
        // SIGKILL while the append is unacknowledged, then lose part of what had not been fdatasynced: a torn tail
        const before = this.written();
        const v1Header = this.opts.format === 'v1' ? readFileSync(this.backupPath).subarray(0, 512) : null;
        const r = await this.send(this.bigTx(), { killAfter: () => this.waitForGrowth(before) });
        if (this.opts.format === 'v2' && r.answered === 'error') {
          // format 4: the record went into reserved space (the file's size says nothing). A power cut loses the
          // pages of it that were not synced: they read as what the space held before, zeros
          const end = this.recordEndAt(before);
          if (end <= before) break;
          this.rep.powerCuts++;
          const cut = this.rng.int(before, end - 1);
          const fd = openSync(this.backupPath, 'r+');
          try {
            writeSync(fd, Buffer.alloc(end - cut), 0, end - cut, cut);
          } finally {
            closeSync(fd);
          }
          break;
        }
        const after = statSync(this.backupPath).size;
        if (r.answered !== 'error' || after <= before) break;
        this.rep.powerCuts++;
        if (v1Header && !readFileSync(this.backupPath).subarray(0, 512).equals(v1Header)) {
          // v1 rewrites its header only after the entry's fdatasync returned: the entry is durable, and what a
          // power cut can lose is the unsynced header write
          const fd = openSync(this.backupPath, 'r+');
          try {
            writeSync(fd, v1Header, 0, 512, 0);
          } finally {
            closeSync(fd);
          }
        } else {
          truncateSync(this.backupPath, this.rng.int(before, after - 1));
        }
        break;
      }
      case 'crash-before-commit':
        await this.send(this.wl.next().batches.find((b) => b.kind === 'tx')!, { crashBeforeCommit: true });
        break;
      case 'crash-and-kill': {
        const delay = this.rng.int(0, 6);
        await this.send(this.bigTx(), { crashBeforeCommit: true, killAfter: () => sleep(delay) });
        break;
      }
      case 'crash-in-pragma-pair': {
        // CLN's table rebuild: PRAGMA OFF (same data_version), the rebuild, PRAGMA ON. The node dies on one of them.
        const batches = this.wl.rebuild().batches;
        const at = this.rng.int(0, batches.length - 1);
        for (let i = 0; i < batches.length; i++) {
          if (i < at) {
            const r = await this.send(batches[i]!);
            if (r.answered !== 'continue') throw new Error(`trial ${this.trial}: rebuild batch ${i} refused: ${detailOf(r)}`);
            continue;
          }
          if (batches[i]!.kind === 'tx') await this.send(batches[i]!, { crashBeforeCommit: true });
          else await this.send(batches[i]!, { killAfter: () => immediate() });
          break;
        }
        break;
      }
      case 'kill-idle':
        await this.kill();
        break;
      case 'kill-startup': {
        await node.stop();
        this.checkSettled('kill-startup');
        await this.bootWithKill(this.rng.int(0, 120));
        break;
      }
      case 'io-error-swap':
        await this.ioErrorInCompaction();
        break;
      case 'compact-repeat':
        await this.compactRepeatedly();
        break;
      case 'kill-rebaseline': {
        // a clean stop that commits after plugins have exited (CLN 5859): the DB is ahead of the backup
        await node.stop();
        this.checkSettled('kill-rebaseline');
        const k = this.rng.int(1, 3);
        for (let i = 0; i < k; i++) {
          const b = this.wl.next().batches.find((x) => x.kind === 'tx');
          if (b && b.kind === 'tx') node.commitWithoutHook(b.statements);
        }
        await this.bootWithKill(this.rng.int(0, 200));
        return; // the backup is behind until a start-up completes the re-baseline: nothing to compare yet
      }
    }
    this.checkSettled(fault);
  }

  /**
   * One EIO at a random fs call of a compaction (half the time counted from the creation of the new file,
   * half from its rename, where the steps are few), while writes go on. Before the rename the compaction
   * fails and the backup is unchanged; after it the plugin must refuse the next write (lightningd stops),
   * and either way nothing acknowledged may be lost (checkSettled, then the restart's checks).
   */
  private async ioErrorInCompaction(): Promise<void> {
    await this.waitCompactionIdle();
    // Half and half at random, except that a side no fault has landed on yet while the other has is chosen,
    // with an early call for the side before the rename: the soak's coverage check must not depend on luck.
    const { ioErrorsBeforeRename: before, ioErrorsAfterRename: after } = this.rep;
    const catchUp = before === 0 && after > 0 ? 'before' : after === 0 && before > 0 ? 'after' : null;
    const afterRename = catchUp === null ? this.rng.next() < 0.5 : catchUp === 'after';
    const early = catchUp === 'before' ? this.rng.int(1, 8) : Math.round(this.rng.logUniform(1, 300));
    armFault(this.faultSpec, afterRename ? { from: 'rename', at: this.rng.int(1, 12) } : { from: 'compacting', at: early });
    const answer = this.compactNow();
    let refused = false;
    for (let k = this.rng.int(0, 6); k > 0 && !refused; k--) {
      for (const b of this.wl.next().batches) {
        const r = await this.send(b);
        if (r.answered !== 'continue') {
          refused = true;
          break;
        }
      }
    }
    const failed = await answer;
    const f = faultFired(this.faultSpec);
    armFault(this.faultSpec, { at: 0 });
    if (f === null) {
      this.rep.ioErrorsNotReached++;
      if (failed !== null && this.node.state === 'running') {
        this.diverge('io-error-swap', `a compaction without a fault failed: ${failed}`);
      }
      return;
    }
    if (f.afterRename) this.rep.ioErrorsAfterRename++;
    else this.rep.ioErrorsBeforeRename++;
    if (this.node.state !== 'running' || failed === null) return;
    // the compaction failed and lightningd still runs: the next write shows what the plugin decided
    const w = this.wl.next().batches.find((b) => b.kind === 'tx')!;
    const r = await this.send(w);
    if (f.afterRename && r.answered === 'continue') {
      this.diverge('io-error-swap', `EIO at ${f.call} after the rename (${failed}): a later write was acknowledged instead of refused`);
    } else if (!f.afterRename && r.answered !== 'continue') {
      this.diverge('io-error-swap', `EIO at ${f.call} before the rename (${failed}): the backup was unchanged, yet a later write was refused: ${detailOf(r)}`);
    }
  }

  /** Two or three backup-compact in a row with no write between: each must succeed, and the backup equal the DB. */
  private async compactRepeatedly(): Promise<void> {
    await this.waitCompactionIdle();
    const k = this.rng.int(2, 3);
    for (let i = 0; i < k; i++) {
      const failed = await this.compactNow();
      if (failed !== null) {
        this.diverge('compact-repeat', `compaction ${i + 1} of ${k} in a row, no write between, failed: ${failed}`);
        return;
      }
      this.rep.repeatedCompactions++;
    }
    this.rep.checks++;
    const got = this.restoreDump();
    if ('error' in got) return this.diverge('compact-repeat', `restore after ${k} compactions in a row failed: ${got.error}`);
    const db = dump(this.node.dbPath);
    if (got.dump !== db) this.diverge('compact-repeat', `after ${k} compactions in a row: restored version ${got.head}, node at ${this.node.dataVersion()}\n${firstDiff(db, got.dump)}`);
  }

  /**
   * backup-compact, run to its end: null when it succeeded, else the error. A compaction already running
   * (an earlier request whose worker had not logged its start yet) is waited for, and the request repeated.
   */
  private async compactNow(): Promise<string | null> {
    for (let tries = 0; ; tries++) {
      const r = await rpc(this.node, 'backup-compact', {}, 120_000).catch((e: Error) => ({ error: { message: e.message } }));
      if (r.error === undefined) return null;
      const why = JSON.stringify(r.error);
      if (!/already running/.test(why) || tries >= 600 || !this.node.pluginAlive) return why;
      await sleep(50);
    }
  }

  /** A compaction started earlier (automatic, or a request) is let finish, so a new request is not refused. */
  private async waitCompactionIdle(): Promise<void> {
    for (let w = 0; w < 3000 && this.compacting && this.node.pluginAlive; w++) await sleep(10);
  }

  private async kill(): Promise<void> {
    if (this.compacting && this.node.pluginAlive) this.rep.killedCompacting++;
    this.compacting = false;
    await this.node.killPlugin();
  }

  /** How far the backup holds data: v1, its size; v2 (format 4, space reserved after the data), the records' end. */
  private written(): number {
    if (this.opts.format !== 'v2') return statSync(this.backupPath).size;
    const r = V2Reader.open(this.backupPath);
    try {
      return r.stats().bytes;
    } finally {
      r.close();
    }
  }

  /** v2: the end of the record whose header starts at `at` (as far as its length says), or `at` when none has started there. */
  private recordEndAt(at: number): number {
    const h = Buffer.alloc(RECORD_HEADER_LEN);
    const fd = openSync(this.backupPath, 'r');
    try {
      if (readSync(fd, h, 0, RECORD_HEADER_LEN, at) < RECORD_HEADER_LEN || h.readUInt32BE(0) !== RECORD_MAGIC) return at;
      return Math.min(fstatSync(fd).size, at + RECORD_OVERHEAD + Number(h.readBigUInt64BE(16)));
    } finally {
      closeSync(fd);
    }
  }

  private async waitForGrowth(before: number): Promise<void> {
    for (let i = 0; i < 200_000; i++) {
      let size = before;
      try {
        // v2: the next record's magic where the data ends (in reserved space the file's size does not change)
        size = this.opts.format === 'v2' ? this.recordEndAt(before) : statSync(this.backupPath).size;
      } catch {
        return;
      }
      if (size > before) return;
      if (!this.node.pluginAlive) return;
      await immediate();
    }
  }

  /** Starts the node as lightningd does (getmanifest, restart writes, init, one more write) and SIGKILLs the plugin after `delayMs`. */
  private async bootWithKill(delayMs: number): Promise<void> {
    let done = false;
    const killer = sleep(delayMs).then(async () => {
      if (!done) await this.kill();
    });
    try {
      await this.boot();
    } catch {
      // the kill landed during start-up: the node is down, which is what this fault is about
    }
    done = true;
    await killer;
  }

  /** lightningd's restart: getmanifest, three writes before init, init, one after (as SimNode.boot, but tracked). */
  private async boot(): Promise<void> {
    const node = this.node;
    this.rep.plugins++;
    await node.start();
    const lpb = readVar(node.dbPath, 'last_processed_block');
    const writes: WorkBatch[] = [
      { kind: 'tx', statements: ['UPDATE version SET version=282;'] },
      { kind: 'tx', statements: [`UPDATE vars SET intval=${lpb} WHERE name='last_processed_block';`, `DELETE FROM blocks WHERE height > ${lpb}`] },
      {
        kind: 'tx',
        statements: ['DELETE FROM channel_htlcs WHERE id IN (  SELECT ch.id  FROM channel_htlcs AS ch  JOIN channels AS c ON c.id = ch.channel_id  WHERE c.state = 10);'],
      },
    ];
    for (const w of writes) {
      const r = await this.send(w);
      if (r.answered !== 'continue') throw new Error(`restart write refused: ${detailOf(r)}`);
    }
    await node.init();
    const r = await this.send({ kind: 'tx', statements: ['DELETE FROM utxoset WHERE spendheight < -144'] });
    if (r.answered !== 'continue') throw new Error(`post-init write refused: ${detailOf(r)}`);
  }

  private async restartAndGoOn(fault: Fault): Promise<void> {
    if (this.node.state === 'running') await this.node.stop();
    try {
      await this.boot();
    } catch (e) {
      // A start-up after a crash must always succeed: the plugin repairs, rewinds or re-baselines.
      const logs = this.node.logs.slice(-6).map((l) => `${l.level}: ${l.message}`).join('\n');
      this.diverge('restart', `after ${fault}, the node could not start again: ${(e as Error).message}\n${logs}`);
      throw new Error(`soak trial ${this.trial}: ${(e as Error).message}`);
    }
    this.checkDebris(fault);
    this.freshWorkload();
    if (this.opts.checkAfterEveryRestart) this.check('restart');
  }

  // ---------------------------------------------------------------------------------------------------
  // checks

  private diverge(fault: Divergence['fault'], detail: string): void {
    this.rep.divergences.push({ trial: this.trial, fault, detail });
    this.opts.log?.(`DIVERGENCE at trial ${this.trial} (${fault}): ${detail.slice(0, 2000)}`);
  }

  private restoreDump(): { dump: string; head: number } | { error: string } {
    const out = join(this.dir, `restored-${this.checkSeq++}.sqlite3`);
    const reader = openReader(this.backupUrl, this.dir);
    try {
      if (this.key) {
        // every record decrypted and authenticated, and the chain, before the restore
        const a = unlockAndAuthenticate(reader, this.key, 'full');
        if (a?.problem) return { error: `authentication: ${a.problem.message}` };
      }
      const r = restoreBackup(reader, out);
      return { dump: dump(out), head: r.head };
    } catch (e) {
      return { error: (e as Error).message };
    } finally {
      reader.close();
      rmSync(out, { force: true });
    }
  }

  /** With the node not running: backup == DB, or == DB + the one uncommitted batch. */
  private checkSettled(fault: Fault): void {
    if (this.node.state === 'running') return;
    this.rep.checks++;
    const got = this.restoreDump();
    if ('error' in got) return this.diverge(fault, `restore failed: ${got.error}`);
    const db = dump(this.node.dbPath);
    if (got.dump === db) {
      this.pending = null;
      return;
    }
    if (this.pending) {
      const expected = this.withPending(this.pending);
      if (got.dump === expected) {
        this.rep.aheadByOne++;
        if (fault === 'kill-mid-append' || fault === 'kill-on-growth') this.rep.aheadAfterKill++;
        this.pending = null;
        return;
      }
    }
    const dbDv = this.node.dataVersion();
    this.diverge(
      fault,
      `restored version ${got.head}, node at ${dbDv}${this.pending ? ` with an uncommitted ${this.pending.kind} batch pending` : ''}: ` +
        `the restore is neither the node's DB nor the DB plus that batch\n${firstDiff(db, got.dump)}`,
    );
    this.pending = null;
  }

  /** While running and idle, or stopped cleanly: backup == DB exactly. */
  private check(kind: 'checkpoint' | 'restart'): void {
    this.rep.checks++;
    const got = this.restoreDump();
    if ('error' in got) return this.diverge(kind, `restore failed: ${got.error}`);
    const db = dump(this.node.dbPath);
    if (got.dump !== db) {
      this.diverge(kind, `restored version ${got.head}, node at ${this.node.dataVersion()}\n${firstDiff(db, got.dump)}`);
    }
  }

  private withPending(b: Batch): string {
    const copy = join(this.dir, `expected-${this.checkSeq++}.sqlite3`);
    copyFileSync(this.node.dbPath, copy);
    const db = new SimDb(copy);
    try {
      db.open();
      db.apply(b.writes);
      db.close();
      return dump(copy);
    } catch (e) {
      return `(could not apply the pending batch: ${(e as Error).message})`;
    } finally {
      db.close();
      rmSync(copy, { force: true });
      rmSync(`${copy}-journal`, { force: true });
    }
  }

  /** A killed start-up or append must not leave files that pile up next to the backup. */
  private checkDebris(fault: Fault): void {
    const base = basename(this.backupPath);
    const allowed = new Set([base, `${base}.writer`, `${base}.writer-journal`]);
    // compaction's own files: one history generation (history: 1), plus what an interrupted run left, which
    // the next compaction removes: a run killed after its swap but before pruning leaves a second history
    // file (seen in a long soak). A third would mean leftovers pile up.
    const names = readdirSync(dirname(this.backupPath));
    const hist = names.filter((f) => f.startsWith(`${base}.hist-`));
    const compactLeftover = (f: string) => f === `${base}.compacting` || f.startsWith(`${base}.compact-scratch.sqlite3`);
    const extra = names.filter((f) => !allowed.has(f) && !f.startsWith(`${base}.hist-`) && !compactLeftover(f));
    if (hist.length > 2) extra.push(...hist);
    if (extra.length > 0) this.diverge(fault, `debris next to the backup after a restart: ${extra.join(', ')}`);
  }
}

function readVar(dbPath: string, name: string): number {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT intval FROM vars WHERE name = ?').get(name) as { intval: number } | undefined;
    return row?.intval ?? 0;
  } finally {
    db.close();
  }
}

function detailOf(r: DbWriteResult): string {
  return r.answered === 'error' ? r.detail : r.answered;
}

function firstDiff(a: string, b: string): string {
  const la = a.split('\n');
  const lb = b.split('\n');
  for (let i = 0; i < Math.max(la.length, lb.length); i++) {
    if (la[i] !== lb[i]) return `first difference at dump line ${i + 1}:\n  node:     ${(la[i] ?? '(end)').slice(0, 300)}\n  restored: ${(lb[i] ?? '(end)').slice(0, 300)}`;
  }
  return 'dumps differ';
}

export function progress(r: SoakReport): string {
  return (
    `${r.format} seed ${r.seed}: ${r.trials} trials, ${r.checks} restore checks, ${r.divergences.length} divergences; ` +
    `${r.committed} batches committed, ${r.killedInHook} plugins killed inside a hook, ${r.tailRepairs} tails repaired, ` +
    `${r.rewinds} rewinds, ${r.rebaselines} re-baselines, ${r.aheadByOne} checks one batch ahead ` +
    `(${r.aheadAfterKill} after a kill), ${r.powerCuts} power cuts, ${r.compactions} online compactions ` +
    `(${r.killedCompacting} kills during one), ${r.repeatedCompactions} back to back; EIO in a compaction: ` +
    `${r.ioErrorsBeforeRename} before its rename, ${r.ioErrorsAfterRename} after, ${r.ioErrorsNotReached} past its last call`
  );
}
