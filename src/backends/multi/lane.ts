import { workerData, type MessagePort } from 'node:worker_threads';
import type { BackupWriter } from '../backend.js';
import { openWriter } from '../open.js';
import { redact } from '../postgres/url.js';
import { UrlError } from '../url.js';
import type { KeyLike } from '../../crypto/backup-crypt.js';
import { serialDiff, u32 } from '../../engine/versions.js';
import { applyChange, applySnapshot, ForeignError, GapError, removeQuietly } from './apply.js';
import { compactDestination, type DestCompaction, type Outcome } from './compact-dest.js';
import { ThreadFileGate } from '../../compact/thread-gate.js';
import { catchUpFromPeers, type Peer } from './catch-up.js';
import { isReopenable } from '../../compact/live.js';
import { compareIdentity, destinationIdentity, replacedMessage } from './identity.js';
import {
  ackSlot,
  attachShared,
  DestState,
  F,
  fSlot,
  G,
  gSlot,
  nowMs,
  STATE_NAMES,
  recordLatency,
  ring,
  snapSlot,
  type LaneNote,
  type LaneOp,
  type SharedBlock,
} from './shared.js';

/**
 * One destination of a set, in its own thread: it takes every write the main thread hands it, in order,
 * acknowledges each through shared memory once its writer returned (durable), and when the destination
 * is unreachable keeps the writes in a bounded queue and replays them when it is back (catch-up). A queue
 * that outgrows its bound, or a destination found behind, rolled back or replaced, asks the main thread
 * for a snapshot of the node's database (re-seed) and drops writes until it arrives: everything before
 * the snapshot is in it.
 */

export interface LaneSetup {
  index: number;
  n: number;
  url: string;
  cwd: string;
  segmentBytes?: number;
  remoteTimeoutMs: number;
  shared: { ints: SharedArrayBuffer; f: SharedArrayBuffer };
  port: MessagePort;
  /** the version this destination was last known to hold (backup state file), to detect a rollback */
  knownHead: number | null;
  /** its backup id recorded in the state file (identity.ts), to detect a replacement */
  knownId: string | null;
  /** the set's key (backup.lock "encrypt"), as a plain Uint8Array across the thread boundary; never logged */
  key: { key: Uint8Array; kind: string; fingerprint: string } | null;
  /** start in NeedsSnapshot (a local destination whose write failed on the main thread) */
  needSnapshot: boolean;
  maxQueueBytes: number;
  /** the set's other file destinations, which a lagging destination catches up from (catch-up.ts) */
  peers: Array<{ index: number; url: string }>;
}

const setup = workerData as LaneSetup;
const port = setup.port;
const s: SharedBlock = attachShared(setup.n, setup.shared);
const i = setup.index;
/** the URL as logs and status show it (a PostgreSQL password redacted) */
const shown = redact(setup.url);
const key: KeyLike | null = setup.key ? { key: Buffer.from(setup.key.key), kind: setup.key.kind, fingerprint: setup.key.fingerprint } : null;

let writer: BackupWriter | null = null;
/** a file destination's writer goes through this gate, which compacts it online (compact/thread-gate.ts); null for others */
let gate: ThreadFileGate | null = null;
/** online compactions of this file still running (at most one): the file is not reopened meanwhile */
let onlineCompactions = 0;
let queue: Array<Extract<LaneOp, { t: 'change' | 'snapshot' }>> = [];
let queuedBytes = 0;
let state: DestState = DestState.Opening;
/** the head this destination held after its last acknowledged write: a reopened one below it was rolled back */
let expectHead: number | null = setup.knownHead;
/** the backup id it must keep showing (null: none recorded yet, or its format has none) */
let knownId: string | null = setup.knownId;
let closing = false;
let retryMs = 250;
let retryTimer: NodeJS.Timeout | null = null;
let downSince: number | null = null;
/** backup-compact is compacting this destination: writes queue, none is applied */
let compacting = false;

function note(n: LaneNote): void {
  port.postMessage(n);
  ring(s);
}

function log(level: 'info' | 'warn' | 'error', message: string, error?: string): void {
  note({ t: 'log', level, message: `destination ${shown}: ${message}`, ...(error !== undefined ? { error } : {}) });
}

function setState(st: DestState): void {
  state = st;
  s.f[fSlot(i, F.STATE)] = st;
}

function setQueued(): void {
  s.f[fSlot(i, F.QUEUED)] = queue.length;
}

function opBytes(op: LaneOp): number {
  if (op.t !== 'change') return 0;
  let b = 64;
  for (const st of op.statements) b += st.length;
  return b;
}

function dropQueue(): void {
  for (const op of queue) if (op.t === 'snapshot') removeQuietly(op.path);
  queue = [];
  queuedBytes = 0;
  setQueued();
}

