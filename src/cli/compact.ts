import { backupPath, detectFormat, openWriter } from '../backends/open.js';
import { existsSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { KEY_OPTIONS, KEY_OPTIONS_HELP, keyFromOptions } from './key-options.js';
import { keyFromKeyFile, writeKeyFile, type BackupKey } from '../crypto/keys.js';
import { readSegmentHeader } from '../backends/file/segments.js';
import { FILE_FLAG_ENCRYPTED } from '../backends/file/v2.js';
import { identityOf } from '../compact/compact.js';
import { runOfflineCompaction } from '../compact/offline-run.js';
import { DEFAULT_SEGMENT_BYTES, parseSegmentBytes } from '../backends/file/segments.js';
import { DEFAULT_COMPACTION } from '../compact/config.js';
import { isReopenable } from '../plugin/compaction.js';
import { CliError, COMMON_OPTIONS_HELP, err, EXIT, out, outputMode, parse, printJson, type Command } from './common.js';
import { compactPg } from '../backends/postgres/compact.js';
import { isPostgresUrl, redact } from '../backends/postgres/url.js';

const help = `Usage: clnvault compact [--history K] [--segment-bytes N] [--json]
                        [--hsm-secret PATH | --mnemonic-file PATH | --key-file PATH] [--new-key-file PATH] URL

Compacts the backup at URL: replaces it by a snapshot of the database just before
its newest version, followed by the newest entries, so that it restores to exactly
the same database and the plugin can still rewind its newest write.

This is for a backup no plugin is writing (node stopped, or a copy). While the
plugin of a running node holds the backup, compact refuses: use
'lightning-cli backup-compact' instead, which compacts online without pausing the
node's writes. A postgresql: backup is the exception: it is compacted inside the
database (a snapshot row committed, then the rows it covers deleted in one
transaction) while the plugin keeps writing; --history and --segment-bytes do not apply. The new backup is built beside the old one and renamed over it; an
interruption leaves the old backup untouched (leftovers are removed by the next run).

Options:
  --history K   keep the last K pre-compaction backups beside it as <file>.hist-<ms>,
                for 'clnvault restore --to-version' (default ${DEFAULT_COMPACTION.history}; 0 keeps none)
  --segment-bytes N
                v2: the compacted backup's files hold at most N bytes, the rest going to
                segment files <file>.seg-* (default ${DEFAULT_SEGMENT_BYTES}, under FAT32's 4 GiB)
  --json        print the result as JSON ({"before":{...},"after":{...}, "result": "compacted",
                "nothing-to-gain" or "nothing-to-compact", ...})
${KEY_OPTIONS_HELP}
                An encrypted backup needs its key: its records are decrypted to be replayed
  --new-key-file PATH
                rotate the key: the compacted backup is encrypted with the key in PATH
                (created when it does not exist), every record re-encrypted, even when
                there is nothing to compact. Then point backup.lock's "encrypt" at it.
                History copies (--history) keep the old key: keep it while they exist
${COMMON_OPTIONS_HELP}
  -h, --help    this help

The sizes before and after are printed. When the compacted backup would not be smaller
(a small backup whose snapshot outweighs the entries it replaces), it is thrown away
before the swap and compact says "nothing to gain" (exit 0, backup unchanged).

URL is a file: URL (file:///mnt/usb/clnvault.bkp) or a plain path.

Exit codes: 0 compacted (or nothing to gain / to do), 1 refused or failed (backup unchanged),
2 bad usage.

Example:
  clnvault compact file:///mnt/usb/clnvault.bkp`;

export const compactCommand: Command = {
  name: 'compact',
  summary: 'shrink a backup no plugin is writing (snapshot + newest entries)',
  help,
  async run(argv) {
    const { values, positionals } = parse('compact', argv, {
      history: { type: 'string' },
      'segment-bytes': { type: 'string' },
      json: { type: 'boolean' },
      'new-key-file': { type: 'string' },
      ...KEY_OPTIONS,
    }, { min: 1, max: 1, names: 'one backup URL' });
    if (values.help) {
      out(help);
      return EXIT.ok;
    }
    const url = positionals[0]!;
    let history = DEFAULT_COMPACTION.history;
    if (values.history !== undefined) {
      const h = Number(values.history);
      if (!Number.isInteger(h) || h < 0) throw new CliError(`--history must be a whole number >= 0, not ${String(values.history)}`, EXIT.usage);
      history = h;
    }
    let segmentBytes = DEFAULT_SEGMENT_BYTES;
    if (values['segment-bytes'] !== undefined) {
      try {
        segmentBytes = parseSegmentBytes(String(values['segment-bytes']));
      } catch (e) {
        throw new CliError((e as Error).message, EXIT.usage);
      }
    }
    if (isPostgresUrl(url)) {
      const r = compactPg(url, { log: err, key: keyFromOptions(values) });
      if (values.json) printJson(r);
      else if (!r.compacted) out(`${redact(url)}: nothing to compact (${r.before.entries} entries, ${r.before.bytes} bytes)`);
      else {
        out(
          `Compacted ${redact(url)}: ${r.before.entries} entries / ${r.before.bytes} bytes -> ${r.after.entries} entries / ` +
            `${r.after.bytes} bytes (snapshot at version ${r.snapshotVersion}, head version ${r.after.head})`,
        );
      }
      return EXIT.ok;
    }
    const path = backupPath(url, process.cwd());
    const key = keyFromOptions(values, process.env, existsSync(path) ? path : null);
    const newKeyPath = typeof values['new-key-file'] === 'string' ? resolve(values['new-key-file']) : null;
    const encrypted = existsSync(path) && detectFormat(path) === 'v2' && (readSegmentHeader(path).flags! & FILE_FLAG_ENCRYPTED) !== 0;
    if (newKeyPath !== null && !encrypted) throw new CliError(`${path} is not an encrypted backup: --new-key-file rotates the key of an encrypted one`, EXIT.usage);
    // Holding the writer lock for the whole run is what makes this safe: a plugin cannot start writing
    // meanwhile, and opening it as a writer refuses while a plugin writes.
    const writer = openWriter(url, process.cwd(), { segmentBytes, key: encrypted ? key : null });
    let newKey: BackupKey | null = null;
    let keyMade = false;
    try {
      if (newKeyPath !== null) {
        try {
          keyMade = !existsSync(newKeyPath);
          newKey = keyMade ? writeKeyFile(newKeyPath) : keyFromKeyFile(newKeyPath);
        } catch (e) {
          throw new CliError(`cannot get the new key from --new-key-file ${newKeyPath}: ${(e as Error).message}; the backup is unchanged`);
        }
        if (newKey.fingerprint === key?.fingerprint) throw new CliError(`${newKeyPath} holds the backup's current key: nothing to rotate`, EXIT.usage);
      }
      for (const p of writer.repaired()) err(`repaired on open: ${p.message}`);
      if (!isReopenable(writer)) throw new CliError(`${path}: this backup type cannot be compacted`);
      const file = identityOf(path);
      const outcome = await runOfflineCompaction(
        {
          path,
          end: writer.endOffset(),
          file,
          // never swap in a file that is not smaller: a small backup's snapshot can outweigh its entries
          opts: { format: writer.format, history, segmentBytes, onlyIfSmaller: newKey === null, key: encrypted ? key : null, newKey },
        },
        // its progress lines are shown as progress is (a terminal, or --progress); --quiet drops all info
        (level, message) => {
          const progress = /^compaction: (replayed|writing the snapshot)/.test(message);
          if (level !== 'info') err(message);
          else if (progress ? (outputMode.progress ?? process.stderr.isTTY === true) : !outputMode.quiet) err(message);
        },
      );
      keyMade = false;
      const s = outcome.stats;
      let message: string;
      if (outcome.noGain) {
        message =
          `${path}: nothing to gain: compacted it would be ${outcome.noGain.wouldBeBytes} bytes, not less than its ` +
          `${s.before.backupsize} bytes (${s.before.version_count} entries); left unchanged`;
      } else if (!outcome.compacted) {
        message = `${path}: nothing to compact (${s.before.version_count} entries, ${s.before.backupsize} bytes, already a snapshot and the newest version)`;
      } else {
        message =
          `Compacted ${path}: ${s.before.version_count} entries / ${s.before.backupsize} bytes -> ` +
          `${s.after.version_count} entries / ${s.after.backupsize} bytes (head version ${outcome.head})` +
          (outcome.historyFile ? `; the previous backup is kept as ${outcome.historyFile}` : '');
      }
      if (values.json) {
        printJson({
          ...s,
          ok: true,
          result: outcome.compacted ? 'compacted' : outcome.noGain ? 'nothing-to-gain' : 'nothing-to-compact',
          message,
          path,
          ...(outcome.noGain ? { wouldBeBytes: outcome.noGain.wouldBeBytes } : {}),
        });
      } else out(message);
      if (newKey) {
        out(
          `The backup is now encrypted with the key in ${newKeyPath} (fingerprint ${newKey.fingerprint}). Set "encrypt": {"key_file": "${newKeyPath}"} ` +
            `in the node's backup.lock before starting it; keep a copy of that key away from the node` +
            (outcome.historyFile ? `. The history copy ${outcome.historyFile} is still encrypted with the old key` : ''),
        );
      }
    } finally {
      writer.close();
      // a key file made for a rotation that did not happen is not left behind
      if (keyMade && newKeyPath !== null) rmSync(newKeyPath, { force: true });
    }
    return EXIT.ok;
  },
};

