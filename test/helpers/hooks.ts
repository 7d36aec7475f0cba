import { readFileSync } from 'node:fs';

/** One `db_write` call as the fixture logger recorded it (`answered` only in session-abort-style files). */
export interface HookCall {
  id?: string;
  data_version: number;
  writes: string[];
  answered?: string;
}

/** A marker line such as `{"event": "init"}`. */
export interface HookEvent {
  event: string;
}

export type HookLine = HookCall | HookEvent;

export function isHookCall(l: HookLine): l is HookCall {
  return 'writes' in l;
}

/** Parses a fixture `hooks.jsonl`, strictly: a malformed line is an error naming the file and line. */
export function readHooks(path: string): HookLine[] {
  const out: HookLine[] = [];
  const lines = readFileSync(path, 'utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const text = lines[i]!;
    if (text.trim() === '') continue;
    const where = `${path}:${i + 1}`;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(text) as Record<string, unknown>;
    } catch (e) {
      throw new Error(`${where}: not JSON: ${(e as Error).message}`);
    }
    if (typeof o.event === 'string') {
      out.push({ event: o.event });
      continue;
    }
    const dv = o.data_version;
    const writes = o.writes;
    if (typeof dv !== 'number' || !Number.isInteger(dv) || !Array.isArray(writes) || !writes.every((w) => typeof w === 'string')) {
      throw new Error(`${where}: neither an {event} marker nor a db_write line with data_version and writes`);
    }
    const call: HookCall = { data_version: dv, writes: writes as string[] };
    if (typeof o.id === 'string') call.id = o.id;
    if (typeof o.answered === 'string') call.answered = o.answered;
    out.push(call);
  }
  return out;
}
