#!/usr/bin/env node
import { isAscii, isUtf8 } from 'node:buffer';
import { resolve } from 'node:path';
import { DbWriteHandler } from './db-write.js';
import { log, sendContinue, sendError, sendNotification, sendResult, shareStdout, type RpcId } from './output.js';
import { MultiWriter } from '../backends/multi/writer.js';
import { DESTINATION_NOTIFICATION } from './manifest.js';
import { prepareBackup, runByHandText, setRemoteLog, startedByLightningd, type Startup } from './startup.js';
import { manifest, statusResult } from './manifest.js';
import { serveStdin, serveStdinAsync, type StdinHandlers } from './stdin.js';
import { createRequire } from 'node:module';
import type { MessagePort } from 'node:worker_threads';
import type { LogLevel } from './output.js';
import { isReopenable, PluginCompaction } from './compaction.js';
import { readCompactionConfig } from '../compact/config.js';

/**
 * The executable lightningd runs (no arguments, cwd = network directory). It opens the backup before
 * reading anything from lightningd, then serves JSON-RPC on stdin/stdout.
 */

async function main(): Promise<void> {
  if (!startedByLightningd()) {
    process.stderr.write(`${runByHandText(resolve(process.argv[1] ?? 'clnvault-plugin'))}\n`);
    process.exitCode = 2;
    return;
  }
  const startup = await prepareBackup(process.cwd());
  // Online compaction: every write goes through the wrapper, which coordinates with the worker thread.
  let compaction: PluginCompaction | null = null;
  if (startup.writer !== null && isReopenable(startup.writer)) {
    const { config, problems } = readCompactionConfig(process.cwd());
    for (const p of problems) startup.logs.push({ level: 'warn', message: p });
    compaction = new PluginCompaction(startup.writer, process.cwd(), config, (level, msg) => log(level, `clnvault: ${msg}`), startup.encryption?.key ?? null);
    startup.writer = compaction.writer;
  }
  // a lone remote destination is driven from this thread's event loop (startup.remote): see serveRemote below
  const remote = startup.remote;
  const handler = new DbWriteHandler(
    remote ?? startup.writer,
    startup.error,
    (level, msg) => log(level, `clnvault: ${msg}`),
    { url: startup.url, netDir: process.cwd() },
    startup.deferredRebaseline ? { rebaseline: startup.deferredRebaseline, done: (r) => (startup.rebaselined = r) } : null,
  );
  let pendingLogs: Startup['logs'] | null = startup.logs;
  const multi = startup.writer instanceof MultiWriter ? startup.writer : null;
  // the lanes' news (logs, a destination falling behind or back) is taken at each message: this
  // thread's event loop does not run; notifications wait until lightningd has read the manifest
  const pollMulti = (): void => {
    if (multi === null || pendingLogs !== null) return;
    multi.drain();
    const stopped = multi.compactionPoll();
    if (stopped !== null && stopped.id !== null) sendError(stopped.id, -32000, stopped.message);
    for (const c of multi.healthChanges()) {
      sendNotification(DESTINATION_NOTIFICATION, { ...c.report, event: c.healthy ? 'recovered' : 'behind', k: multi.k });
      log(
        c.healthy ? 'info' : 'warn',
        `clnvault: destination ${c.report.url} ${c.healthy ? 'recovered: it holds every acknowledged write again' : `fell behind (${c.report.state})`}`,
      );
    }
  };

  const dispatch = (buf: Buffer, start: number, end: number): void => {
    if (importancePort !== null) drainImportance();
    pollMulti();
    // a compaction worker that died with a request outstanding is only seen from here
    compaction?.poll();
    let msg: { id?: unknown; method?: unknown; params?: unknown };
    // toString() would turn bytes that are not UTF-8 into U+FFFD: a statement backed up that way differs
    // from the one lightningd commits, so a db_write must be refused rather than stored mangled
    // Pure ASCII (what lightningd sends in practice) is valid UTF-8 and decodes faster as latin1, to the
    // same string.
    const bytes = buf.subarray(start, end);
    const ascii = isAscii(bytes);
    const utf8 = ascii || isUtf8(bytes);
    try {
      msg = JSON.parse(buf.toString(ascii ? 'latin1' : 'utf8', start, end));
    } catch (e) {
      log('error', `clnvault: ignoring a message that is not valid JSON (${end - start} bytes): ${(e as Error).message}`);
      return;
    }
    if (typeof msg !== 'object' || msg === null || Array.isArray(msg)) {
      log('error', 'clnvault: ignoring a JSON-RPC message that is not an object');
      return;
    }
    const id = msg.id;
    const hasId = typeof id === 'string' || typeof id === 'number';
    if (typeof msg.method !== 'string') return; // a response or junk: the plugin sends no requests
    if (!hasId) return; // notifications: none subscribed
    const rid = id as RpcId;
    if (remote !== null) {
      // one message at a time, as on the blocking path: lightningd waits for the db_write answer anyway, and
      // nothing else may use the connection to the server meanwhile (backup-compact) or answer out of order
      const m = msg as { method: string; params?: unknown };
      const len = end - start;
      if (busy) waiting.push(() => serveRemote(rid, m, utf8, len));
      else serveRemote(rid, m, utf8, len);
      return;
    }
    switch (msg.method) {
      case 'db_write': {
        const r = utf8
          ? handler.handle(msg.params)
          : handler.refuse(`a db_write message (${end - start} bytes) that is not valid UTF-8: its statements cannot be stored exactly`);
        if (r.ok) sendContinue(rid);
        else sendError(rid, -32000, r.message);
        pollMulti();
        // answered: lightningd is not waiting on us now, so the reserve ahead of the writer is topped up here
        // (rarely: once per RESERVE_MIN..RESERVE_MAX bytes of records), never inside a hook's latency
        startup.writer?.prepare?.();
        return;
      }
      case 'getmanifest':
      case 'clnvault-status':
        serveLocal(rid, msg);
        return;
      case 'init':
        serveLocal(rid, msg);
        compaction?.onInit();
        multi?.enableAutoCompaction(readCompactionConfig(process.cwd()).config, (sab, abandoned) => shareStdout(new Int32Array(sab), 0, abandoned));
        // the first db_write should already find reserved space
        startup.writer?.prepare?.();
        return;
      case 'backup-compact': {
        const remote = startup.writer as { compactRemote?: () => string } | null;
        if (typeof remote?.compactRemote === 'function') {
          // a socket: server compacts its own file and answers its statistics
          try {
            sendResult(rid, serverStats(remote.compactRemote()));
          } catch (e) {
            sendError(rid, -32000, (e as Error).message);
          }
          return;
        }
        // answered by the compaction worker (several destinations: the set's compaction thread) when it
        // is done; only a refusal is answered here
        const why =
          multi !== null
            ? multi.startCompaction(rid, readCompactionConfig(process.cwd()).config.history, (sab, abandoned) => shareStdout(new Int32Array(sab), 0, abandoned))
            : startup.writer?.format === 'postgresql'
              ? "a postgresql: backup is compacted inside the database while this plugin writes: run 'clnvault compact <backup-url>'"
              : compaction === null
              ? `the backup is not open: ${startup.error ?? 'unknown error'}`
              : compaction.start(rid);
        if (why !== null) sendError(rid, -32000, why);
        return;
      }
      default:
        sendError(rid, -32601, `Method not found: ${msg.method}`);
    }
  };

  /** async mode: a db_write (or backup-compact) awaiting the server; later messages wait in `waiting` */
  let busy = false;
  const waiting: Array<() => void> = [];
  const settle = (): void => {
    busy = false;
    while (!busy && waiting.length > 0) waiting.shift()!();
  };
  const serveRemote = (rid: RpcId, msg: { method: string; params?: unknown }, utf8: boolean, len: number): void => {
    switch (msg.method) {
      case 'db_write': {
        busy = true;
        const pending = utf8
          ? handler.handleAsync(msg.params)
          : Promise.resolve(handler.refuse(`a db_write message (${len} bytes) that is not valid UTF-8: its statements cannot be stored exactly`));
        pending
          .catch((e: unknown) => handler.refuse(`internal error: ${(e as Error).message}`))
          .then((r) => {
            if (r.ok) sendContinue(rid);
            else sendError(rid, -32000, r.message);
            settle();
          });
        return;
      }
      case 'backup-compact': {
        const r = remote!;
        if (typeof r.compactRemote !== 'function') {
          sendError(rid, -32000, "a postgresql: backup is compacted inside the database while this plugin writes: run 'clnvault compact <backup-url>'");
          return;
        }
        const answer = (text: string): void => sendResult(rid, serverStats(text));
        const fail = (e: unknown): void => sendError(rid, -32000, (e as Error).message);
        // the reference's way: COMPACT on the writer's own connection, db_writes waiting until it is answered
        const onWriterConnection = (): void => {
          busy = true;
          r.compactRemote!().then(answer, fail).finally(settle);
        };
        // between db_writes, never inside one: the writer's connection is theirs
        const betweenWrites = (f: () => void): void => {
          if (busy) waiting.push(f);
          else f();
        };
        if (typeof r.compactAside !== 'function' || typeof r.refreshMetadata !== 'function') {
          onWriterConnection();
          return;
        }
        // clnvault server: on a connection of its own while db_writes go on; then the writer's connection
        // learns the compacted backup's entry count (whatever the outcome: the server may have compacted)
        const afterRefresh = (ok: () => void, failed: (e: unknown) => void) => (): void => {
          busy = true;
          r.refreshMetadata!().then(ok, failed).finally(settle);
        };
        r.compactAside().then(
          (text) => betweenWrites(text === null ? onWriterConnection : afterRefresh(() => answer(text), fail)),
          (e: unknown) => betweenWrites(afterRefresh(() => fail(e), () => fail(e))),
        );
        return;
      }
      case 'getmanifest':
      case 'init':
      case 'clnvault-status':
        // nothing here waits on the server: the same answers as the blocking path
        serveLocal(rid, msg);
        return;
      default:
        sendError(rid, -32601, `Method not found: ${msg.method}`);
    }
  };
  const serveLocal = (rid: RpcId, msg: { method?: unknown; params?: unknown }): void => {
    switch (msg.method) {
      case 'getmanifest':
        sendResult(rid, manifest());
        if (pendingLogs) {
          for (const l of pendingLogs) log(l.level, `clnvault: ${l.message}`);
          pendingLogs = null;
          setRemoteLog((level, message) => log(level, `clnvault: ${message}`));
        }
        return;
      case 'init':
        onInit(msg.params);
        sendResult(rid, {});
        return;
      case 'clnvault-status':
        sendResult(rid, statusResult(startup, handler));
        return;
    }
  };

  const shutdown = (code: number): void => {
    if (remote !== null) {
      // closing says goodbye to the server (a PostgreSQL writer gives its lease back and applies a rewind no
      // replacement followed), as the worker path does before exiting; bounded, an unreachable server must not keep us
      const bound = new Promise<void>((r) => setTimeout(r, 5_000).unref());
      void Promise.race([remote.close().catch(() => undefined), bound]).finally(() => process.exit(code));
      return;
    }
    try {
      startup.writer?.close();
    } finally {
      process.exit(code);
    }
  };
  const stdinHandlers: StdinHandlers = {
    onMessage: dispatch,
    onEnd: (rest) => {
      if (rest.length > 0) log('warn', `clnvault: input ended inside a message (${rest.length} bytes ignored)`);
      shutdown(0);
    },
    onFrameError: (e) => {
      log('error', `clnvault: ${e.message}; exiting`);
      shutdown(1);
    },
  };
  // the blocking read(2) is the leanest wait when the hook's work is synchronous (files, several destinations);
  // a lone remote destination needs the event loop running to hear its server, so stdin joins it there
  if (remote !== null) serveStdinAsync(stdinHandlers);
  else serveStdin(stdinHandlers);
}

