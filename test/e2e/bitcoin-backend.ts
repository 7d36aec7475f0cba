#!/usr/bin/env node
import { writeSync } from 'node:fs';
import { MessageSplitter } from '../../src/plugin/framing.js';
import { ChainView } from './chain.js';

/**
 * A Bitcoin backend plugin for lightningd in place of bcli (`--disable-plugin bcli --plugin=<this>`),
 * serving the regtest chain of chain.ts from the directory named by CLNVAULT_E2E_CHAIN. Answer shapes
 * follow Core Lightning's plugins/bcli.c; lightningd checks every block's proof of work and merkle root.
 */

// `node --test dist/test/` loads every file under it, this one too: as a test it has nothing to do
if (process.env.NODE_TEST_CONTEXT !== undefined) process.exit(0);
const dir = process.env.CLNVAULT_E2E_CHAIN;
if (!dir) {
  process.stderr.write('bitcoin-backend: CLNVAULT_E2E_CHAIN (the chain directory) is not set\n');
  process.exit(1);
}
const view = new ChainView(dir);

type Params = Record<string, unknown> | unknown[] | undefined;

function param(p: Params, name: string, pos: number): unknown {
  if (Array.isArray(p)) return p[pos];
  return p?.[name];
}

const METHODS = ['getchaininfo', 'estimatefees', 'getrawblockbyheight', 'getutxout', 'sendrawtransaction'];

function call(method: string, p: Params): unknown {
  switch (method) {
    case 'getmanifest':
      return {
        options: [],
        rpcmethods: METHODS.map((name) => ({ name, usage: '', description: `regtest ${name} (clnvault e2e backend)` })),
        dynamic: false,
      };
    case 'init':
      return {};
    case 'getchaininfo': {
      const tip = view.refresh();
      return { chain: 'regtest', headercount: tip, blockcount: tip, ibd: false };
    }
    case 'estimatefees':
      // sat/kVB, targets ascending and rates not increasing, as bcli reports them
      return {
        feerate_floor: 1000,
        feerates: [
          { blocks: 2, feerate: 7500 },
          { blocks: 6, feerate: 5000 },
          { blocks: 12, feerate: 3750 },
          { blocks: 100, feerate: 1250 },
        ],
      };
    case 'getrawblockbyheight': {
      const h = Number(param(p, 'height', 0));
      view.refresh();
      const b = Number.isSafeInteger(h) && h >= 0 ? view.block(h) : undefined;
      return b === undefined ? { blockhash: null, block: null } : { blockhash: b.id, block: b.hex };
    }
    case 'getutxout': {
      view.refresh();
      const u = view.utxos.get(`${String(param(p, 'txid', 0))}:${Number(param(p, 'vout', 1))}`);
      return u === undefined ? { amount: null, script: null } : { amount: `${u.value}sat`, script: Buffer.from(u.script).toString('hex') };
    }
    case 'sendrawtransaction':
      return view.submit(String(param(p, 'tx', 0)));
    default:
      throw Object.assign(new Error(`Method not found: ${method}`), { code: -32601 });
  }
}

function send(obj: unknown): void {
  const buf = Buffer.from(JSON.stringify(obj) + '\n\n');
  try {
    for (let off = 0; off < buf.length; ) off += writeSync(1, buf, off);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EPIPE') process.exit(0); // lightningd is gone
    throw e;
  }
}

const splitter = new MessageSplitter();
process.stdin.on('data', (chunk: Buffer) => {
  splitter.push(chunk, (buf, start, end) => {
    const msg = JSON.parse(buf.toString('utf8', start, end)) as { id?: unknown; method?: string; params?: Params };
    if (msg.id === undefined || typeof msg.method !== 'string') return; // notifications: none subscribed
    try {
      send({ jsonrpc: '2.0', id: msg.id, result: call(msg.method, msg.params) });
    } catch (e) {
      send({ jsonrpc: '2.0', id: msg.id, error: { code: (e as { code?: number }).code ?? -32000, message: (e as Error).message } });
    }
  });
});
process.stdin.on('end', () => process.exit(0));
