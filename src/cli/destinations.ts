import { existsSync } from 'node:fs';
import { backupPath, isRemoteUrl, openReader } from '../backends/open.js';
import { redact } from '../backends/postgres/url.js';
import { destinationsOf, type BackupLock } from '../engine/backup-lock.js';
import { serialDiff } from '../engine/versions.js';
import { CliError } from './common.js';

/**
 * The destinations a backup.lock lists, each opened and read for status and restore (several
 * destinations: docs/destinations.md). A destination that cannot be read is reported with why, never
 * skipped silently.
 */

export interface DestinationProbe {
  index: number;
  /** as written in backup.lock (passwords redacted) */
  url: string;
  /** unredacted, to open it */
  rawUrl: string;
  head: number | null;
  headKind: 'change' | 'snapshot' | null;
  entries: number | null;
  format: string | null;
  error: string | null;
}

export function probeDestinations(lock: BackupLock, dir: string): DestinationProbe[] {
  return destinationsOf(lock).map((rawUrl, index) => {
    const p: DestinationProbe = { index, url: redact(rawUrl), rawUrl, head: null, headKind: null, entries: null, format: null, error: null };
    try {
      if (!isRemoteUrl(rawUrl) && !existsSync(backupPath(rawUrl, dir))) throw new Error(`${backupPath(rawUrl, dir)} does not exist (is its disk mounted?)`);
      const reader = openReader(rawUrl, dir);
      try {
        const st = reader.stats();
        p.head = st.head;
        p.entries = st.entries;
        p.format = st.format;
        reader.forEachHeader((h) => {
          p.headKind = h.kind;
        });
        if (reader.problems().some((x) => x.kind === 'corrupt')) p.error = 'damaged (run clnvault inspect on it)';
      } finally {
        reader.close();
      }
    } catch (e) {
      p.error = (e as Error).message;
    }
    return p;
  });
}

/** The most advanced readable destination (the first listed among equals), with why it was picked. */
export function pickDestination(probes: DestinationProbe[], choice: string | undefined): { probe: DestinationProbe; why: string } {
  if (choice !== undefined) {
    const byIndex = /^\d+$/.test(choice) ? probes[Number(choice)] : undefined;
    const probe = byIndex ?? probes.find((p) => p.rawUrl === choice || p.url === choice);
    if (probe === undefined) {
      throw new CliError(`--destination ${choice} is neither an index (0 to ${probes.length - 1}) nor one of backup.lock's destinations: ${probes.map((p) => p.url).join(', ')}`);
    }
    if (probe.error !== null) throw new CliError(`destination ${probe.url} cannot be used: ${probe.error}`);
    return { probe, why: `chosen with --destination` };
  }
  const ok = probes.filter((p) => p.error === null && p.head !== null);
  if (ok.length === 0) {
    throw new CliError(`no destination can be read: ${probes.map((p) => `${p.url}: ${p.error}`).join('; ')}`);
  }
  let best = ok[0]!;
  for (const p of ok) if (serialDiff(p.head!, best.head!) > 0) best = p;
  const others = probes.filter((p) => p !== best).map((p) => `${p.url}: ${p.error !== null ? `unreadable (${p.error})` : `version ${p.head}`}`);
  return { probe: best, why: `the most advanced readable destination (version ${best.head}${others.length > 0 ? `; ${others.join('; ')}` : ''})` };
}
