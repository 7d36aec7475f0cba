/**
 * A lone remote destination is driven from the plugin's own event loop (src/plugin/main.ts, serveRemote;
 * src/backends/socket/async-writer.ts). What that path must keep from the blocking one: one message at a
 * time in order (a request that arrives while a db_write waits for the server's ACK is answered after it),
 * and the re-baseline taken inside the first hook. Real plugin process, real TCP on 127.0.0.1, a minimal
 * server of the reference's shape that holds its ACKs back.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { PKT } from '../src/backends/socket/protocol.js';
import { scratchArea } from './helpers/cli.js';
import { killAllPlugins, PluginProc } from './helpers/plugin-proc.js';
import { referenceShapedServer } from './helpers/socket-rig.js';

const area = scratchArea('clnvault-remote-loop-');
after(() => {
  killAllPlugins();
  area.cleanup();
});

/** Answers as backup-cli server does, each ACK `delayMs` late; records the packet types it received. */
const slowServer = (delayMs: number): ReturnType<typeof referenceShapedServer> => referenceShapedServer({ ackDelayMs: delayMs });

describe('a lone remote destination on the event loop', () => {
  it('a request arriving while a db_write waits for the ACK is answered after that db_write, and sees it', { timeout: 60_000 }, async () => {
    const { server, port } = await slowServer(400);
    try {
      const netDir = area.dir();
      writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: `socket:127.0.0.1:${port}`, remote_timeout: 10 }));
      const plugin = new PluginProc(netDir);
      await plugin.call('m', 'getmanifest', {});
      // lightningd itself never sends anything while it waits in the hook; the plugin must not rely on that
      plugin.request('w1', 'db_write', { data_version: 1, writes: ["UPDATE vars SET intval=1 WHERE name='data_version'"] });
      plugin.request('s', 'clnvault-status', {});
      plugin.request('w2', 'db_write', { data_version: 2, writes: ["UPDATE vars SET intval=2 WHERE name='data_version'"] });
      const w2 = await plugin.reply('w2', 20_000);
      assert.deepEqual(w2.result, { result: 'continue' }, JSON.stringify(w2));
      const order = plugin.messages.filter((m) => m.method === undefined && m.id !== 'm').map((m) => m.id);
      assert.deepEqual(order, ['w1', 's', 'w2']);
      const status = (await plugin.reply('s')).result as { writes_this_run: number; head_version: number };
      assert.equal(status.writes_this_run, 1);
      assert.equal(status.head_version, 1);
      await plugin.close();
      assert.deepEqual(plugin.garbage, []);
    } finally {
      server.close();
    }
  });

  it("the node's database ahead of the backup: the first hook sends a snapshot of its committed state, then the write", { timeout: 60_000 }, async () => {
    const { server, port, seen } = await slowServer(50);
    try {
      const netDir = area.dir();
      const db = new Database(join(netDir, 'lightningd.sqlite3'));
      db.exec("CREATE TABLE vars (name TEXT, val TEXT, intval INTEGER); INSERT INTO vars VALUES ('data_version', NULL, 7)");
      db.close();
      writeFileSync(join(netDir, 'backup.lock'), JSON.stringify({ backend_url: `socket:127.0.0.1:${port}`, remote_timeout: 10 }));
      const plugin = new PluginProc(netDir);
      await plugin.call('m', 'getmanifest', {});
      const r = await plugin.call('w', 'db_write', { data_version: 8, writes: ["UPDATE vars SET intval=8 WHERE name='data_version'"] });
      assert.deepEqual(r.result, { result: 'continue' }, JSON.stringify(r));
      await plugin.waitForLog(/re-baselined: the node's database was at version 7 but the backup only at 0/);
      assert.deepEqual(seen, [PKT.REQ_METADATA, PKT.SNAPSHOT, PKT.CHANGE]);
      const status = (await plugin.call('s', 'clnvault-status', {})).result as { rebaselined: unknown; head_version: number };
      assert.deepEqual(status.rebaselined, { from: 0, to: 7 });
      assert.equal(status.head_version, 8);
      await plugin.close();
    } finally {
      server.close();
    }
  });
});
