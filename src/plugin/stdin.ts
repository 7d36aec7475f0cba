import { readSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { OnReadOpts, SocketConstructorOpts } from 'node:net';
import { FrameError, MessageSplitter } from './framing.js';

/**
 * Reads lightningd's requests from fd 0 and hands complete messages to `onMessage`.
 *
 * Between db_write calls the plugin has nothing else to do, so the main thread simply blocks in
 * read(2): that is the leanest wake-up there is (no epoll round, no event-loop turn), and every
 * db_write waits on it. If fd 0 turns out to be non-blocking (EAGAIN), it falls back to an
 * event-loop socket that reads straight into the same buffer.
 *
 * While blocked, the event loop does not run: signal handlers, timers and promises stay parked.
 * Nothing in the plugin needs them, and SIGTERM keeps its default action (every acknowledged write is
 * already on disk, so dying at once is safe). Background work (compaction) lives in worker threads.
 */
export interface StdinHandlers {
  onMessage: (buf: Buffer, start: number, end: number) => void;
  /** end of input; `leftover` holds an unfinished message, if any */
  onEnd: (leftover: Buffer) => void;
  onFrameError: (e: FrameError) => void;
}

const STDIN = 0;
const READ_SIZE = 64 * 1024;

function splitterFor(h: StdinHandlers): { splitter: MessageSplitter; commit: (n: number) => boolean } {
  const splitter = new MessageSplitter();
  const commit = (n: number): boolean => {
    try {
      splitter.commit(n, h.onMessage);
      return true;
    } catch (e) {
      if (e instanceof FrameError) {
        h.onFrameError(e);
        return false;
      }
      throw e;
    }
  };
  return { splitter, commit };
}

/**
 * Reads fd 0 on the event loop from the start: for a plugin whose hook waits on the network (a lone remote
 * destination), the event loop must run between and during hooks; libuv makes fd 0 non-blocking for that.
 */
export function serveStdinAsync(h: StdinHandlers): void {
  const { splitter, commit } = splitterFor(h);
  serveAsync(splitter, commit, h);
}

export function serveStdin(h: StdinHandlers): void {
  const { splitter, commit } = splitterFor(h);
  for (;;) {
    const space = splitter.writable(READ_SIZE);
    let n: number;
    try {
      n = readSync(STDIN, space, 0, space.length, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN' || code === 'EWOULDBLOCK') {
        serveAsync(splitter, commit, h);
        return;
      }
      if (code === 'EINTR') continue;
      h.onEnd(splitter.leftover());
      return;
    }
    if (n === 0) {
      h.onEnd(splitter.leftover());
      return;
    }
    if (!commit(n)) return;
  }
}

function serveAsync(splitter: MessageSplitter, commit: (n: number) => boolean, h: StdinHandlers): void {
  // onread: libuv reads straight into the splitter's buffer, skipping the stream machinery and its
  // per-chunk allocations. @types/node 20 lacks the field, hence the widened type.
  const opts: SocketConstructorOpts & { onread: OnReadOpts } = {
    fd: STDIN,
    readable: true,
    writable: false,
    onread: {
      buffer: () => splitter.writable(READ_SIZE),
      callback: (n: number) => commit(n),
    },
  };
  // node:net (and the stream machinery behind it) is loaded only here: a blocking stdin never needs it,
  // and loading it would add to every start-up.
  const { Socket } = createRequire(import.meta.url)('node:net') as typeof import('node:net');
  const sock = new Socket(opts);
  let ended = false;
  const end = () => {
    if (ended) return;
    ended = true;
    h.onEnd(splitter.leftover());
  };
  sock.on('end', end);
  sock.on('error', end);
}
