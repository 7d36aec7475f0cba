import { copyFileSync, linkSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { CompactionConfig } from '../../compact/config.js';
import type { KeyLike } from '../../crypto/backup-crypt.js';
import type { BackupStats, BackupWriter } from '../backend.js';
import { BackupError, type BackupFormat, type Problem } from '../../engine/entries.js';
import { backupPath, detectFormat, isRemoteUrl, openWriter } from '../open.js';
import { redact } from '../postgres/url.js';
import { serialDiff, u32 } from '../../engine/versions.js';
import { applyChange, applySnapshot, ForeignError, GapError } from './apply.js';
import type { LaneSetup } from './lane.js';
import type { ThreadMarks } from './thread-shell.js';
import type { DestCompaction } from './compact-dest.js';
import {
  ackSlot,
  allocShared,
  attachShared,
  bellSlot,
  DestState,
  F,
  fSlot,
  G,
  gSlot,
  isHealthy,
  nowMs,
  recordLatency,
  reportOf,
  snapSlot,
  monitorTidSlot,
  tidSlot,
  type DestReport,
  type LaneNote,
  type LaneOp,
  type SharedBlock,
} from './shared.js';
import { readDestIds, readDestState, STATE_FILE, writeDestState } from './state.js';
import { compareIdentity, fileIdentity, replacedMessage } from './identity.js';
import { takeLiveSnapshot } from '../../engine/live-db.js';
import { dropThread, RESTART_FIRST_MS, RESTART_MAX_MS, startThread, threadGone, workerFile, wt, type WatchedThread } from './threads.js';
import { MonitorThread, type MonitorConfig } from './monitor-thread.js';
import { SetCompactor, type CompactionStdout } from './set-compactor.js';

export type { MonitorConfig } from './monitor-thread.js';

/**
 * Several destinations behind the one BackupWriter interface (docs/destinations.md). A write is handed
 * to every remote destination's lane (a worker thread each, lane.ts) first, then appended to the local
 * files on this thread meanwhile, then this thread sleeps on shared memory until k destinations hold it
 * or remote_timeout passes: then it throws, and the hook refuses the write (lightningd stops without
 * committing). A local file whose write fails is handed to a lane, which retries and catches up like a
 * remote one.
 */

export interface MultiOptions {
  cwd: string;
  k: number;
  remoteTimeoutMs: number;
  segmentBytes?: number;
  log: (level: 'info' | 'warn' | 'error', message: string) => void;
  /** the node's database, snapshotted (inside a hook) to re-seed a destination */
  dbPath: string;
  /** settings for the monitor thread (metrics, heartbeat); the state file is always kept */
  monitor?: MonitorConfig;
  /** a lane's in-memory queue bound before it asks for a re-seed instead */
  maxQueueBytes?: number;
  /** how long start-up waits for unreachable destinations before going on without them (when k others answered) */
  openGraceMs?: number;
  /** backup.lock "encrypt": every destination is written encrypted (one that cannot be refuses start-up) */
  key?: KeyLike | null;
}

interface Dest {
  url: string;
  shown: string;
  local: BackupWriter | null;
  lane: WatchedThread | null;
  /** its lane's thread died: when it is restarted (ms since the epoch), and the delay after the next death */
  restartAt: number | null;
  restartDelayMs: number;
  /** the newest version it was known to hold before its lane (re)started: a rollback check for the new lane */
  knownHead: number | null;
  opened: boolean;
  trusted: boolean;
  lastError: string | null;
  /** healthy as last told to the notification listener (null: nothing said yet) */
  toldHealthy: boolean | null;
  /** the last backup-compact's outcome for it, this run */
  compaction: DestCompaction | null;
  /** why it cannot take the key of an encrypted set (its lane could not open it with one), null if it can */
  keyRefused: string | null;
}

export interface HealthChange {
  report: DestReport;
  healthy: boolean;
}

const DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024;
/** how often, at most, the main thread looks for the lanes' threads in /proc (a stat each) */
const PROBE_MS = 1000;

export class MultiWriter implements BackupWriter {
  format: BackupFormat;
  readonly location: string;
  private readonly s: SharedBlock;
  private readonly sharedBuf: { ints: SharedArrayBuffer; f: SharedArrayBuffer };
  private readonly dests: Dest[];
  private seq = 0;
  private logical = 0;
  private empty = true;
  private snapshotHead = false;
  private readonly monitor: MonitorThread;
  /** backup-compact and the automatic compaction (backup.lock "compaction") of the set */
  private readonly compactor: SetCompactor;
  private nextProbe = 0;
  private readonly statePath: string;
  private scratchN = 0;
  /** each destination's backup id, as recorded in the state file when first seen (identity.ts) */
  private ids: Record<string, string> = {};
  private closed = false;

  private constructor(
    urls: string[],
    private readonly opts: MultiOptions,
  ) {
    this.sharedBuf = allocShared(urls.length);
    this.s = attachShared(urls.length, this.sharedBuf);
    this.dests = urls.map((url) => ({
      url,
      shown: redact(url),
      local: null,
      lane: null,
      restartAt: null,
      restartDelayMs: RESTART_FIRST_MS,
      knownHead: null,
      opened: false,
      trusted: true,
      lastError: null,
      toldHealthy: null,
      compaction: null,
      keyRefused: null,
    }));
    this.location = this.dests.map((d) => d.shown).join(' + ');
    this.format = 'v2';
    this.statePath = join(opts.cwd, STATE_FILE);
    this.s.f[gSlot(this.s.n, G.K)] = opts.k;
    this.s.f[gSlot(this.s.n, G.N)] = urls.length;
    for (let i = 0; i < urls.length; i++) this.s.f[fSlot(i, F.STATE)] = DestState.Opening;
    this.monitor = new MonitorThread(
      () => ({
        n: this.s.n,
        shown: this.dests.map((d) => d.shown),
        shared: this.sharedBuf,
        statePath: this.statePath,
        ids: { ...this.ids },
        config: opts.monitor ?? {},
      }),
      this.marks(null, monitorTidSlot(this.s.n)),
      opts.log,
    );
    this.compactor = new SetCompactor({
      dests: this.dests,
      ints: this.s.ints,
      n: this.s.n,
      cwd: opts.cwd,
      dbPath: opts.dbPath,
      log: opts.log,
      handOver: (i) => this.handOver(i),
      state: (i) => this.report(i).state,
      marks: (tid) => this.marks(null, tid),
      probeDue: () => this.probeDue(),
    });
  }

  static open(urls: string[], opts: MultiOptions): MultiWriter {
    const m = new MultiWriter(urls, opts);
    try {
      m.openAll();
    } catch (e) {
      m.close();
      throw e;
    }
    return m;
  }

  private openAll(): void {
    const known = readDestState(this.statePath, this.opts.log);
    this.ids = readDestIds(this.statePath);
    const idsBefore = JSON.stringify(this.ids);
    // remote ones first: they connect in their threads while the local files open here
    for (let i = 0; i < this.dests.length; i++) {
      if (isRemoteUrl(this.dests[i]!.url)) this.startLane(i, known[this.dests[i]!.shown] ?? null, false);
    }
    for (let i = 0; i < this.dests.length; i++) {
      const d = this.dests[i]!;
      if (isRemoteUrl(d.url)) continue;
      // a v1 file cannot hold encrypted records: said at once, not retried in the background
      if (this.opts.key) this.mustTakeKey(d);
      if (d.keyRefused !== null) continue;
      try {
        const w = openWriter(d.url, this.opts.cwd, { segmentBytes: this.opts.segmentBytes, key: this.opts.key ?? null });
        d.local = w;
        d.opened = true;
        if (i === 0) this.format = w.format;
        const knownHead = known[d.shown];
        this.setFigures(i, w);
        const id = fileIdentity(d.url, this.opts.cwd);
        const same = compareIdentity(this.ids[d.shown], id, w.isEmpty());
        if (same === 'replaced') {
          this.s.f[fSlot(i, F.UNTRUSTED_SEEN)] = 1;
          this.opts.log(
            'error',
            `destination ${d.shown}: ${replacedMessage(this.ids[d.shown]!, id!)}. NOT TRUSTED: it takes no writes in this run; check what ` +
              `happened to it, move it aside and re-create it (clnvault init), which is then re-seeded (docs/destinations.md)`,
          );
          d.trusted = false;
          d.lastError = 'replaced by another backup (its backup id changed)';
          try {
            w.close();
          } catch {
            // not ours to repair
          }
          d.local = null;
          this.s.f[fSlot(i, F.STATE)] = DestState.Refused;
          continue;
        }
        if (same === 'recreated') this.opts.log('warn', `destination ${d.shown}: re-created (a new, empty backup id ${id}); it is re-seeded`);
        if (id !== null) this.ids[d.shown] = id;
        if (knownHead !== undefined && (w.isEmpty() || serialDiff(w.head(), knownHead) < 0)) {
          this.s.f[fSlot(i, F.UNTRUSTED_SEEN)] = 1;
          this.opts.log(
            'error',
            `destination ${d.shown}: ROLLED BACK OR REPLACED BY AN OLDER COPY: it held version ${knownHead} and now holds ` +
              `${w.isEmpty() ? 'nothing' : `version ${w.head()}`}. Its contents are not trusted; it is re-seeded with a snapshot`,
          );
          d.trusted = false;
          this.demote(i, true);
        } else {
          this.s.f[fSlot(i, F.STATE)] = DestState.Live;
          for (const p of w.repaired()) this.opts.log('warn', `destination ${d.shown}: repaired on open: ${p.message}`);
        }
      } catch (e) {
        d.lastError = (e as Error).message;
        this.opts.log('warn', `destination ${d.shown}: cannot be opened (${d.lastError}); retrying in the background`);
        this.startLane(i, known[d.shown] ?? null, false);
      }
    }
    this.waitForOpens();
    const cannot = this.dests.filter((d) => d.keyRefused !== null);
    if (cannot.length > 0) {
      throw new BackupError(
        `"encrypt" is set, but ${cannot.map((d) => `destination ${d.shown} cannot be written encrypted (${d.keyRefused})`).join('; ')}: ` +
          `list only destinations that can (docs/destinations.md), or drop "encrypt"`,
        cannot[0]!.shown,
      );
    }
    if (JSON.stringify(this.ids) !== idsBefore) {
      try {
        writeDestState(this.statePath, known, this.ids);
      } catch (e) {
        this.opts.log('warn', `could not write ${this.statePath}: ${(e as Error).message}`);
      }
    }
    let best: number | null = null;
    for (let i = 0; i < this.dests.length; i++) {
      const d = this.dests[i]!;
      if (!d.opened || !d.trusted) continue;
      if (this.s.f[fSlot(i, F.STATE)] === DestState.NeedsSnapshot) continue;
      const emptyHere = d.local !== null ? d.local.isEmpty() : this.laneEmpty[i] === true;
      if (emptyHere) continue;
      const h = this.s.f[fSlot(i, F.HEAD)]!;
      if (best === null || serialDiff(h, best) > 0) best = h;
    }
    if (best !== null) {
      this.logical = best;
      this.empty = false;
      this.snapshotHead = this.dests.some(
        (d, i) => d.opened && d.trusted && this.s.f[fSlot(i, F.HEAD)] === best && this.s.f[fSlot(i, F.HEAD_SNAPSHOT)] === 1,
      );
    }
    const opened = this.dests.filter((d) => d.opened && d.trusted).length;
    if (opened < this.opts.k) {
      this.opts.log(
        'warn',
        `only ${opened} of ${this.dests.length} destinations could be opened and trusted, and ${this.opts.k} must hold each write: ` +
          `writes are refused until enough of them are back`,
      );
    }
    this.s.f[gSlot(this.s.n, G.HEAD)] = this.logical;
    this.s.f[gSlot(this.s.n, G.HEAD_AT)] = Date.now();
    for (let i = 0; i < this.dests.length; i++) this.s.f[fSlot(i, F.LAST_OP_AT)] = Date.now();
    this.monitor.start();
  }

  private laneEmpty: boolean[] = [];

  private setFigures(i: number, w: BackupWriter): void {
    this.s.f[fSlot(i, F.HEAD)] = w.head();
    this.s.f[fSlot(i, F.HEAD_SNAPSHOT)] = w.headIsSnapshot() ? 1 : 0;
  }

  private startLane(i: number, knownHead: number | null, needSnapshot: boolean): void {
    const d = this.dests[i]!;
    d.knownHead = knownHead;
    const setup: Omit<LaneSetup, 'port'> = {
      index: i,
      n: this.s.n,
      url: d.url,
      cwd: this.opts.cwd,
      remoteTimeoutMs: this.opts.remoteTimeoutMs,
      shared: this.sharedBuf,
      knownHead,
      knownId: this.ids[d.shown] ?? null,
      key: this.opts.key ? { key: new Uint8Array(this.opts.key.key), kind: this.opts.key.kind, fingerprint: this.opts.key.fingerprint } : null,
      needSnapshot,
      maxQueueBytes: this.opts.maxQueueBytes ?? DEFAULT_MAX_QUEUE_BYTES,
      peers: this.dests.flatMap((p, j) => (j !== i && !isRemoteUrl(p.url) ? [{ index: j, url: p.url }] : [])),
      ...(this.opts.segmentBytes !== undefined ? { segmentBytes: this.opts.segmentBytes } : {}),
    };
    try {
      d.lane = startThread(workerFile(['./lane.js', '../backends/multi/lane.js']), { ...setup }, this.marks(fSlot(i, F.STATE), tidSlot(this.s.n, i)));
    } catch (e) {
      // a missing file: seen like a lane that died at once, restarted later
      d.lane = null;
      this.laneDied(i, `its thread could not be started: ${(e as Error).message}`);
    }
  }

  private marks(stateSlot: number | null, tid: number): ThreadMarks {
    return { ints: this.sharedBuf.ints, bell: bellSlot(this.s.n), tidSlot: tid, f: this.sharedBuf.f, stateSlot, errorState: DestState.Error };
  }

  /**
   * Destination i's lane thread is gone (`why`): from now on it holds nothing new and is not counted for
   * acknowledgements; it is `error` for status, metrics and the heartbeat (thread-shell.ts marked it so
   * already when any JavaScript ran at its end). Restarted later (restartThreads), then re-seeded: what
   * it had queued died with it.
   */
  private laneDied(i: number, why: string): void {
    const d = this.dests[i]!;
    if (d.lane !== null) {
      this.drainLane(d);
      dropThread(d.lane);
      d.lane = null;
    }
    this.s.f[fSlot(i, F.STATE)] = DestState.Error;
    this.s.f[fSlot(i, F.ERRORS)]! += 1;
    Atomics.store(this.s.ints, snapSlot(this.s.n, i), 0);
    d.lastError = `its thread died: ${why}`;
    d.restartAt = Date.now() + d.restartDelayMs;
    this.opts.log(
      'error',
      `destination ${d.shown}: its thread DIED (${why}). It takes no writes and is not counted for acknowledgements until it is ` +
        `restarted in ${Math.round(d.restartDelayMs / 1000)} s and re-seeded with a snapshot`,
    );
    d.restartDelayMs = Math.min(d.restartDelayMs * 2, RESTART_MAX_MS);
  }

  /** Finds lanes (and the monitor) whose thread ended; `probe`: look in /proc too (rate-limited by the caller). */
  private checkThreads(probe: boolean): void {
    for (let i = 0; i < this.dests.length; i++) {
      const d = this.dests[i]!;
      if (d.lane === null) continue;
      const why = threadGone(d.lane, probe);
      if (why !== null) this.laneDied(i, why);
    }
    this.monitor.check(probe);
  }

  /** Between messages (never inside a hook's wait): starts again the threads that died, once their delay passed. */
  private restartThreads(): void {
    const now = Date.now();
    for (let i = 0; i < this.dests.length; i++) {
      const d = this.dests[i]!;
      if (d.restartAt === null || now < d.restartAt || d.lane !== null) continue;
      d.restartAt = null;
      // what it held (it may have been written to until it died): a rollback check for the new thread
      const held = d.opened ? this.s.f[fSlot(i, F.HEAD)]! : d.knownHead;
      this.opts.log('info', `destination ${d.shown}: restarting its thread`);
      this.s.f[fSlot(i, F.STATE)] = DestState.NeedsSnapshot;
      Atomics.store(this.s.ints, snapSlot(this.s.n, i), 1);
      this.startLane(i, held, true);
    }
    this.monitor.restartIfDue(now);
  }

  /** A local file whose write failed (or that is not trusted) goes to a lane that retries and catches up. */
  private demote(i: number, needSnapshot: boolean): void {
    const d = this.dests[i]!;
    try {
      d.local?.close();
    } catch {
      // its disk failed: the lane reopens it
    }
    d.local = null;
    this.s.f[fSlot(i, F.STATE)] = needSnapshot ? DestState.NeedsSnapshot : DestState.Down;
    if (needSnapshot) Atomics.store(this.s.ints, snapSlot(this.s.n, i), 1);
    this.startLane(i, null, needSnapshot);
  }

  /** Start-up: every lane answers (opened or failed), or k destinations answered and the grace period passed. */
  private waitForOpens(): void {
    const start = Date.now();
    const grace = this.opts.openGraceMs ?? Math.min(this.opts.remoteTimeoutMs, 15_000);
    const hard = this.opts.remoteTimeoutMs + 10_000;
    const bell = bellSlot(this.s.n);
    for (;;) {
      const b = Atomics.load(this.s.ints, bell);
      this.drain();
      const pending = this.dests.filter((d) => d.lane !== null && !d.opened && d.lastError === null).length;
      if (this.dests.some((d) => d.keyRefused !== null)) return;
      const ready = this.dests.filter((d) => d.opened && d.trusted).length;
      const waited = Date.now() - start;
      if (pending === 0 || (ready >= this.opts.k && waited >= grace) || waited >= hard) return;
      Atomics.wait(this.s.ints, bell, b, 200);
    }
  }

  /** null while the monitor thread runs, else why it does not (for status) */
  monitorProblem(): string | null {
    return this.monitor.problem();
  }

  /**
   * Takes what the lanes said (logs, errors, late opens). Called by the plugin at every message it
   * handles: this thread's event loop does not run, so nothing arrives otherwise.
   */
  drain(): void {
    this.monitor.drain();
    for (const d of this.dests) this.drainLane(d);
    this.checkThreads(this.probeDue());
    if (!this.closed) this.restartThreads();
  }

  private probeDue(): boolean {
    const now = Date.now();
    if (now < this.nextProbe) return false;
    this.nextProbe = now + PROBE_MS;
    return true;
  }

  private drainLane(d: Dest): void {
    if (d.lane === null) return;
    const { receiveMessageOnPort } = wt();
    const i = this.dests.indexOf(d);
    for (;;) {
      const m = receiveMessageOnPort(d.lane.port);
      if (m === undefined) break;
      const n = m.message as LaneNote;
      if (n.t === 'opened') {
        d.opened = true;
        d.trusted = n.trusted;
        this.laneEmpty[i] = n.empty;
      } else if (n.t === 'open-failed') {
        d.lastError = n.error;
        if (n.keyRefused === true) d.keyRefused = n.error;
      }
      else if (n.t === 'compacted') d.compaction = n.outcome;
      else if (n.t === 'identity') this.recordId(d.shown, n.id);
      else if (n.t === 'log') {
        if (n.error !== undefined) d.lastError = n.error;
        if (n.message !== '') this.opts.log(n.level, n.message);
      }
    }
  }

  /**
   * backup-compact over the set (docs/destinations.md): each destination in turn, in a thread that
   * answers `id` itself when done (null: automatic, logs only). Returns why it cannot start, or null.
   */
  startCompaction(id: string | number | null, history: number, stdout: CompactionStdout): string | null {
    this.usable();
    return this.compactor.start(id, history, stdout);
  }

  /** At each message: the request to answer with an error if the compaction thread died before answering. */
  compactionPoll(): { id: string | number | null; message: string } | null {
    return this.compactor.poll();
  }

  /** A local file destination of an encrypted set must be v2 (a reference v1 file has no room for it). */
  private mustTakeKey(d: Dest): void {
    let format: string;
    try {
      format = detectFormat(backupPath(d.url, this.opts.cwd));
    } catch {
      return; // missing or unreadable: its opening says so, and a lane retries
    }
    if (format !== 'v2') d.keyRefused = 'it is a reference (v1) file, which has no room for encryption';
  }

  /** A destination's backup id, first seen (or re-created) in a lane: kept in the state file from now on. */
  private recordId(shown: string, id: string): void {
    if (this.ids[shown] === id) return;
    this.ids[shown] = id;
    // the monitor keeps the state file while it runs; before it starts (start-up) this thread writes it
    if (!this.monitor.post({ t: 'ids', ids: { ...this.ids } })) {
      try {
        writeDestState(this.statePath, readDestState(this.statePath, () => {}), this.ids);
      } catch {
        // written again at the clean stop
      }
    }
  }

  /** A local file written on this thread becomes a lane's (for its compaction): closed here, reopened there. */
  private handOver(i: number): void {
    const d = this.dests[i]!;
    const held = d.local!.isEmpty() ? null : d.local!.head();
    try {
      d.local!.close();
    } catch {
      // reopened by the lane, which sees any damage
    }
    d.local = null;
    this.startLane(i, held, false);
  }

  /** Destinations whose health changed since the last call (for the plugin's notification). */
  healthChanges(): HealthChange[] {
    const out: HealthChange[] = [];
    for (let i = 0; i < this.dests.length; i++) {
      const d = this.dests[i]!;
      if (this.s.f[fSlot(i, F.STATE)] === DestState.Opening) continue;
      const healthy = isHealthy(this.s, i);
      if (d.toldHealthy === null ? !healthy : d.toldHealthy !== healthy) out.push({ report: this.report(i), healthy });
      d.toldHealthy = healthy;
    }
    return out;
  }

  report(i: number): DestReport {
    return { ...reportOf(this.s, i, this.dests[i]!.shown, this.dests[i]!.lastError), compaction: this.dests[i]!.compaction };
  }

  reports(): DestReport[] {
    return this.dests.map((_, i) => this.report(i));
  }

  get k(): number {
    return this.opts.k;
  }

  head(): number {
    return this.logical;
  }

  isEmpty(): boolean {
    return this.empty;
  }

  headIsSnapshot(): boolean {
    return this.snapshotHead;
  }

  repaired(): Problem[] {
    return [];
  }

  appendChange(version: number, statements: readonly string[]): number {
    this.usable();
    const repeat = !this.empty && version === this.logical;
    this.reseedIfAsked();
    const seq = this.nextSeq();
    const at = nowMs();
    const op: LaneOp = { t: 'change', seq, version, statements, repeat, at };
    for (const d of this.dests) if (d.lane !== null) d.lane.port.postMessage(op);
    let held = 0;
    let bytes = 0;
    for (let i = 0; i < this.dests.length; i++) {
      const d = this.dests[i]!;
      if (d.local === null) continue;
      try {
        const n = applyChange(d.local, version, statements, repeat);
        bytes = n;
        held++;
        this.localDone(i, d.local, n, at);
      } catch (e) {
        this.localFailed(i, e as Error, version, op);
      }
    }
    this.waitFor(seq, held, `version ${version}`);
    this.logical = version;
    this.empty = false;
    this.snapshotHead = false;
    this.s.f[gSlot(this.s.n, G.HEAD)] = version;
    this.s.f[gSlot(this.s.n, G.HEAD_AT)] = Date.now();
    return bytes;
  }

  appendSnapshotFile(version: number, dbPath: string): void {
    this.usable();
    const seq = this.nextSeq();
    const at = nowMs();
    // `dbPath` may be the live database (read under a lock the caller holds only until we return): the
    // lanes get their own copy, one hard link each, removed by the lane once stored
    const lanes = this.dests.map((d, i) => (d.lane !== null ? i : -1)).filter((i) => i >= 0);
    if (lanes.length > 0) {
      const tmp = this.scratch();
      try {
        copyFileSync(dbPath, tmp);
        for (const i of lanes) {
          const p = `${tmp}.d${i}`;
          linkSync(tmp, p);
          Atomics.store(this.s.ints, snapSlot(this.s.n, i), 0);
          this.dests[i]!.lane!.port.postMessage({ t: 'snapshot', seq, version, path: p, at } satisfies LaneOp);
        }
      } finally {
        rmSync(tmp, { force: true });
      }
    }
    let held = 0;
    for (let i = 0; i < this.dests.length; i++) {
      const d = this.dests[i]!;
      if (d.local === null) continue;
      try {
        applySnapshot(d.local, version, dbPath);
        held++;
        this.localDone(i, d.local, 0, at);
      } catch (e) {
        this.localFailed(i, e as Error, version);
      }
    }
    this.waitFor(seq, held, `the snapshot of version ${version}`);
    this.logical = version;
    this.empty = false;
    this.snapshotHead = true;
    this.s.f[gSlot(this.s.n, G.HEAD)] = version;
    this.s.f[gSlot(this.s.n, G.HEAD_AT)] = Date.now();
  }

  /**
   * The hook calls this before storing the replacement of a write the node never committed; each
   * destination drops that entry itself when the replacement reaches it (apply.ts), so here it only
   * moves the head the hook sees.
   */
  dropHead(): number {
    this.usable();
    if (this.snapshotHead) throw new BackupError(`${this.location}: the newest entry is a snapshot, which is never rewound`, this.location);
    this.logical = u32(this.logical - 1);
    return this.logical;
  }

  stats(): BackupStats {
    let bytes = 0;
    for (let i = 0; i < this.dests.length; i++) bytes += this.s.f[fSlot(i, F.BYTES)]!;
    return { format: this.format, location: this.location, head: this.logical, entries: 0, bytes };
  }

  /** From lightningd's init on (as with one destination): compactions start by themselves past the threshold. */
  enableAutoCompaction(config: CompactionConfig, stdout: CompactionStdout): void {
    this.compactor.enableAuto(config, stdout);
  }

  /** Tops up the reserved space of the local file destinations (format 4), between hooks: see V2Writer.prepare. */
  prepare(): boolean {
    if (!this.closed) this.compactor.autoCompact();
    let did = false;
    for (const d of this.dests) {
      try {
        if (d.local?.prepare?.()) did = true;
      } catch {
        // a failure shows at that destination's next write, which hands it to a lane
      }
    }
    return did;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const d of this.dests) {
      try {
        d.local?.close();
      } catch {
        // closing: nothing more to save
      }
    }
    const lanes = this.dests.filter((d) => d.lane !== null);
    for (const d of lanes) d.lane!.port.postMessage({ t: 'close' } satisfies LaneOp);
    // a lane may be inside a write: give it a moment to finish and close its destination cleanly
    const end = Date.now() + 3000;
    const { receiveMessageOnPort } = wt();
    const closed = new Set<Dest>();
    while (closed.size < lanes.length && Date.now() < end) {
      const b = Atomics.load(this.s.ints, bellSlot(this.s.n));
      for (const d of lanes) {
        for (;;) {
          const m = receiveMessageOnPort(d.lane!.port);
          if (m === undefined) break;
          if ((m.message as LaneNote).t === 'closed') closed.add(d);
        }
      }
      if (closed.size < lanes.length) Atomics.wait(this.s.ints, bellSlot(this.s.n), b, 100);
    }
    for (const d of lanes) void d.lane!.worker.terminate();
    this.monitor.terminate();
    try {
      writeDestState(this.statePath, this.heldVersions(readDestState(this.statePath, () => {})), this.ids);
    } catch (e) {
      this.opts.log('warn', `could not write ${this.statePath}: ${(e as Error).message}`);
    }
  }

  /** What each destination is known to hold, for the state file (kept as before for one that is not trusted now). */
  heldVersions(before: Record<string, number>): Record<string, number> {
    const out: Record<string, number> = { ...before };
    for (let i = 0; i < this.dests.length; i++) {
      const st = this.s.f[fSlot(i, F.STATE)]!;
      if (st === DestState.Opening || st === DestState.NeedsSnapshot || st === DestState.Refused) continue;
      out[this.dests[i]!.shown] = this.s.f[fSlot(i, F.HEAD)]!;
    }
    return out;
  }

  private usable(): void {
    if (this.closed) throw new BackupError(`${this.location}: closed`, this.location);
  }

  private nextSeq(): number {
    this.seq = (this.seq + 1) | 0;
    return this.seq;
  }

  private scratch(): string {
    return join(this.opts.cwd, `.clnvault-destinations-${process.pid}-${++this.scratchN}.sqlite3`);
  }

  private localDone(i: number, w: BackupWriter, bytes: number, at: number): void {
    const f = this.s.f;
    f[fSlot(i, F.HEAD)] = w.head();
    f[fSlot(i, F.HEAD_SNAPSHOT)] = w.headIsSnapshot() ? 1 : 0;
    f[fSlot(i, F.BYTES)]! += bytes;
    f[fSlot(i, F.WRITES)]! += 1;
    f[fSlot(i, F.LAST_OP_AT)] = at;
    recordLatency(this.s, i, (nowMs() - at) * 1000);
  }

  /** `op`: the change that failed; a destination found behind gets it in its lane, which catches up first (catch-up.ts). */
  private localFailed(i: number, e: Error, version: number, op?: LaneOp): void {
    const d = this.dests[i]!;
    d.lastError = e.message;
    this.s.f[fSlot(i, F.ERRORS)]! += 1;
    if (e instanceof ForeignError) {
      this.s.f[fSlot(i, F.UNTRUSTED_SEEN)] = 1;
      this.opts.log('error', `destination ${d.shown}: NOT TRUSTED: ${e.message}. It takes no more writes in this run`);
      try {
        d.local?.close();
      } catch {
        // already failing
      }
      d.local = null;
      this.s.f[fSlot(i, F.STATE)] = DestState.Refused;
      return;
    }
    const gap = e instanceof GapError;
    this.opts.log(
      'warn',
      `destination ${d.shown}: could not store version ${version} (${e.message}); ` +
        (gap ? 'its own thread catches it up from another destination (or re-seeds it with a snapshot)' : 'retrying in the background while the others take the writes'),
    );
    if (gap && op !== undefined) {
      this.demote(i, false);
      this.dests[i]!.lane?.port.postMessage(op);
    } else this.demote(i, gap);
  }

  /**
   * Sleeps until `k` destinations hold op `seq` (`held` of them local, already done), or throws at
   * remote_timeout, or at once when too few destinations are left that could still take it (a lane whose
   * thread died takes nothing: waiting for it would only hold lightningd up).
   */
  private waitFor(seq: number, held: number, what: string): void {
    const k = this.opts.k;
    if (held >= k) return;
    const ints = this.s.ints;
    const bell = bellSlot(this.s.n);
    const deadline = Date.now() + this.opts.remoteTimeoutMs;
    for (;;) {
      const b = Atomics.load(ints, bell);
      // a dying lane's shell rings the bell; one that ended without a word is found in /proc
      this.checkThreads(this.probeDue());
      let n = held;
      let could = 0;
      for (let i = 0; i < this.dests.length; i++) {
        if (this.dests[i]!.lane === null) continue;
        if (((Atomics.load(ints, ackSlot(i)) - seq) | 0) >= 0) n++;
        else could++;
      }
      if (n >= k) return;
      const left = deadline - Date.now();
      const hopeless = n + could < k;
      if (left <= 0 || hopeless) {
        this.drain();
        this.s.f[gSlot(this.s.n, G.REFUSED)]! += 1;
        const why = this.dests
          .map((d, i) => {
            const acked = d.lane === null ? d.local !== null : ((Atomics.load(ints, ackSlot(i)) - seq) | 0) >= 0;
            const st = this.report(i).state;
            const what = acked ? 'holds it' : st === 'live' ? 'no answer' : st;
            return `${d.shown}: ${what}${!acked && d.lastError !== null ? ` (${d.lastError})` : ''}`;
          })
          .join('; ');
        const when = hopeless ? 'and no other one can take it now,' : `after ${Math.round(this.opts.remoteTimeoutMs / 1000)} s and`;
        throw new BackupError(
          `only ${n} of ${this.dests.length} destinations hold ${what} ${when} ` +
            `"ack" requires ${k}: ${why}. Bring a destination back, or lower "ack" in backup.lock, then start lightningd again`,
          this.location,
        );
      }
      Atomics.wait(ints, bell, b, Math.min(left, PROBE_MS));
    }
  }

  /** A lane asked for a snapshot: taken here, inside the hook, where the database file holds exactly the committed state. */
  private reseedIfAsked(): void {
    const ints = this.s.ints;
    const want: number[] = [];
    for (let i = 0; i < this.dests.length; i++) {
      if (this.dests[i]!.lane !== null && Atomics.load(ints, snapSlot(this.s.n, i)) === 1) want.push(i);
    }
    if (want.length === 0) return;
    const tmp = this.scratch();
    try {
      const version = takeLiveSnapshot(this.opts.dbPath, tmp);
      const seq = this.nextSeq();
      const at = nowMs();
      for (const i of want) {
        const p = `${tmp}.d${i}`;
        linkSync(tmp, p);
        Atomics.store(ints, snapSlot(this.s.n, i), 0);
        this.dests[i]!.lane!.port.postMessage({ t: 'snapshot', seq, version, path: p, at } satisfies LaneOp);
      }
      this.opts.log('info', `re-seeding ${want.map((i) => this.dests[i]!.shown).join(', ')} with a snapshot of the node's database at version ${version}`);
    } catch (e) {
      // not this write's concern: k other destinations may still hold it; tried again at the next write
      this.opts.log('warn', `could not snapshot ${this.opts.dbPath} to re-seed a destination: ${(e as Error).message}; trying again at the next write`);
    } finally {
      rmSync(tmp, { force: true });
    }
  }
}
