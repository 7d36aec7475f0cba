import { accessSync, constants, existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BackupReader } from '../backends/backend.js';
import { V1Reader } from '../backends/file/v1.js';
import { V2Reader } from '../backends/file/v2.js';
import { SegmentedReader } from '../backends/file/segments.js';
import { backupPath, isRemoteUrl, missingFirstFile, openReader } from '../backends/open.js';
import { redact } from '../backends/postgres/url.js';
import type { BackupFormat, EntryHeader, Problem } from '../engine/entries.js';
import { planBackup, type Planner } from '../engine/plan.js';
import { CliError, COMMON_OPTIONS_HELP, EXIT, out, parse, printJson, progressReporter, type Command } from './common.js';
import { formatBytes } from './verify.js';
import { KEY_OPTIONS, KEY_OPTIONS_HELP, keyFromOptions } from './key-options.js';
import { authJson, encryptionOf, unlockAndAuthenticate, type AuthResult } from '../crypto/authenticate.js';
import { describeKey } from '../crypto/backup-crypt.js';
import type { FileEncryption } from '../backends/file/v2/codec.js';

const help = `Usage: clnvault inspect [--json] [--quiet|--progress] [--hsm-secret PATH | --mnemonic-file PATH | --key-file PATH] URL

Describes the backup at URL without changing it: format, head version, number of
entries, size, snapshots and their versions, the range of versions a restore can
reach (--to-version), entries that share a version, the stale entries a restore
skips, and any torn tail or corruption with its byte offset. Every entry is read
back; for clnvault's v2 format that checks every record's checksum.

Whether the newest entry was committed by the node is known only to the node: if
lightningd stopped between backing it up and committing it, the plugin removes it
at the next start. 'clnvault status' compares the two.

An encrypted backup (docs/encryption.md) is described without its key too: that it is
encrypted, the key's kind and fingerprint, sizes, versions and snapshots (record
headers are not encrypted). With its key every record is also decrypted and
authenticated, with the chain between them, and the newest authenticated version and
its time are shown.

Options:
  --json       print the result as JSON on stdout
${KEY_OPTIONS_HELP}
${COMMON_OPTIONS_HELP}
  -h, --help   this help

URL is a file: URL (file:///mnt/usb/clnvault.bkp) or a plain path.

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
  format: BackupFormat;
  fileBytes: number;
  /** bytes of acknowledged data (the rest, if any, is reserved space, a torn tail or orphans) */
  bytes: number;
  /** v2 format 4: zero bytes reserved after the data for the next records (in fileBytes, not in bytes) */
  reservedBytes?: number;
  head: number;
  entries: number;
  changes: number;
  /** parts: how many records hold the snapshot (v2; more than 1 for a snapshot chunked across segments) */
  snapshots: Array<{ version: number; offset: number; bytes: number | null; parts?: number }>;
  /** versions restore --to-version accepts */
  versionRange: { from: number; to: number } | null;
  headEntry: { kind: 'change' | 'snapshot'; version: number; offset: number } | null;
  duplicates: Duplicate[];
  /** entries a restore skips: superseded by a later entry with the same or a lower version (the first INSPECT_LIST_MAX) */
  stale: Array<{ version: number; offset: number }>;
  /** how many entries are stale (stale lists at most INSPECT_LIST_MAX of them) */
  staleCount: number;
  problems: Problem[];
  /** entries read back in full (statements decoded, snapshots copied and, for v2, every checksum verified) */
  entriesChecked: number;
  damaged: boolean;
  /** false when the damage kept the entries from being listed (then changes, snapshots and versions are unknown) */
  entriesListed: boolean;
  v1Header?: ReturnType<V1Reader['header']>;
  v2?: { backupId: string; created: string };
  /** only for a backup split into several segment files, in order (the first is the file the URL names) */
  segments?: { index: number; file: string; bytes: number }[];
  /** an encrypted backup: its key as the header says, and what the key (if given) authenticated */
  encryption?: { keyKind: string; keyFingerprint: string; keyGiven: boolean; authenticated: Record<string, unknown> | null };
}

export const inspectCommand: Command = {
  name: 'inspect',
  summary: 'describe a backup: versions, snapshots, stale entries, damage',
  help,
  async run(argv) {
    const { values, positionals } = parse('inspect', argv, { json: { type: 'boolean' }, ...KEY_OPTIONS }, { min: 1, max: 1, names: 'one backup URL' });
    if (values.help) {
      out(help);
      return EXIT.ok;
    }
    const url = positionals[0]!;
    let path: string;
    try {
      path = isRemoteUrl(url) ? redact(url) : backupPath(url, process.cwd());
    } catch (e) {
      throw new CliError((e as Error).message, EXIT.usage);
    }
    if (!isRemoteUrl(url)) {
      // segment files without their first file: a damaged backup (exit 1), not a wrong URL
      const missingFirst = missingFirstFile(path);
      if (missingFirst !== null) throw new CliError(missingFirst, EXIT.failed);
      if (!existsSync(path)) throw new CliError(`backup file ${path} does not exist (is the backup disk mounted?); check the URL`, EXIT.usage);
      try {
        accessSync(path, constants.R_OK);
      } catch (e) {
        throw new CliError(`cannot read ${path}: ${(e as Error).message}`, EXIT.usage);
      }
    }
    let reader: BackupReader;
    try {
      reader = openReader(url, process.cwd());
    } catch (e) {
      throw new CliError((e as Error).message, EXIT.usage);
    }
    const key = keyFromOptions(values, process.env, isRemoteUrl(url) ? null : path);
    let report: InspectReport;
    try {
      const enc = encryptionOf(reader);
      let auth: AuthResult | null = null;
      if (enc !== null && key !== null) {
        try {
          auth = unlockAndAuthenticate(reader, key);
        } catch (e) {
          throw new CliError((e as Error).message, EXIT.failed);
        }
      }
      report = inspectBackup(reader, path, values.json !== true, enc === null ? undefined : { enc, auth });
    } finally {
      reader.close();
    }
    if (values.json) {
      printJson({
        ok: !report.damaged,
        message: report.damaged ? `${report.location} is damaged` : `${report.location} is readable and undamaged`,
        ...report,
      });
    } else printReport(report);
    return report.damaged ? EXIT.failed : EXIT.ok;
  },
};

/** Lists in the report stop growing here (counts stay exact): a report of millions of lines helps nobody. */
export const INSPECT_LIST_MAX = 10_000;
/** How far back (in entries) a repeated version is looked for; rewinds in a node's backup are a few entries deep. */
const DUPLICATE_WINDOW = 1 << 14;

export function inspectBackup(
  reader: BackupReader,
  path: string,
  showProgress: boolean,
  /** an encrypted backup: its header's key description and, with the key, the authentication pass */
  encrypted?: { enc: FileEncryption; auth: AuthResult | null },
): InspectReport {
  const st = reader.stats();
  const problems = reader.problems();
  // without the key the records' payloads cannot be read back: headers only
  const readBack = !encrypted || encrypted.auth !== null;
  if (encrypted?.auth?.problem) problems.push(encrypted.auth.problem);
  let planner: Planner | null = null;
  try {
    planner = planBackup(reader);
  } catch (e) {
    // v2 refuses to walk a damaged backup; the problems below already say where.
    if (!problems.some((p) => p.kind === 'corrupt')) {
      problems.push({ kind: 'corrupt', offset: (e as { offset?: number }).offset ?? 0, message: (e as Error).message });
    }
  }
  const report: InspectReport = {
    location: st.location,
    format: st.format,
    // a remote backup has no local file (socket: ones were fetched into a scratch copy): its size is the reader's
    fileBytes: isRemoteUrl(path) ? st.bytes : statSync(path).size,
    bytes: st.bytes,
    head: st.head,
    entries: st.entries,
    changes: 0,
    snapshots: [],
    versionRange: null,
    headEntry: null,
    duplicates: [],
    stale: [],
    staleCount: 0,
    problems,
    entriesChecked: 0,
    damaged: false,
    entriesListed: planner !== null,
  };
  if (encrypted) {
    const d = describeKey(encrypted.enc);
    report.encryption = { keyKind: d.kind, keyFingerprint: d.fingerprint, keyGiven: encrypted.auth !== null, authenticated: encrypted.auth ? authJson(encrypted.auth) : null };
  }
  if (reader instanceof V1Reader) report.v1Header = reader.header();
  if (reader instanceof V2Reader) {
    report.v2 = { backupId: reader.backupId.toString('hex'), created: new Date(reader.createdMs).toISOString() };
    report.reservedBytes = reader.reservedBytes;
  }
  if (reader instanceof SegmentedReader) {
    report.v2 = { backupId: reader.backupId.toString('hex'), created: new Date(reader.createdMs).toISOString() };
    report.segments = reader.segmentFiles().map((s) => ({ index: s.index, file: s.path, bytes: statSync(s.path).size }));
    report.fileBytes = report.segments.reduce((n, s) => n + s.bytes, 0);
    report.reservedBytes = reader.reservedBytes;
  }

  if (planner !== null) {
    const plan = planner.plan();
    // the same bounds restore --to-version accepts: the oldest entry a restore keeps, up to the head
    report.versionRange = plan.oldest !== null ? { from: plan.oldest, to: plan.head } : { from: 0, to: 0 };
    report.staleCount = plan.stale;
    const kept = planner.kept(0, plan.entries);
    const dups = new Duplicates();
    const progress = showProgress ? progressReporter('checking', 'entries') : null;
    let scratch: string | null = null;
    let i = 0;
    try {
      // one walk: counts, stale entries, repeated versions, and every entry read back
      reader.forEachHeader((h) => {
        if (h.kind === 'change') report.changes++;
        if (!kept.applies(i) && report.stale.length < INSPECT_LIST_MAX) report.stale.push({ version: h.version, offset: h.offset });
        dups.push(h, i);
        report.headEntry = { kind: h.kind, version: h.version, offset: h.offset };
        if (readBack) scratch = checkEntry(reader, h, i, report, scratch);
        else if (h.kind === 'snapshot' && report.snapshots.length < INSPECT_LIST_MAX) report.snapshots.push({ version: h.version, offset: h.offset, bytes: null });
        i++;
        progress?.update(i, plan.entries);
      });
    } finally {
      progress?.finish();
      if (scratch !== null) rmSync(scratch, { recursive: true, force: true });
    }
    report.duplicates = dups.list();
  }
  // a whole last record failing its checksum may be damage: never call that undamaged
  report.damaged = report.problems.some((p) => p.kind === 'corrupt' || p.suspect === true);
  report.problems.sort((a, b) => a.offset - b.offset);
  return report;
}

/**
 * Versions held by more than one entry, found within a window of the last DUPLICATE_WINDOW entries (a
 * PRAGMA repeat is adjacent, a rewind a few entries back), so memory stays bounded.
 */
class Duplicates {
  private readonly ringOffset = new Float64Array(DUPLICATE_WINDOW);
  private readonly ringKind = new Uint8Array(DUPLICATE_WINDOW);
  private readonly ringVersion = new Float64Array(DUPLICATE_WINDOW);
  /** version -> index of its latest entry, for entries inside the window */
  private readonly recent = new Map<number, number>();
  private readonly found = new Map<number, Duplicate>();

  push(h: EntryHeader, i: number): void {
    const slot = i % DUPLICATE_WINDOW;
    if (i >= DUPLICATE_WINDOW) {
      const old = this.ringVersion[slot]!;
      if (this.recent.get(old) === i - DUPLICATE_WINDOW) this.recent.delete(old);
    }
    const kind = h.kind === 'snapshot' ? 2 : h.pragmaOnly ? 1 : 0;
    const prev = this.recent.get(h.version);
    if (prev !== undefined) {
      let d = this.found.get(h.version);
      if (d === undefined && this.found.size < INSPECT_LIST_MAX) {
        const p = prev % DUPLICATE_WINDOW;
        d = { version: h.version, offsets: [this.ringOffset[p]!], kinds: [KINDS[this.ringKind[p]!]!] };
        this.found.set(h.version, d);
      }
      if (d !== undefined && d.offsets.length < 1000) {
        d.offsets.push(h.offset);
        d.kinds.push(KINDS[kind]!);
      }
    }
    this.ringOffset[slot] = h.offset;
    this.ringKind[slot] = kind;
    this.ringVersion[slot] = h.version;
    this.recent.set(h.version, i);
  }

  /** In the order of each version's first entry, as a listing reads. */
  list(): Duplicate[] {
    return [...this.found.values()].sort((a, b) => a.offsets[0]! - b.offsets[0]!);
  }
}

const KINDS: Array<'change' | 'pragma' | 'snapshot'> = ['change', 'pragma', 'snapshot'];

/** Reads one entry back: v2 verifies its payload checksum on read, v1 decodes its statements. Returns the scratch dir. */
function checkEntry(reader: BackupReader, h: EntryHeader, i: number, report: InspectReport, scratch: string | null): string | null {
  try {
    const e = reader.read(h);
    if (e.kind === 'snapshot') {
      // Copying is what verifies a snapshot's checksum (and what a restore does first).
      scratch ??= mkdtempSync(join(tmpdir(), 'clnvault-inspect-'));
      const f = join(scratch, `snapshot-${i}.sqlite3`);
      e.writeTo(f);
      rmSync(f, { force: true });
      if (report.snapshots.length < INSPECT_LIST_MAX) {
        report.snapshots.push({ version: e.version, offset: e.offset, bytes: e.size, ...(e.parts !== undefined ? { parts: e.parts } : {}) });
      }
    }
    report.entriesChecked++;
  } catch (e) {
    if (h.kind === 'snapshot' && report.snapshots.length < INSPECT_LIST_MAX) report.snapshots.push({ version: h.version, offset: h.offset, bytes: null });
    if (report.problems.length < INSPECT_LIST_MAX) report.problems.push({ kind: 'corrupt', offset: h.offset, message: (e as Error).message });
  }
  return scratch;
}

function printReport(r: InspectReport): void {
  out(`${r.location}: clnvault backup, format ${r.format}${r.format === 'v1' ? " (the reference plugin's)" : ''}`);
  // headEntry is null both for an empty backup and for one whose entries could not be listed (damaged)
  const headNote = r.headEntry
    ? ` (newest entry: ${r.headEntry.kind} at offset ${r.headEntry.offset})`
    : r.entriesListed
      ? ' (empty backup)'
      : ' (as the file says; its entries could not be listed because of the damage below)';
  out(`  head version   ${r.head}${headNote}`);
  out(
    r.entriesListed
      ? `  entries        ${r.entries} (${r.changes} changes, ${r.snapshots.length} snapshots), ${r.entriesChecked} read back and checked`
      : `  entries        ${r.entries} counted, none read back: the damage below stops the listing`,
  );
  if (r.encryption) {
    const e = r.encryption;
    out(`  encrypted      yes: ${e.keyKind} key, fingerprint ${e.keyFingerprint}`);
    if (!e.keyGiven) out('  authenticated  not checked: records are listed from their headers; give the key to decrypt and authenticate them');
    else if (e.authenticated) {
      const a = e.authenticated;
      out(`  authenticated  ${a.records} records; newest authenticated version ${a.newestVersion ?? 'none'}${a.newestWrittenAt ? `, written at ${a.newestWrittenAt}` : ''}`);
    }
  }
  out(
    `  size           ${formatBytes(r.bytes)} of data` +
      (r.fileBytes !== r.bytes ? `, file ${formatBytes(r.fileBytes)}` : '') +
      (r.reservedBytes ? ` (${formatBytes(r.reservedBytes)} of it reserved for the next records)` : ''),
  );
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
  if (r.staleCount > 0) {
    out(
      `  stale entries  ${r.staleCount}, never committed by the node and skipped by a restore: ` +
        r.stale.slice(0, 10).map((s) => `version ${s.version} at offset ${s.offset}`).join('; ') +
        (r.staleCount > 10 ? '; …' : ''),
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
