import type { Socket } from 'node:net';
import { HEADER_SIZE, packetName, ProtocolError } from './protocol.js';
import { LazyTimer } from '../lazy-timer.js';

/**
 * Reads packets from a socket with a deadline on every read and bounded buffering: the socket is
 * paused while more than HIGH_WATER bytes wait unread, so a peer that sends faster than we store
 * cannot grow our memory. Large payloads (snapshots) are consumed as a stream of chunks.
 */

const HIGH_WATER = 1 << 20;

/** The server refused the operation, or our side cannot proceed (no key): retrying cannot help. */
export class RefusedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RefusedError';
  }
}

export class TimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TimeoutError';
  }
}

export class Conn {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private ended = false;
  private failure: Error | null = null;
  private wake: (() => void) | null = null;
  /** the current wait's deadline (Infinity: none, or no limit) */
  private deadline = Infinity;
  /** one timer for every wait's deadline, checked when it fires (src/backends/lazy-timer.ts) */
  private readonly timer = new LazyTimer(() => this.onTimer());

  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- each event's own signature
  private readonly listeners: Array<[string, (...args: any[]) => void]>;

  constructor(
    readonly socket: Socket,
    /** names the peer in error messages */
    readonly peer: string,
  ) {
    this.listeners = [
      ['data', (d: Buffer) => {
        this.chunks.push(d);
        this.buffered += d.length;
        if (this.buffered > HIGH_WATER) socket.pause();
        this.notify();
      }],
      ['end', () => {
        this.ended = true;
        this.notify();
      }],
      ['close', () => {
        this.ended = true;
        this.notify();
      }],
      ['error', (e: Error) => {
        this.failure ??= e;
        this.notify();
      }],
    ];
    for (const [ev, f] of this.listeners) socket.on(ev, f);
  }

  /**
   * Hands the socket over to another reader (TLS after a SOCKS5 handshake). Nothing may be buffered:
   * the peer sends nothing until it hears from the new layer.
   */
  detach(): Socket {
    if (this.buffered > 0) throw new ProtocolError(`${this.peer}: ${this.buffered} unexpected bytes before TLS`);
    for (const [ev, f] of this.listeners) this.socket.removeListener(ev, f);
    this.disarm();
    return this.socket;
  }

  private notify(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Waits until at least one byte is buffered, the stream ended, or the deadline passed. */
  private async waitData(deadline: number, what: string): Promise<void> {
    while (this.buffered === 0) {
      if (this.failure) throw this.failure;
      if (this.ended) throw new ProtocolError(`${this.peer}: connection closed while reading ${what} (premature end of stream)`);
      if (deadline - Date.now() <= 0) throw new TimeoutError(`${this.peer}: no data for ${what} within the time limit`);
      if (this.socket.isPaused()) this.socket.resume();
      this.deadline = deadline;
      // a wait keeps the process alive through its socket, which is reading: the timer must not keep an idle one
      this.timer.arm(deadline, false);
      await new Promise<void>((res) => (this.wake = res));
      this.deadline = Infinity;
    }
  }

  /** The wait whose deadline passed is woken (it throws the TimeoutError); a later deadline re-arms. */
  private onTimer(): void {
    if (this.deadline === Infinity) return;
    if (Date.now() >= this.deadline) this.notify();
    else this.timer.arm(this.deadline, false);
  }

  private disarm(): void {
    this.timer.clear();
  }

  private take(max: number): Buffer {
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length <= max) {
      this.chunks.shift();
      out = first;
    } else {
      out = first.subarray(0, max);
      this.chunks[0] = first.subarray(max);
    }
    this.buffered -= out.length;
    if (this.buffered <= HIGH_WATER && this.socket.isPaused()) this.socket.resume();
    return out;
  }

  /** Exactly `n` bytes, all arriving before `timeoutMs` has passed. */
  async readExact(n: number, timeoutMs: number, what: string): Promise<Buffer> {
    if (n === 0) return Buffer.alloc(0);
    // the common case: all of it in the first chunk (a packet arrives whole on a quiet connection)
    if (this.buffered > 0 && this.chunks[0]!.length >= n) return this.take(n);
    const deadline = Date.now() + timeoutMs;
    const parts: Buffer[] = [];
    let got = 0;
    while (got < n) {
      await this.waitData(deadline, what);
      const b = this.take(n - got);
      parts.push(b);
      got += b.length;
    }
    return parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
  }

