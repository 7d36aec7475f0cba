#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { err, EXIT, exitCodeOf, failureJson, out, printJson, type Command } from './common.js';
import { demoCommand } from './demo.js';
import { initCommand } from './init.js';
import { inspectCommand } from './inspect.js';
import { restoreCommand } from './restore.js';
import { compactCommand } from './compact.js';
import { statusCommand } from './status.js';
import { verifyCommand } from './verify.js';
import { serverCommand } from './server.js';
import { keygenCommand } from './keygen.js';

const commands: Command[] = [initCommand, restoreCommand, inspectCommand, verifyCommand, statusCommand, demoCommand, compactCommand, serverCommand, keygenCommand];

function usage(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    'Usage: clnvault <command> [options]',
    '',
    'Zero-loss backups for Core Lightning. The plugin (clnvault-plugin, loaded with',
    'important-plugin=) writes every database transaction to the backup before',
    'lightningd commits it; this tool sets backups up, checks and restores them.',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    "Run 'clnvault <command> --help' for a command's options and an example.",
    'Global: --debug prints stack traces on errors; --version prints the version.',
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    // asked for: stdout, exit 0; no command at all is a usage error: stderr, exit 2 (scripts read stdout)
    if (name === undefined) {
      err(usage());
      return EXIT.usage;
    }
    out(usage());
    return EXIT.ok;
  }
  if (name === '--version' || name === '-V') {
    const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string };
    out(pkg.version);
    return EXIT.ok;
  }
  const cmd = commands.find((c) => c.name === name);
  if (!cmd) {
    err(`clnvault: unknown command ${JSON.stringify(name)}`);
    err(usage());
    return EXIT.usage;
  }
  const debug = rest.includes('--debug');
  try {
    return await cmd.run(rest);
  } catch (e) {
    const code = exitCodeOf(e);
    if (rest.includes('--json')) printJson(failureJson(cmd.name, e));
    err(`clnvault ${cmd.name}: ${(e as Error).message}`);
    if (debug && e instanceof Error && e.stack) err(e.stack);
    return code;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    err(`clnvault: ${(e as Error).stack ?? String(e)}`);
    process.exitCode = EXIT.failed;
  },
);
