/**
 * The byte level of lightningd's plugin protocol: compact JSON messages each followed by `\n\n` towards the
 * plugin, and an incremental JSON reader for what the plugin writes back.
 *
 * lightningd does not split its input on `\n\n`: it feeds the stream to an incremental JSON tokenizer, so a
 * reply is complete when its top-level object closes, whatever follows. The reader here does the same, on
 * bytes (not strings) so that a UTF-8 sequence cut between two reads is never decoded half-way.
 */

export interface JsonRpcMessage {
  jsonrpc?: unknown;
  id?: unknown;
  method?: unknown;
  params?: unknown;
  result?: unknown;
  error?: unknown;
  [k: string]: unknown;
}

export function encodeMessage(msg: object): Buffer {
  return Buffer.from(JSON.stringify(msg) + '\n\n', 'utf8');
}

export type ReadEvent = { kind: 'message'; message: JsonRpcMessage; raw: string } | { kind: 'garbage'; text: string; reason: string };

const LBRACE = 0x7b;
const RBRACE = 0x7d;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const NL = 0x0a;

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
}

/**
 * Scans the plugin's stdout for complete top-level JSON objects. Scan state survives between chunks, so a
 * big message arriving in many reads is scanned once, not once per read.
 */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;
  private depth = 0;
  private inString = false;
  private escape = false;
  private garbage = false;

  push(chunk: Buffer): ReadEvent[] {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const out: ReadEvent[] = [];
    let start = 0;
    while (this.pos < this.buf.length) {
      const b = this.buf[this.pos]!;
      if (this.garbage) {
        // Resynchronise at the next line: one garbage line is one violation, not one per byte.
        if (b === NL) {
          out.push({ kind: 'garbage', text: this.buf.subarray(start, this.pos).toString('utf8'), reason: 'not JSON' });
          this.garbage = false;
          start = this.pos + 1;
        }
        this.pos++;
        continue;
      }
      if (this.depth === 0) {
        if (isSpace(b)) {
          this.pos++;
          start = this.pos;
          continue;
        }
        if (b !== LBRACE) {
          this.garbage = true;
          start = this.pos;
          this.pos++;
          continue;
        }
        start = this.pos;
        this.depth = 1;
        this.pos++;
        continue;
      }
      if (this.inString) {
        if (this.escape) this.escape = false;
        else if (b === BACKSLASH) this.escape = true;
        else if (b === QUOTE) this.inString = false;
      } else if (b === QUOTE) {
        this.inString = true;
      } else if (b === LBRACE || b === LBRACKET) {
        this.depth++;
      } else if (b === RBRACE || b === RBRACKET) {
        this.depth--;
        if (this.depth === 0) {
          const raw = this.buf.subarray(start, this.pos + 1).toString('utf8');
          try {
            const parsed: unknown = JSON.parse(raw);
            if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
              out.push({ kind: 'garbage', text: raw, reason: 'not a JSON object' });
            } else {
              out.push({ kind: 'message', message: parsed as JsonRpcMessage, raw });
            }
          } catch (e) {
            out.push({ kind: 'garbage', text: raw, reason: `invalid JSON: ${(e as Error).message}` });
          }
          start = this.pos + 1;
        }
      }
      this.pos++;
    }
    // Keep only the unfinished tail; the scan position is relative to it.
    const keepFrom = this.depth === 0 && !this.garbage ? this.pos : start;
    this.buf = this.buf.subarray(keepFrom);
    this.pos -= keepFrom;
    return out;
  }

  /** What is left at EOF: a message cut short, or a garbage line without newline. */
  end(): ReadEvent[] {
    const rest = this.buf.toString('utf8');
    this.buf = Buffer.alloc(0);
    this.pos = 0;
    const wasGarbage = this.garbage;
    const depth = this.depth;
    this.depth = 0;
    this.garbage = false;
    this.inString = false;
    this.escape = false;
    if (rest.trim() === '') return [];
    return [{ kind: 'garbage', text: rest, reason: wasGarbage || depth === 0 ? 'not JSON' : 'incomplete message at end of output' }];
  }
}

export interface WriteOptions {
  /**
   * Cut every write into pieces of at most this many bytes (a UTF-8 character or the `\n\n` separator may
   * be cut in two): exercises the plugin's handling of a message split across reads.
   */
  chunkSize?: number;
  /** Pause between pieces so the plugin really sees them in separate reads. */
  chunkDelayMs?: number;
  /**
   * Gather the messages queued during one event-loop turn into a single write: exercises several messages
   * arriving in one read.
   */
  coalesce?: boolean;
}

export interface Sink {
  write(chunk: Buffer, cb: (err?: Error | null) => void): boolean;
}

/** Serialises writes to the plugin's stdin: pieces of one message never interleave with another's. */
export class FrameWriter {
  private chain: Promise<void> = Promise.resolve();
  private queued: Buffer[] = [];
  private flushScheduled = false;

  /** Options are read at every send, so a test can change them between messages. */
  constructor(
    private readonly sink: Sink,
    private readonly options: () => WriteOptions = () => ({}),
  ) {}

  /** Resolves when the bytes were handed to the pipe (rejects if the pipe is gone). */
  send(msg: object): Promise<void> {
    const bytes = encodeMessage(msg);
    if (!this.options().coalesce) return this.enqueue(bytes);
    this.queued.push(bytes);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      const flushed = new Promise<void>((resolve, reject) => {
        setImmediate(() => {
          this.flushScheduled = false;
          const all = Buffer.concat(this.queued);
          this.queued = [];
          this.enqueue(all).then(resolve, reject);
        });
      });
      this.pendingFlush = flushed;
    }
    return this.pendingFlush!;
  }

  private pendingFlush: Promise<void> | undefined;

  private enqueue(bytes: Buffer): Promise<void> {
    const run = async (): Promise<void> => {
      const { chunkSize, chunkDelayMs } = this.options();
      const size = chunkSize && chunkSize > 0 ? chunkSize : bytes.length;
      for (let off = 0; off < bytes.length; off += size) {
        if (off > 0 && chunkDelayMs) await sleep(chunkDelayMs);
        await this.writeOne(bytes.subarray(off, Math.min(off + size, bytes.length)));
      }
    };
    const p = this.chain.then(run);
    this.chain = p.catch(() => undefined);
    return p;
  }

  private writeOne(chunk: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.sink.write(chunk, (err) => (err ? reject(err) : resolve()));
    });
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