function needSnapshot(why: string, level: 'warn' | 'error'): void {
  dropQueue();
  setState(DestState.NeedsSnapshot);
  Atomics.store(s.ints, snapSlot(s.n, i), 1);
  log(level, `${why}; it is re-seeded with a snapshot of the node's database at the next database write, and is not counted for acknowledgements until then`);
}

function refuse(why: string): void {
  dropQueue();
  setState(DestState.Refused);
  s.f[fSlot(i, F.UNTRUSTED_SEEN)] = 1;
  log('error', `NOT TRUSTED: ${why}. It takes no more writes in this run; check what happened to it, move it aside and re-create it (docs/destinations.md)`);
}

function onOp(op: LaneOp): void {
  if (op.t === 'compact') {
    // the set's compaction (compact-set.ts) says when it is this destination's turn, on this port
    op.port.on('message', () => void compactTurn(op.port, op.history));
    return;
  }
  if (op.t === 'close') {
    closing = true;
    if (retryTimer !== null) clearTimeout(retryTimer);
    dropQueue();
    try {
      writer?.close();
    } catch {
      // closing after a failure: nothing more to save
    }
    writer = null;
    note({ t: 'closed' });
    port.close();
    return;
  }
  if (state === DestState.Refused) {
    if (op.t === 'snapshot') removeQuietly(op.path);
    return;
  }
  if (state === DestState.NeedsSnapshot) {
    // everything before the snapshot is in it; the snapshot starts a new queue
    if (op.t === 'change') return;
    setState(writer === null ? DestState.Down : DestState.CatchingUp);
  }
  queue.push(op);
  queuedBytes += opBytes(op);
  setQueued();
  if (queuedBytes > setup.maxQueueBytes) {
    needSnapshot(`${queue.length} writes (${queuedBytes} bytes) waited while it was unreachable, more than it may keep in memory`, 'warn');
    return;
  }
  pump();
}

/** Writes the oldest queued write and publishes its acknowledgement; false when it failed (handled). */
function applyNext(w: BackupWriter): boolean {
  const op = queue[0]!;
  try {
    let bytes = 0;
    if (op.t === 'change') bytes = applyChange(w, op.version, op.statements, op.repeat);
    else {
      applySnapshot(w, op.version, op.path);
      removeQuietly(op.path);
      s.f[fSlot(i, F.HEAD_SNAPSHOT)] = 1;
    }
    if (op.t === 'change') s.f[fSlot(i, F.HEAD_SNAPSHOT)] = 0;
    queue.shift();
    queuedBytes -= opBytes(op);
    expectHead = w.head();
    s.f[fSlot(i, F.HEAD)] = expectHead;
    s.f[fSlot(i, F.BYTES)]! += bytes;
    s.f[fSlot(i, F.WRITES)]! += 1;
    s.f[fSlot(i, F.LAST_OP_AT)] = op.at;
    recordLatency(s, i, (nowMs() - op.at) * 1000);
    Atomics.store(s.ints, ackSlot(i), op.seq);
    ring(s);
    return true;
  } catch (e) {
    if (e instanceof GapError && op.t === 'change' && catchUp(op)) return true;
    onFailure(e as Error);
    return false;
  }
}

function pump(): void {
  if (writer === null || closing || compacting) return;
  while (queue.length > 0) if (!applyNext(writer)) return;
  setQueued();
  topUp();
  if (state !== DestState.Live) {
    setState(DestState.Live);
    if (downSince !== null) {
      log('info', `caught up after ${Math.round((Date.now() - downSince) / 1000)} s: holds version ${expectHead} again, like the others`);
      downSince = null;
    }
  }
}

/** the write whose gap a catch-up was tried for: tried once, then a snapshot */
let catchUpTried: number | null = null;

/**
 * `op` found this destination behind: the versions it lacks are replayed from a live file destination
 * of the set that holds them (catch-up.ts), instead of a snapshot of the whole database. True when it
 * now sits right below `op`.
 */
function catchUp(op: Extract<LaneOp, { t: 'change' }>): boolean {
  if (writer === null || setup.peers.length === 0 || catchUpTried === op.seq) return false;
  catchUpTried = op.seq;
  const target = op.repeat ? op.version : u32(op.version - 1);
  const from = writer.isEmpty() ? null : writer.head();
  const peers: Peer[] = setup.peers
    .filter((p) => s.f[fSlot(p.index, F.STATE)] === DestState.Live)
    .map((p) => ({ url: p.url, head: s.f[fSlot(p.index, F.HEAD)]! }));
  const r = catchUpFromPeers(writer, peers, target, setup.cwd, key, setup.cwd);
  s.f[fSlot(i, F.HEAD)] = writer.isEmpty() ? 0 : writer.head();
  if (r.from === null) {
    log('info', `behind at version ${from ?? 'none'}, and no other destination could give it versions up to ${target} (${r.why.join('; ') || 'no live file destination'})`);
    return false;
  }
  log('info', `was behind at version ${from}: caught up to version ${target} with ${r.entries} entries from ${r.from} (no snapshot needed)`);
  return true;
}

