import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PKT } from '../../src/backends/socket/protocol.js';
import { FIXTURES } from './fixtures.js';
import { runCli } from './cli.js';
import type { PluginProc } from './plugin-proc.js';
import { decoded, parsePackets, ServerProc } from './socket-rig.js';

/**
 * clnvault's own mode in tests (`clnvault server --dir`): nodes, the server, the recorded reference
 * session's db_write calls, and writing them through a server SIGKILLed and restarted along the way.
 */

/** The db_write calls of the recorded reference session (its CHANGE packets). */
export function recordedCalls(): Array<{ data_version: number; writes: string[] }> {
  return parsePackets(readFileSync(join(FIXTURES, 'reference-socket', 'c2s.bin')))
    .packets.filter((p) => p.type === PKT.CHANGE)
    .map((p) => {
      const d = decoded(p);
      return { data_version: d.version!, writes: d.body.toString('utf8').split('\u0000') };
    });
}

/** `clnvault server add-node`: the node's key (hex). */
export async function addNode(dir: string, name: string): Promise<string> {
  const r = await runCli(['server', 'add-node', '--dir', dir, name]);
  assert.equal(r.code, 0, r.stderr);
  const m = /echo ([0-9a-f]{64}) >/.exec(r.stdout);
  assert.ok(m, r.stdout);
  return m[1]!;
}

export async function nodesServer(dir: string, port = 0): Promise<{ proc: ServerProc; port: number }> {
  const proc = new ServerProc('', 0, [], undefined, undefined, ['--dir', dir, '--listen', `127.0.0.1:${port}`]);
  return { proc, port: await proc.ready };
}

/**
 * Sends every recorded call through `plugin`, SIGKILLing the server now and then while a write is on its
 * way or being stored (it may or may not have landed) and restarting it on the same port; every write
 * must be acknowledged. Returns the server left running.
 */
export async function writeThroughServerKills(plugin: PluginProc, dir: string, port: number, proc: ServerProc): Promise<ServerProc> {
  for (const [i, c] of recordedCalls().entries()) {
    plugin.request(`w${i}`, 'db_write', c);
    if (i % 4 === 2) {
      await new Promise((r) => setTimeout(r, (i * 3) % 7));
      await proc.kill('SIGKILL');
      await new Promise((r) => setTimeout(r, 300));
      proc = (await nodesServer(dir, port)).proc;
    }
    const r = await plugin.reply(`w${i}`, 40_000);
    assert.deepEqual(r.result, { result: 'continue' }, JSON.stringify(r));
  }
  assert.ok(plugin.logs().some((l) => /reconnected to 127\.0\.0\.1/.test(l)), plugin.logs().join('\n'));
  return proc;
}
