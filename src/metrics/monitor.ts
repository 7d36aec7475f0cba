import { closeSync, existsSync, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { createServer } from 'node:http';
import { workerData, type MessagePort } from 'node:worker_threads';
import { attachShared, reportOf } from '../backends/multi/shared.js';
import { readDestState, writeDestState } from '../backends/multi/state.js';
import { DestState, F, fSlot, tidSlot } from '../backends/multi/shared.js';
import { fsyncDir } from '../backends/file/fsutil.js';
import type { MonitorConfig } from '../backends/multi/writer.js';
import { prometheusText } from './prometheus.js';

/**
 * The plugin's monitor thread (the main thread never runs its event loop): keeps the destinations'
 * progress file, serves /metrics on loopback, writes the node_exporter textfile and pings the heartbeat
 * URL while every destination is healthy. It only reads shared memory; the hook never waits for it.
 */

interface MonitorSetup {
  n: number;
  shown: string[];
  shared: { ints: SharedArrayBuffer; f: SharedArrayBuffer };
  statePath: string;
  /** the destinations' backup ids (state.ts), updated by the main thread as lanes see new ones */
  ids: Record<string, string>;
  config: MonitorConfig;
  /** log lines for the plugin to pass on (drained at its next message) */
  port: MessagePort;
}

const setup = workerData as MonitorSetup;
const s = attachShared(setup.n, setup.shared);
const cfg = setup.config;

let ids: Record<string, string> = { ...setup.ids };
setup.port.on('message', (m: { t: string; ids?: Record<string, string> }) => {
  if (m.t === 'ids' && m.ids !== undefined) ids = { ...m.ids };
});
setup.port.unref();
let lastState = '';
function keepState(): void {
  const held = readDestState(setup.statePath, () => {});
  for (let i = 0; i < setup.n; i++) {
    const st = s.f[fSlot(i, F.STATE)]!;
    if (st === DestState.Opening || st === DestState.NeedsSnapshot || st === DestState.Refused) continue;
    held[setup.shown[i]!] = s.f[fSlot(i, F.HEAD)]!;
  }
  const text = JSON.stringify([held, ids]);
  if (text === lastState) return;
  try {
    writeDestState(setup.statePath, held, ids);
    lastState = text;
  } catch {
    // tried again next tick; the plugin writes it at a clean stop too
  }
}

function writeTextfile(path: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    const fd = openSync(tmp, 'w', 0o644);
    try {
      writeSync(fd, prometheusText(s, setup.shown));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
    fsyncDir(path);
  } catch {
    rmSync(tmp, { force: true });
  }
}

function allHealthy(): boolean {
  for (let i = 0; i < setup.n; i++) if (!reportOf(s, i, '', null).healthy) return false;
  return true;
}

let lastBeat = 0;
async function heartbeat(url: string, everyMs: number): Promise<void> {
  if (Date.now() - lastBeat < everyMs || !allHealthy()) return;
  lastBeat = Date.now();
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(Math.min(everyMs, 10_000)) });
    await r.arrayBuffer();
  } catch {
    // the monitor alerts when pings stop: a failed one needs nothing more
  }
}

if (cfg.metrics !== undefined) {
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url !== '/metrics' && req.url !== '/')) {
      res.writeHead(404).end('not found: GET /metrics\n');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }).end(prometheusText(s, setup.shown));
  });
  server.on('error', (e) =>
    setup.port.postMessage({ level: 'error', message: `metrics: cannot listen on ${cfg.metrics!.host}:${cfg.metrics!.port}: ${e.message}` }),
  );
  server.listen(cfg.metrics.port, cfg.metrics.host, () =>
    setup.port.postMessage({ level: 'info', message: `metrics: serving Prometheus text on http://${cfg.metrics!.host}:${cfg.metrics!.port}/metrics` }),
  );
}

/**
 * A lane whose thread ended without running any JavaScript (its heap limit) could not mark itself
 * `error` (thread-shell.ts): found here, so status, metrics and the heartbeat tell the truth even while
 * no db_write comes (the main thread looks too, at each message). Its thread id is negated once seen.
 */
function findSilentDeaths(): void {
  for (let i = 0; i < setup.n; i++) {
    const slot = tidSlot(setup.n, i);
    const tid = Atomics.load(s.ints, slot);
    if (tid <= 0 || existsSync(`/proc/self/task/${tid}`)) continue;
    if (Atomics.compareExchange(s.ints, slot, tid, -tid) === tid) s.f[fSlot(i, F.STATE)] = DestState.Error;
  }
}

let ticks = 0;
const tick = (): void => {
  ticks++;
  findSilentDeaths();
  if (ticks % 5 === 1) keepState();
  if (cfg.textfile !== undefined && ticks % 5 === 1) writeTextfile(cfg.textfile);
  if (cfg.heartbeatUrl !== undefined) void heartbeat(cfg.heartbeatUrl, (cfg.heartbeatIntervalS ?? 60) * 1000);
};
setInterval(tick, 1000);
tick();