let topUpDue = false;

/**
 * Once the queue is drained (its acknowledgements published): tops up the file's reserved space, as the
 * lone writer does between hooks (V2Writer.prepare), so the next appends land in allocated, written
 * blocks. Rare (once per 1-16 MiB of records); a failure (a full disk) only means appends grow the file.
 */
function topUp(): void {
  if (topUpDue || gate === null) return;
  topUpDue = true;
  setImmediate(() => {
    topUpDue = false;
    if (writer === null || closing || compacting || queue.length > 0) return;
    try {
      writer.prepare?.();
    } catch {
      // its next write says what is wrong
    }
  });
}

function onFailure(e: Error): void {
  if (e instanceof GapError) return needSnapshot(e.message, 'warn');
  if (e instanceof ForeignError) return refuse(e.message);
  s.f[fSlot(i, F.ERRORS)]! += 1;
  const first = state !== DestState.Down;
  setState(DestState.Down);
  downSince ??= Date.now();
  if (first) log('warn', `a write failed (${e.message}); retrying in the background while the other destinations take the writes`, e.message);
  else note({ t: 'log', level: 'info', message: '', error: e.message });
  try {
    writer?.close();
  } catch {
    // the connection is already gone
  }
  writer = null;
  gate = null;
  scheduleOpen();
}

function scheduleOpen(): void {
  if (closing || retryTimer !== null) return;
  retryTimer = setTimeout(() => {
    retryTimer = null;
    open();
  }, retryMs);
  retryMs = Math.min(retryMs * 2, 5000);
}

function open(): void {
  // a file's online compaction still running owns the swap: a new writer would not take its mutex
  if (onlineCompactions > 0) {
    scheduleOpen();
    return;
  }
  const firstOpen = state === DestState.Opening;
  let w: BackupWriter;
  let id: string | null;
  try {
    w = openWriter(setup.url, setup.cwd, {
      segmentBytes: setup.segmentBytes,
      remoteTimeoutMs: setup.remoteTimeoutMs,
      log: (level, message) => log(level, message),
      key,
    });
    try {
      id = destinationIdentity(setup.url, setup.cwd, w);
    } catch (e) {
      try {
        w.close();
      } catch {
        // the connection that failed to answer
      }
      throw e;
    }
  } catch (e) {
    const msg = (e as Error).message;
    if (key !== null && e instanceof UrlError) {
      // this kind of destination takes no key (open.ts says so before connecting): retrying changes nothing
      note({ t: 'open-failed', error: msg, keyRefused: true });
      setState(DestState.Refused);
      return;
    }
    s.f[fSlot(i, F.ERRORS)]! += 1;
    if (firstOpen) {
      note({ t: 'open-failed', error: msg });
      log('warn', `cannot be opened (${msg}); retrying in the background`, msg);
      setState(DestState.Down);
      downSince ??= Date.now();
    } else note({ t: 'log', level: 'info', message: '', error: msg });
    scheduleOpen();
    return;
  }
  gate = isReopenable(w) ? new ThreadFileGate(w, (level, message) => log(level, message)) : null;
  writer = gate?.writer ?? w;
  retryMs = 250;
  const head = w.head();
  const empty = w.isEmpty();
  s.f[fSlot(i, F.HEAD)] = head;
  s.f[fSlot(i, F.HEAD_SNAPSHOT)] = w.headIsSnapshot() ? 1 : 0;
  for (const p of w.repaired()) log('warn', `repaired on open: ${p.message}`);
  const same = compareIdentity(knownId ?? undefined, id, empty);
  if (same === 'replaced') {
    s.f[fSlot(i, F.UNTRUSTED_SEEN)] = 1;
    if (firstOpen) note({ t: 'opened', head, empty, headIsSnapshot: w.headIsSnapshot(), format: w.format, trusted: false });
    refuse(replacedMessage(knownId!, id!));
    return;
  }
  if (same === 'recreated') log('warn', `re-created (a new, empty backup id ${id})`);
  if (id !== null) {
    knownId = id;
    note({ t: 'identity', id });
  }
  let trusted = true;
  if (expectHead !== null && (empty || serialDiff(head, expectHead) < 0)) {
    trusted = false;
    s.f[fSlot(i, F.UNTRUSTED_SEEN)] = 1;
    const was = `it held version ${expectHead}, and now holds ${empty ? 'nothing' : `version ${head}`}`;
    if (firstOpen) note({ t: 'opened', head, empty, headIsSnapshot: w.headIsSnapshot(), format: w.format, trusted });
    needSnapshot(`ROLLED BACK OR REPLACED BY AN OLDER COPY: ${was}. Its contents are not trusted`, 'error');
    return;
  }
  if (firstOpen) note({ t: 'opened', head, empty, headIsSnapshot: w.headIsSnapshot(), format: w.format, trusted });
  if (setup.needSnapshot && firstOpen) {
    needSnapshot('its last write on the main thread failed', 'warn');
    return;
  }
  if (state === DestState.NeedsSnapshot) return;
  if (!firstOpen) log('info', `reachable again at version ${head}; replaying ${queue.length} queued write(s)`);
  setState(queue.length > 0 || !firstOpen ? DestState.CatchingUp : DestState.Live);
  pump();
}

