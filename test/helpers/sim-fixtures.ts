/** Where the simulator tests find the recorded fixtures and the plugin, and their scratch dirs. */
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createBackup } from '../../src/backends/open.js';
import type { BackupFormat } from '../../src/engine/entries.js';
import { SimNode, type SimNodeOptions } from '../../src/sim/lightningd.js';

export { FIXTURES } from './fixtures.js';
import { FIXTURES } from './fixtures.js';
export const CLN = join(FIXTURES, 'cln-v26.06.6');

/** The real plugin, built next to this file's compiled copy; CLNVAULT_SIM_PLUGIN overrides it. */
export const PLUGIN = process.env.CLNVAULT_SIM_PLUGIN ?? fileURLToPath(new URL('../../src/plugin/main.js', import.meta.url));

export interface SimScratch {
  dir: string;
  netDir: string;
  backupUrl: string;
  node: SimNode;
  cleanup(): Promise<void>;
}

/**
 * A fresh network dir, an empty backup (what `clnvault init` creates) and a backup.lock pointing at it, and
 * a node on that dir.
 */
export function simScratch(options: Partial<SimNodeOptions> = {}, format: BackupFormat = 'v2'): SimScratch {
  const dir = mkdtempSync(join(tmpdir(), 'clnvault-sim-'));
  const netDir = join(dir, 'regtest');
  mkdirSync(netDir, { recursive: true });
  const backupUrl = pathToFileURL(join(dir, 'backup.clnvault')).href;
  createBackup(backupUrl, dir, format);
  SimNode.writeBackupLock(netDir, backupUrl);
  // A hung plugin must fail the test rather than hang it; lightningd itself has no such timeout.
  const node = new SimNode({ netDir, pluginPath: PLUGIN, hookSafetyTimeoutMs: 60_000, exitGraceMs: 5_000, ...options });
  return {
    dir,
    netDir,
    backupUrl,
    node,
    cleanup: async () => {
      await node.stop().catch(() => undefined);
      if (!process.env.CLNVAULT_KEEP_TMP) rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Replays recorded transcripts (paths under CLN) through the plugin on `netDir`, one lightningd run each
 * (restarted in between), and stops the node; every replay must succeed without a simulator violation.
 */
export async function replaySessions(netDir: string, transcripts: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<SimNode> {
  const node = new SimNode({ netDir, hookSafetyTimeoutMs: 60_000, env });
  for (const [i, t] of transcripts.entries()) {
    if (i > 0) await node.restart();
    const r = await node.replay(join(CLN, t));
    if (r.failure !== undefined) throw new Error(`replay of ${t} failed: ${JSON.stringify(r.failure)}`);
  }
  await node.stop();
  if (node.violations.length > 0) throw new Error(`simulator violations: ${JSON.stringify(node.violations)}`);
  return node;
}