function onInit(params: unknown): void {
  const p = params as { options?: Record<string, unknown>; configuration?: Record<string, unknown> } | null;
  const opts = p?.options ?? {};
  const dest = opts['backup-destination'];
  if (dest !== undefined && dest !== null && dest !== 'null') {
    log(
      'warn',
      'The `--backup-destination` option is deprecated and will be removed in future versions of the backup plugin. ' +
        'Please remove it from your configuration. The destination is now determined by the `backup.lock` file in the lightning directory',
    );
  }
  startImportanceCheck(p?.configuration ?? {});
}

/** Where the importance worker's answer arrives; polled (the main thread's event loop does not run). */
let importancePort: MessagePort | null = null;

/** Asks lightningd's listconfigs whether we were loaded with important-plugin= (importance.ts), in a worker. */
function startImportanceCheck(configuration: Record<string, unknown>): void {
  if (importancePort !== null) return;
  // loaded here, after start-up: worker_threads costs every lightningd boot a few ms otherwise
  const { MessageChannel, Worker } = workerThreads();
  const { port1, port2 } = new MessageChannel();
  const lightningDir = configuration['lightning-dir'];
  const rpcFile = configuration['rpc-file'];
  try {
    const worker = new Worker(new URL('./importance-worker.js', import.meta.url), {
      workerData: {
        port: port2,
        rpcFile: typeof rpcFile === 'string' ? rpcFile : undefined,
        lightningDir: typeof lightningDir === 'string' ? lightningDir : process.cwd(),
        self: process.argv[1] ?? '',
      },
      transferList: [port2],
    });
    worker.unref();
  } catch (e) {
    log('info', `clnvault: could not check how this plugin was loaded (${(e as Error).message}); make sure it is loaded with important-plugin=`);
    return;
  }
  importancePort = port1;
}

let wt: typeof import('node:worker_threads') | null = null;
function workerThreads(): typeof import('node:worker_threads') {
  return (wt ??= createRequire(import.meta.url)('node:worker_threads') as typeof import('node:worker_threads'));
}

function drainImportance(): void {
  const m = workerThreads().receiveMessageOnPort(importancePort!);
  if (m === undefined) return;
  importancePort!.close();
  importancePort = null;
  const l = (m.message as { log: { level: LogLevel; message: string } | null }).log;
  if (l) log(l.level, l.message);
}

main().catch((e) => {
  try {
    log('error', `clnvault: fatal: ${(e as Error).stack ?? String(e)}`);
  } finally {
    process.exit(1);
  }
});

/** A server's answer to COMPACT: its statistics (JSON, the reference's shape), or the text as it came. */
function serverStats(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}
