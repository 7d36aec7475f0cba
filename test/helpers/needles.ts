import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * What must never appear where an encrypted backup is stored: the recorded sessions' statements, string
 * literals (labels, bolt11 strings), hex blobs (node ids, keys) as text and as raw bytes. Shared by the
 * encryption tests of every destination (files, PostgreSQL).
 */

/** Every needle of at least 8 bytes from the recorded sessions' statements. */
export function sessionNeedles(cln: string, transcripts: string[]): Buffer[] {
  const set = new Set<string>();
  const raw: Buffer[] = [];
  for (const t of transcripts) {
    for (const line of readFileSync(join(cln, t), 'utf8').split('\n')) {
      if (!line.trim()) continue;
      const o = JSON.parse(line) as { writes?: string[] };
      for (const s of o.writes ?? []) {
        // the statement itself, and its distinctive start (table and columns)
        if (s.length >= 24) set.add(s.slice(0, 48));
        // string literals; a blob literal x'..' is the hex case below
        for (const m of s.matchAll(/'((?:[^']|'')*)'/g)) if (m[1]!.length >= 8 && !/[xX]/.test(s[m.index! - 1] ?? '')) set.add(m[1]!.slice(0, 64));
        for (const m of s.matchAll(/[xX]'([0-9a-fA-F]{16,})'/g)) {
          // as text, when distinctive: a run like "1000000000000000" also appears where a dump shows a
          // record's fields in hex (a zero link after a time), which says nothing about the statements
          if (new Set(m[1]!.slice(0, 64).toLowerCase()).size >= 6) set.add(m[1]!.slice(0, 64));
          // raw bytes (a snapshot holds blobs as bytes), when not a run of zeros a record's fields could hold too
          const b = Buffer.from(m[1]!.slice(0, 64), 'hex');
          if (new Set(b).size >= 6) raw.push(b);
        }
      }
    }
  }
  return [...[...set].map((s) => Buffer.from(s, 'utf8')), ...raw].filter((b) => b.length >= 8);
}

/** Needles found in `buf` (an 8-byte index of the needles: one pass over the file, whatever their number). */
export function findNeedles(buf: Buffer, needles: Buffer[]): string[] {
  const index = new Map<string, Buffer[]>();
  for (const n of needles) {
    const k = n.subarray(0, 8).toString('latin1');
    const l = index.get(k);
    if (l) l.push(n);
    else index.set(k, [n]);
  }
  const s = buf.toString('latin1');
  const found: string[] = [];
  for (let i = 0; i + 8 <= s.length; i++) {
    const l = index.get(s.substr(i, 8));
    if (!l) continue;
    for (const n of l) if (buf.subarray(i, i + n.length).equals(n)) found.push(`${JSON.stringify(n.toString('latin1').slice(0, 40))} at ${i}`);
  }
  return found;
}

