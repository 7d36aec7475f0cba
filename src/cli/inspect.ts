import { accessSync, constants, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BackupReader } from '../backends/backend.js';
import { V1Reader } from '../backends/file/v1.js';
import { V2Reader } from '../backends/file/v2.js';
import { SegmentedReader } from '../backends/file/segments.js';
import { backupPath, openReader } from '../backends/open.js';
import type { EntryHeader, Problem } from '../engine/entries.js';
import { planRestore } from '../engine/plan.js';
import { CliError, EXIT, out, parse, printJson, progressReporter, type Command } from './common.js';
import { formatBytes } from './verify.js';

const help = `Usage: clnvault inspect [--json] URL

Describes the backup at URL without changing it: format, head version, number of
entries, size, snapshots and their versions, the range of versions a restore can
reach (--to-version), entries that share a version, the stale entries a restore
skips, and any torn tail or corruption with its byte offset. Every entry is read
back; for clnvault's v2 format that checks every record's checksum.

Whether the newest entry was committed by the node is known only to the node: if
lightningd stopped between backing it up and committing it, the plugin removes it
at the next start. 'clnvault status' compares the two.

Options:
  --json       print the result as JSON on stdout
  -h, --help   this help

Exit codes: 0 readable and undamaged (a torn tail, the unacknowledged end of an
append cut short by a crash, is not damage), 1 damaged (acknowledged entries
unreadable; restore from another copy), 2 could not run (bad usage, no such file,
not a backup file).

Example:
  clnvault inspect file:///mnt/usb/clnvault.bkp`;

interface Duplicate {
  version: number;
  offsets: number[];
  /** pragma: lightningd's PRAGMA batch carrying an unchanged version (harmless); stale: a transaction that was never committed */
  kinds: Array<'change' | 'pragma' | 'snapshot'>;
}

export interface InspectReport {
  location: string;
  format: 'v1' | 'v2';
  fileBytes: number;
  /** bytes of acknowledged data (the rest, if any, is a torn tail or orphans) */
  bytes: number;
  head: number;
  entries: number;
  changes: number;
  /** parts: how many records hold the snapshot (v2; more than 1 for a snapshot chunked across segments) */
  snapshots: Array<{ version: number; offset: number; bytes: number | null; parts?: number }>;
  /** versions restore --to-version accepts */
  versionRange: { from: number; to: number } | null;
  headEntry: { kind: 'change' | 'snapshot'; version: number; offset: number } | null;
  duplicates: Duplicate[];
  /** entries a restore skips: superseded by a later entry with the same or a lower version */
  stale: Array<{ version: number; offset: number }>;
  problems: Problem[];
  /** entries read back in full (statements decoded, snapshots copied and, for v2, every checksum verified) */
  entriesChecked: number;
  damaged: boolean;
  v1Header?: ReturnType<V1Reader['header']>;
  v2?: { backupId: string; created: string };
  /** only for a backup split into several segment files, in order (the first is the file the URL names) */
  segments?: { index: number; file: string; bytes: number }[];
}

export const inspectCommand: Command = {
  name: 'inspect',
  summary: 'describe a backup: versions, snapshots, stale entries, damage',
  help,
  async run(argv) {
    const { values, positionals } = parse('inspect', argv, { json: { type: 'boolean' } }, { min: 1, max: 1, names: 'one backup URL' });
    if (values.help) {
      out(help);
      return EXIT.ok;
    }
    const url = positionals[0]!;
    let path: string;
    try {
      path = backupPath(url, process.cwd());
    } catch (e) {
      throw new CliError((e as Error).message, EXIT.usage);
    }
    if (!existsSync(path)) throw new CliError(`backup file ${path} does not exist (is the backup disk mounted?); check the URL`, EXIT.usage);
    try {
      accessSync(path, constants.R_OK);
    } catch (e) {
      throw new CliError(`cannot read ${path}: ${(e as Error).message}`, EXIT.usage);
    }
    let reader: BackupReader;
    try {
      reader = openReader(url, process.cwd());
    } catch (e) {
      throw new CliError((e as Error).message, EXIT.usage);
    }
    let report: InspectReport;
    try {
      report = inspectBackup(reader, path, values.json !== true);
    } finally {
      reader.close();
    }
    if (values.json) printJson(report);
    else printReport(report);
    return report.damaged ? EXIT.failed : EXIT.ok;
  },
};