  /** Streams `n` bytes to `sink` in chunks; each chunk must arrive within `timeoutMs` of the previous one. */
  async readStream(n: number, timeoutMs: number, what: string, sink: (chunk: Buffer) => Promise<void> | void): Promise<void> {
    let left = n;
    while (left > 0) {
      await this.waitData(Date.now() + timeoutMs, what);
      const b = this.take(Math.min(left, 1 << 20));
      left -= b.length;
      await sink(b);
    }
  }

  /**
   * The next packet's header. `idleMs`: how long to wait for its first byte (null: forever, for a server
   * waiting on an idle node); once it started, the rest of the header must follow within `timeoutMs`.
   */
  async readHeader(idleMs: number | null, timeoutMs: number): Promise<{ type: number; length: number } | null> {
    if (!(await this.waitFirst(idleMs))) return null;
    const h = await this.readExact(HEADER_SIZE, timeoutMs, 'a packet header');
    return { type: h.readUInt8(0), length: h.readUInt32BE(1) };
  }

  /** Waits for a packet's first byte (readHeader's `idleMs`); false: the stream ended before one (idleMs null only). */
  private async waitFirst(idleMs: number | null): Promise<boolean> {
    if (this.buffered > 0) return true;
    if (idleMs !== null) {
      await this.waitData(Date.now() + idleMs, 'the next packet');
      return true;
    }
    while (this.buffered === 0) {
      if (this.failure) throw this.failure;
      if (this.ended) return false;
      if (this.socket.isPaused()) this.socket.resume();
      await new Promise<void>((res) => (this.wake = res));
    }
    return true;
  }

  /** The next packet if the first buffered chunk holds all of it (and it is within `maxPayload`), else null. */
  private takeWhole(maxPayload: number): { type: number; payload: Buffer } | null {
    const c = this.chunks[0];
    if (c === undefined || c.length < HEADER_SIZE) return null;
    const length = c.readUInt32BE(1);
    if (length > maxPayload || c.length < HEADER_SIZE + length) return null;
    const type = c[0]!;
    this.take(HEADER_SIZE);
    return { type, payload: length === 0 ? Buffer.alloc(0) : this.take(length) };
  }

  /** A whole packet whose payload must fit `maxPayload`. */
  async readPacket(idleMs: number | null, timeoutMs: number, maxPayload: number): Promise<{ type: number; payload: Buffer } | null> {
    // the common case, a small answer that arrived in one piece, without the header-then-payload steps
    if (this.buffered > 0 || (await this.waitFirst(idleMs))) {
      const whole = this.takeWhole(maxPayload);
      if (whole !== null) return whole;
    }
    const h = await this.readHeader(idleMs, timeoutMs);
    if (h === null) return null;
    if (h.length > maxPayload) {
      throw new ProtocolError(`${this.peer}: ${packetName(h.type)} packet of ${h.length} bytes is larger than the limit of ${maxPayload}`);
    }
    return { type: h.type, payload: await this.readExact(h.length, timeoutMs, `a ${packetName(h.type)} payload`) };
  }

  /**
   * Writes one packet in one write and waits until the kernel took it (back-pressure), at most
   * `timeoutMs`: a peer that stops reading must not hold us forever.
   */
  async write(buf: Buffer, timeoutMs: number): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.socket.destroyed || this.ended) throw new ProtocolError(`${this.peer}: connection closed`);
    let done: ((e?: Error | null) => void) | null = null;
    let result: Error | null | undefined;
    this.socket.write(buf, (e) => {
      if (done !== null) done(e);
      else result = e ?? null;
    });
    // the common case, a small packet on an idle socket: the kernel took it within write() (nothing left
    // queued), so no timer and no wait; should it fail after all, the socket's error ends the read of the answer
    if (this.socket.writableLength === 0 && result === undefined) return;
    await new Promise<void>((res, rej) => {
      const finish = (e?: Error | null): void => {
        clearTimeout(t);
        if (e) rej(e);
        else res();
      };
      const t = setTimeout(() => rej(new TimeoutError(`${this.peer}: the peer did not take our data within the time limit`)), timeoutMs);
      if (result !== undefined) finish(result);
      else done = finish;
    });
  }

  close(): void {
    this.disarm();
    this.socket.destroy();
  }
}
