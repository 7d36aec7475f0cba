import { resolve } from 'node:path';
import { KeyError, writeKeyFile } from '../crypto/keys.js';
import { CliError, COMMON_OPTIONS_HELP, EXIT, out, parse, printJson, type Command } from './common.js';

const help = `Usage: clnvault keygen [--json] PATH

Writes a new random backup key to PATH (a new file, mode 0600; never overwrites one)
and prints its fingerprint: 16 hex digits that name the key without revealing it
('clnvault inspect' shows the fingerprint a backup was encrypted with). The key itself
is never printed.

Give the file with --key-file PATH to 'clnvault init --encrypt' and to restore, verify,
inspect and compact. Without a key file, an encrypted backup's key comes from the node's
own hsm_secret (its BIP39 words restore it); a key file is needed when hsm_secret is
encrypted (lightningd --hsm-passphrase), or to keep the backup key apart from the node's.

The plugin reads the key file as lightningd's user: run keygen as that user, or chown
the file to it (it must stay mode 0600: a key file others can read is refused).

Keep a copy of the key file away from the backups (another machine, or printed on
paper: it is a short text file). Without it an encrypted backup cannot be restored;
with it and the backup, anyone can read the node's database.

Options:
  --json           print the result as JSON ({"ok": true, "path", "fingerprint", "kind"})
${COMMON_OPTIONS_HELP}
  -h, --help       this help

Exit codes: 0 written, 1 refused or failed (PATH exists, cannot write), 2 bad usage.

Example:
  clnvault keygen /root/clnvault.key`;

export const keygenCommand: Command = {
  name: 'keygen',
  summary: 'write a new random key file for encrypted backups',
  help,
  async run(argv) {
    const { values, positionals } = parse('keygen', argv, { json: { type: 'boolean' } }, { min: 1, max: 1, names: 'one PATH' });
    if (values.help) {
      out(help);
      return EXIT.ok;
    }
    const path = resolve(positionals[0]!);
    let fingerprint: string;
    try {
      fingerprint = writeKeyFile(path).fingerprint;
    } catch (e) {
      if (e instanceof KeyError) throw new CliError(e.message, EXIT.failed);
      throw e;
    }
    const message = `wrote a new key to ${path} (fingerprint ${fingerprint}); keep a copy away from the backups: without it they cannot be restored`;
    if (values.json) printJson({ ok: true, result: 'written', command: 'keygen', path, fingerprint, kind: 'key-file', message });
    else out(message);
    return EXIT.ok;
  },
};