export function inspectBackup(reader: BackupReader, path: string, showProgress: boolean): InspectReport {
  const st = reader.stats();
  const problems = reader.problems();
  let headers: EntryHeader[] | null = null;
  try {
    headers = reader.headers();
  } catch (e) {
    // v2 refuses to list a damaged backup; the problems below already say where.
    if (!problems.some((p) => p.kind === 'corrupt')) {
      problems.push({ kind: 'corrupt', offset: (e as { offset?: number }).offset ?? 0, message: (e as Error).message });
    }
  }
  const report: InspectReport = {
    location: st.location,
    format: st.format,
    fileBytes: statSync(path).size,
    bytes: st.bytes,
    head: st.head,
    entries: st.entries,
    changes: 0,
    snapshots: [],
    versionRange: null,
    headEntry: null,
    duplicates: [],
    stale: [],
    problems,
    entriesChecked: 0,
    damaged: false,
  };
  if (reader instanceof V1Reader) report.v1Header = reader.header();
  if (reader instanceof V2Reader) report.v2 = { backupId: reader.backupId.toString('hex'), created: new Date(reader.createdMs).toISOString() };
  if (reader instanceof SegmentedReader) {
    report.v2 = { backupId: reader.backupId.toString('hex'), created: new Date(reader.createdMs).toISOString() };
    report.segments = reader.segmentFiles().map((s) => ({ index: s.index, file: s.path, bytes: statSync(s.path).size }));
    report.fileBytes = report.segments.reduce((n, s) => n + s.bytes, 0);
  }

  if (headers !== null) {
    const plan = planRestore(headers);
    const byVersion = new Map<number, number[]>();
    headers.forEach((h, i) => {
      if (h.kind === 'change') report.changes++;
      const list = byVersion.get(h.version);
      if (list) list.push(i);
      else byVersion.set(h.version, [i]);
      if (plan.dropped[i]) report.stale.push({ version: h.version, offset: h.offset });
    });
    for (const [version, idx] of byVersion) {
      if (idx.length < 2) continue;
      report.duplicates.push({
        version,
        offsets: idx.map((i) => headers![i]!.offset),
        kinds: idx.map((i) => (headers![i]!.kind === 'snapshot' ? 'snapshot' : headers![i]!.pragmaOnly ? 'pragma' : 'change')),
      });
    }
    const last = headers.at(-1);
    if (last) report.headEntry = { kind: last.kind, version: last.version, offset: last.offset };
    // the same bounds restore --to-version accepts: the oldest entry a restore keeps, up to the head
    const oldest = headers.find((_, i) => !plan.dropped[i]);
    report.versionRange = oldest ? { from: oldest.version, to: plan.head } : { from: 0, to: 0 };
    checkEveryEntry(reader, headers, report, showProgress);
  }
  report.damaged = report.problems.some((p) => p.kind === 'corrupt');
  report.problems.sort((a, b) => a.offset - b.offset);
  return report;
}

/** Reads every entry back: v2 verifies each payload checksum on read, v1 decodes each statement list. */
function checkEveryEntry(reader: BackupReader, headers: EntryHeader[], report: InspectReport, showProgress: boolean): void {
  const progress = showProgress ? progressReporter('checking', 'entries') : null;
  let scratch: string | null = null;
  try {
    headers.forEach((h, i) => {
      try {
        const e = reader.read(h);
        if (e.kind === 'snapshot') {
          // Copying is what verifies a snapshot's checksum (and what a restore does first).
          scratch ??= mkdtempSync(join(tmpdir(), 'clnvault-inspect-'));
          const f = join(scratch, `snapshot-${i}.sqlite3`);
          e.writeTo(f);
          rmSync(f, { force: true });
          report.snapshots.push({ version: e.version, offset: e.offset, bytes: e.size, ...(e.parts !== undefined ? { parts: e.parts } : {}) });
        }
        report.entriesChecked++;
      } catch (e) {
        if (h.kind === 'snapshot') report.snapshots.push({ version: h.version, offset: h.offset, bytes: null });
        report.problems.push({ kind: 'corrupt', offset: h.offset, message: (e as Error).message });
      }
      progress?.update(i + 1, headers.length);
    });
  } finally {
    progress?.finish();
    if (scratch !== null) rmSync(scratch, { recursive: true, force: true });
  }
}

function printReport(r: InspectReport): void {
  out(`${r.location}: clnvault backup, format ${r.format}${r.format === 'v1' ? " (the reference plugin's)" : ''}`);
  out(`  head version   ${r.head}` + (r.headEntry ? ` (newest entry: ${r.headEntry.kind} at offset ${r.headEntry.offset})` : ' (empty backup)'));
  out(`  entries        ${r.entries} (${r.changes} changes, ${r.snapshots.length} snapshots), ${r.entriesChecked} read back and checked`);
  out(`  size           ${formatBytes(r.bytes)} of data` + (r.fileBytes !== r.bytes ? `, file ${formatBytes(r.fileBytes)}` : ''));
  if (r.segments) {
    out(`  segments       ${r.segments.length} files:`);
    for (const s of r.segments) out(`    ${String(s.index).padStart(4)}  ${formatBytes(s.bytes).padStart(10)}  ${s.file}`);
  }
  if (r.snapshots.length > 0) {
    out(`  snapshots      ${r.snapshots.map((s) => `version ${s.version} at offset ${s.offset}${s.bytes !== null ? ` (${formatBytes(s.bytes)}${(s.parts ?? 1) > 1 ? `, in ${s.parts} records` : ''})` : ''}`).join('; ')}`);
  }
  if (r.versionRange) out(`  restorable     versions ${r.versionRange.from} to ${r.versionRange.to} (clnvault restore --to-version N)`);
  const pragmas = r.duplicates.filter((d) => d.kinds.every((k, i) => i === 0 || k === 'pragma'));
  const others = r.duplicates.filter((d) => !pragmas.includes(d));
  if (pragmas.length > 0) out(`  same version   ${pragmas.length} version(s) repeated by PRAGMA batches (lightningd sends them with an unchanged version; normal)`);
  for (const d of others) out(`  same version   version ${d.version} at offsets ${d.offsets.join(', ')} (${d.kinds.join(', ')})`);
  if (r.stale.length > 0) {
    out(
      `  stale entries  ${r.stale.length}, never committed by the node and skipped by a restore: ` +
        r.stale.slice(0, 10).map((s) => `version ${s.version} at offset ${s.offset}`).join('; ') +
        (r.stale.length > 10 ? '; …' : ''),
    );
  } else {
    out('  stale entries  none');
  }
  if (r.headEntry?.kind === 'change') {
    out(
      `  pending rewind none in the file; the plugin removes the head entry (version ${r.head}) at start only if the node ` +
        `stopped before committing it (node at ${r.head - 1}); 'clnvault status' compares the two`,
    );
  }
  if (r.problems.length === 0) out('  problems       none');
  for (const p of r.problems) out(`  ${p.kind.padEnd(14)} offset ${p.offset}: ${p.message}`);
  if (r.damaged) out("Damaged: a restore would refuse it. Keep the file, restore from another copy, and re-create the backup with 'clnvault init'.");
}
