/**
 * Recorded db_write transcripts (`hooks.jsonl` in the fixtures): one JSON object per line, either a hook
 * call `{"id","data_version","writes"[,"answered"]}` or a marker `{"event":"getmanifest"|"init"}`.
 */
import { readFileSync } from 'node:fs';

export type TranscriptLine =
  | { line: number; kind: 'event'; event: 'getmanifest' | 'init' }
  | { line: number; kind: 'db_write'; id: string | undefined; dataVersion: number; writes: string[]; answered: 'continue' | 'abort' | undefined };

export function parseTranscript(text: string): TranscriptLine[] {
  const out: TranscriptLine[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i]!;
    if (raw.trim() === '') continue;
    const n = i + 1;
    const obj = JSON.parse(raw) as Record<string, unknown>;
    if (typeof obj.event === 'string') {
      if (obj.event !== 'getmanifest' && obj.event !== 'init') throw new Error(`line ${n}: unknown event ${obj.event}`);
      out.push({ line: n, kind: 'event', event: obj.event });
      continue;
    }
    const dv = obj.data_version;
    const writes = obj.writes;
    if (typeof dv !== 'number' || !Array.isArray(writes) || !writes.every((w) => typeof w === 'string')) {
      throw new Error(`line ${n}: neither an event nor a db_write call`);
    }
    const answered = obj.answered;
    if (answered !== undefined && answered !== 'continue' && answered !== 'abort') throw new Error(`line ${n}: unknown answered=${String(answered)}`);
    out.push({
      line: n,
      kind: 'db_write',
      id: typeof obj.id === 'string' ? obj.id : undefined,
      dataVersion: dv,
      writes: writes as string[],
      answered,
    });
  }
  return out;
}

export function readTranscript(path: string): TranscriptLine[] {
  return parseTranscript(readFileSync(path, 'utf8'));
}
