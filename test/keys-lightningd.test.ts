/**
 * The node-seed key against a real Core Lightning (CLNVAULT_LIGHTNINGD): lightningd writes hsm_secret in
 * each layout it makes (BIP39 words, words with a passphrase, --recover from words; and it runs on a
 * 32-byte raw secret), and the 32-byte secret clnvault derives its key from gives the node id lightningd
 * reports. So the key a restore derives from the words alone is the key the plugin took from hsm_secret.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, test } from 'node:test';
import { hsmSecretLayout, KeyError, keyFromHsmSecret, keyFromMnemonic } from '../src/crypto/keys.js';
import { nodeSecretFromHsmSecret } from '../src/crypto/keys/hsm-secret.js';
import { initChain, mine } from './e2e/chain.js';
import { LightningNode } from './e2e/node.js';
import { scratchArea } from './helpers/cli.js';
import { FIXTURES } from './helpers/fixtures.js';
import { nodeIdOf } from './helpers/node-id.js';

const LIGHTNINGD = process.env.CLNVAULT_LIGHTNINGD;

if (!LIGHTNINGD) {
  test('hsm_secret layouts from a real lightningd', { skip: 'CLNVAULT_LIGHTNINGD is not set (path of a lightningd binary; see docs/e2e-lightningd.md)' }, () => {});
} else {
  if (!existsSync(LIGHTNINGD)) throw new Error(`CLNVAULT_LIGHTNINGD=${LIGHTNINGD}: no such file (it must name the lightningd binary)`);
  suite(LIGHTNINGD);
}

function suite(lightningd: string): void {
  const area = scratchArea('clnvault-keys-ln-');
  const live: LightningNode[] = [];
  after(() => area.cleanup());
  afterEach(async () => {
    for (const n of live.splice(0)) await n.kill().catch(() => undefined);
  });

  /** Starts lightningd (no clnvault plugin: only its hsm_secret matters here), returns getinfo's id and the file. */
  async function run(opts: { hsmSecret?: Buffer; stdin?: string; args?: string[] }): Promise<{ id: string; path: string }> {
    const root = area.dir();
    const chain = join(root, 'chain');
    initChain(chain);
    mine(chain, 1);
    const dir = join(root, 'node');
    mkdirSync(join(dir, 'regtest'), { recursive: true });
    const path = join(dir, 'regtest', 'hsm_secret');
    if (opts.hsmSecret) writeFileSync(path, opts.hsmSecret, { mode: 0o400 });
    const node = new LightningNode({ name: 'keys', dir, chainDir: chain, lightningd, importantPlugin: null, args: opts.args ?? [], ...(opts.stdin ? { stdin: opts.stdin } : {}) });
    live.push(node);
    await node.start();
    const id = (await node.rpc<{ id: string }>('getinfo')).id;
    await node.stop();
    live.splice(live.indexOf(node), 1);
    return { id, path };
  }

  const words = (path: string): string => readFileSync(path).subarray(32).toString('latin1');

  test('new node: BIP39 words without passphrase', { timeout: 120_000 }, async () => {
    const { id, path } = await run({});
    assert.equal(hsmSecretLayout(path), 'mnemonic');
    assert.equal(nodeIdOf(nodeSecretFromHsmSecret(path)), id);
    const k = keyFromHsmSecret(path);
    assert.deepEqual(keyFromMnemonic(words(path)).key, k.key, 'the words alone give the same key');
  });

  test('new node with --hsm-passphrase: BIP39 words with a (non-ASCII) passphrase', { timeout: 120_000 }, async () => {
    const pass = 'correct horse café';
    // lightningd asks twice (passphrase, then confirmation) when it creates the file
    const { id, path } = await run({ stdin: `${pass}\n${pass}\n`, args: ['--hsm-passphrase'] });
    assert.equal(hsmSecretLayout(path), 'mnemonic-passphrase');
    assert.equal(nodeIdOf(nodeSecretFromHsmSecret(path, pass)), id);
    const k = keyFromHsmSecret(path, pass);
    assert.deepEqual(keyFromMnemonic(words(path), pass).key, k.key);
    assert.throws(() => keyFromHsmSecret(path), KeyError);
    assert.throws(() => keyFromHsmSecret(path, pass.normalize('NFKD')), /wrong BIP39 passphrase/);
  });

  test('node on a 32-byte raw hsm_secret (made before v25.12)', { timeout: 120_000 }, async () => {
    const secret = randomBytes(32);
    const { id, path } = await run({ hsmSecret: secret });
    assert.equal(readFileSync(path).length, 32, 'lightningd kept the raw layout');
    assert.equal(hsmSecretLayout(path), 'plain');
    assert.equal(nodeIdOf(nodeSecretFromHsmSecret(path)), id);
    assert.equal(nodeIdOf(secret), id);
  });

  test('lightningd --recover from the recorded words is the recorded node, and gives the recorded key', { timeout: 120_000 }, async () => {
    const cases = (JSON.parse(readFileSync(join(FIXTURES, 'keys', 'cases.json'), 'utf8')) as { cases: Array<{ layout: string; words: string; nodeId: string; fingerprint: string }> }).cases;
    const c = cases.find((x) => x.layout === 'mnemonic')!;
    const { id, path } = await run({ args: [`--recover=${c.words}`] });
    assert.equal(id, c.nodeId);
    assert.equal(keyFromHsmSecret(path).fingerprint, c.fingerprint);
    assert.equal(keyFromMnemonic(c.words).fingerprint, c.fingerprint);
  });
}