/** How long a destination's turn waits for it (and, taken out, enough others) to be live (e.g. lanes still opening) before skipping. */
const TURN_WAIT_MS = 10_000;

/** Destinations other than this one that are live now. */
function othersLive(): number {
  let n = 0;
  for (let j = 0; j < s.n; j++) if (j !== i && s.f[fSlot(j, F.STATE)] === DestState.Live) n++;
  return n;
}

/**
 * While this destination is being compacted (its writes queued): writes its queued changes up to
 * `version`, for an encrypted clnvault:// one whose compaction sends a copy of the database at that version
 * (compact-dest.ts). A re-seed snapshot in the way is not crossed ('failed').
 */
function advanceTo(version: number): 'reached' | 'waiting' | 'failed' {
  for (;;) {
    if (writer === null || closing) return 'failed';
    if (!writer.isEmpty() && writer.head() === version) return 'reached';
    const op = queue[0];
    if (op === undefined) return 'waiting';
    if (op.t !== 'change' || serialDiff(op.version, version) > 0) return 'failed';
    if (!applyNext(writer)) return 'failed';
    setQueued();
  }
}

/**
 * This destination's turn in backup-compact. A file is compacted online: its writes go on and are
 * acknowledged meanwhile (compact/thread-gate.ts), whatever "ack" is. Any other destination compacts on this
 * thread and is taken out of the acknowledgement count for that time (its writes queue), so only when
 * the others still make up "ack": writes never wait for a compaction. Answers on `reply` and tells the
 * main thread (status).
 */
async function compactTurn(reply: MessagePort, history: number): Promise<void> {
  const k = s.f[gSlot(s.n, G.K)]!;
  const online = (): boolean => gate !== null;
  const ready = (): boolean => state === DestState.Live && (online() || othersLive() >= k);
  // taken out with "ack": all, no destination may ever be: nothing to wait for
  const end = !online() && s.n - 1 < k ? 0 : Date.now() + TURN_WAIT_MS;
  while (!ready() && Date.now() < end && !closing) await new Promise((r) => setTimeout(r, 100));
  let outcome: Outcome;
  if (closing) outcome = { result: 'skipped', reason: 'the plugin is stopping' };
  else if (state !== DestState.Live || writer === null) {
    outcome = { result: 'skipped', reason: `it is ${STATE_NAMES[state] ?? 'not live'}: a destination is compacted only while it holds every acknowledged write` };
  } else if (online()) {
    log('info', 'compacting online; it keeps taking and acknowledging writes meanwhile');
    onlineCompactions++;
    try {
      outcome = await compactDestination(writer, gate, setup.url, setup.cwd, history, key, (level, message) => log(level, message));
    } catch (e) {
      outcome = { result: 'failed', reason: (e as Error).message };
    } finally {
      onlineCompactions--;
    }
  } else if (othersLive() < k) {
    outcome = {
      result: 'skipped',
      reason:
        `only ${othersLive()} other destination(s) are live and "ack" is ${k}: taking this one out for its compaction would hold writes up; ` +
        `compact it with 'clnvault compact URL' while lightningd is stopped, or run backup-compact again when the others are back`,
    };
  } else {
    compacting = true;
    setState(DestState.Compacting);
    log('info', 'compacting; its writes wait in its queue meanwhile and it is not counted for acknowledgements');
    try {
      outcome = await compactDestination(writer, null, setup.url, setup.cwd, history, key, (level, message) => log(level, message), advanceTo);
    } catch (e) {
      outcome = { result: 'failed', reason: (e as Error).message };
    }
    compacting = false;
    expectHead = writer?.head() ?? expectHead;
    if ((state as DestState) === DestState.Compacting) setState(queue.length > 0 ? DestState.CatchingUp : DestState.Live);
    pump();
  }
  const full: DestCompaction = { index: i, url: shown, ...outcome, at: Date.now() };
  note({ t: 'compacted', outcome: full });
  reply.postMessage(full);
  reply.close();
}

port.on('message', onOp);
open();
