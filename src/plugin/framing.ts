/**
 * lightningd separates JSON-RPC messages on the plugin pipe with "\n\n". Reads can split a message or
 * carry several; this accumulates raw bytes and hands out complete messages without copying more
 * than needed (the hot path parses every db_write through here).
 */

const NL = 0x0a;

export class FrameError extends Error {}

export class MessageSplitter {
  private buf: Buffer;
  private start = 0;
  private end = 0;
  /** where the next search for a separator starts (bytes before it were already searched) */
  private scanned = 0;

  constructor(
    initialSize = 64 * 1024,
    private readonly maxMessage = 512 * 1024 * 1024,
  ) {
    this.buf = Buffer.allocUnsafe(initialSize);
  }

  /** Appends bytes and calls `onMessage` for each complete message (surrounding whitespace trimmed). */
  push(chunk: Uint8Array, onMessage: (buf: Buffer, start: number, end: number) => void): void {
    this.ensure(chunk.length);
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
    this.drain(onMessage);
  }

  /** Space for a reader to fill directly, avoiding a copy; call commit(n) after. */
  writable(min: number): Buffer {
    this.ensure(min);
    return this.buf.subarray(this.end);
  }

  commit(n: number, onMessage: (buf: Buffer, start: number, end: number) => void): void {
    this.end += n;
    this.drain(onMessage);
  }

  /** Bytes of an unfinished message (non-whitespace) left when the stream ends. */
  leftover(): Buffer {
    let s = this.start;
    while (s < this.end && isSpace(this.buf[s]!)) s++;
    return this.buf.subarray(s, this.end);
  }

  private drain(onMessage: (buf: Buffer, start: number, end: number) => void): void {
    for (;;) {
      const from = Math.max(this.scanned, this.start);
      // Bytes past `end` are stale leftovers of earlier messages: search only the live part.
      const sep = this.buf.subarray(0, this.end).indexOf('\n\n', from);
      if (sep < 0 || sep + 1 >= this.end) {
        this.scanned = Math.max(this.start, this.end - 1);
        if (this.end - this.start > this.maxMessage) {
          throw new FrameError(`a message of more than ${this.maxMessage} bytes without the "\\n\\n" separator`);
        }
        break;
      }
      let s = this.start;
      while (s < sep && isSpace(this.buf[s]!)) s++;
      const e = sep;
      this.start = sep + 2;
      this.scanned = this.start;
      if (e > s) onMessage(this.buf, s, e);
    }
    if (this.start === this.end) {
      this.start = this.end = this.scanned = 0;
    }
  }

  private ensure(extra: number): void {
    if (this.end + extra <= this.buf.length) return;
    const live = this.end - this.start;
    if (live + extra <= this.buf.length && this.start > 0) {
      this.buf.copy(this.buf, 0, this.start, this.end);
    } else {
      const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, live + extra + 1024));
      this.buf.copy(next, 0, this.start, this.end);
      this.buf = next;
    }
    this.scanned -= this.start;
    if (this.scanned < 0) this.scanned = 0;
    this.end = live;
    this.start = 0;
  }
}

function isSpace(c: number): boolean {
  return c === NL || c === 0x20 || c === 0x0d || c === 0x09;
}
