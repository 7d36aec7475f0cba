import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { address, Block, networks, script, Transaction } from 'bitcoinjs-lib';

/**
 * A regtest block chain kept in a directory, shared by every lightningd of a test through its own
 * backend plugin (bitcoin-backend.ts) and mined by the test itself. Blocks and transactions are real
 * Bitcoin serialisations (bitcoinjs-lib): the real regtest genesis, sha256d proof of work at bits
 * 0x207fffff, merkle roots and the segwit witness commitment, because lightningd checks them.
 *
 *   DIR/blocks/<height, 6 digits>.hex   one block per file, written to a temporary name then renamed
 *   DIR/mempool/<txid>.hex             transactions accepted by sendrawtransaction, not yet mined
 *
 * No reorgs: a block file never changes once written, so readers cache what they have read.
 * Scripts and signatures are not verified (no full node here); inputs must exist and be unspent.
 */

export const REGTEST_GENESIS_ID = '0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206';
const GENESIS_COINBASE =
  '01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d010445' +
  '5468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365636f6e' +
  '64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1a67130b7' +
  '105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac' +
  '00000000';
const REGTEST_BITS = 0x207fffff;
/** anyone-can-spend (OP_TRUE): the payout of blocks mined for no one in particular */
const OP_TRUE = Uint8Array.of(0x51);
const WITNESS_MAGIC = Uint8Array.of(0xaa, 0x21, 0xa9, 0xed);

export function genesisBlock(): Block {
  const b = new Block();
  b.version = 1;
  b.prevHash = new Uint8Array(32);
  b.timestamp = 1296688602;
  b.bits = REGTEST_BITS;
  b.nonce = 2;
  b.transactions = [Transaction.fromHex(GENESIS_COINBASE)];
  b.merkleRoot = Block.calculateMerkleRoot(b.transactions);
  if (b.getId() !== REGTEST_GENESIS_ID) throw new Error(`genesis block id ${b.getId()}, expected ${REGTEST_GENESIS_ID}`);
  return b;
}

const blockFile = (dir: string, h: number): string => join(dir, 'blocks', `${String(h).padStart(6, '0')}.hex`);

function writeAtomic(path: string, text: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, path);
}

export function initChain(dir: string): void {
  mkdirSync(join(dir, 'blocks'), { recursive: true });
  mkdirSync(join(dir, 'mempool'), { recursive: true });
  if (!existsSync(blockFile(dir, 0))) writeAtomic(blockFile(dir, 0), genesisBlock().toHex());
}

export interface Utxo {
  value: bigint;
  script: Uint8Array;
}

/** A reader's view of the chain: blocks read once, the UTXO set kept up to date as blocks appear. */
export class ChainView {
  private readonly blocks: { id: string; hex: string; block: Block }[] = [];
  readonly utxos = new Map<string, Utxo>();
  readonly confirmed = new Set<string>();

  constructor(readonly dir: string) {}

  /** Reads any blocks written since the last call; returns the tip height. */
  refresh(): number {
    for (;;) {
      const h = this.blocks.length;
      let hex: string;
      try {
        hex = readFileSync(blockFile(this.dir, h), 'utf8');
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') break;
        throw e;
      }
      const block = Block.fromHex(hex);
      for (const tx of block.transactions ?? []) applyTx(this.utxos, tx);
      for (const tx of block.transactions ?? []) this.confirmed.add(tx.getId());
      this.blocks.push({ id: block.getId(), hex, block });
    }
    if (this.blocks.length === 0) throw new Error(`${this.dir}: no genesis block (initChain was not run)`);
    return this.blocks.length - 1;
  }

  block(h: number): { id: string; hex: string; block: Block } | undefined {
    return this.blocks[h];
  }

  /** Transactions waiting in the mempool, in an order where each comes after those it spends. */
  mempool(): Transaction[] {
    const txs = new Map<string, Transaction>();
    for (const f of readdirSync(join(this.dir, 'mempool'))) {
      if (!f.endsWith('.hex')) continue;
      try {
        const tx = Transaction.fromHex(readFileSync(join(this.dir, 'mempool', f), 'utf8'));
        txs.set(tx.getId(), tx);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
    }
    const out: Transaction[] = [];
    const seen = new Set<string>();
    const visit = (tx: Transaction): void => {
      const id = tx.getId();
      if (seen.has(id)) return;
      seen.add(id);
      for (const i of tx.ins) {
        const parent = txs.get(txidOf(i.hash));
        if (parent) visit(parent);
      }
      out.push(tx);
    };
    for (const tx of txs.values()) visit(tx);
    return out;
  }

  /**
   * What bitcoind's sendrawtransaction decides, minus script checks: a transaction already known is
   * fine; one whose inputs are missing or already spent (in a block or the mempool) is refused.
   */
  submit(hex: string): { success: boolean; errmsg: string } {
    let tx: Transaction;
    try {
      tx = Transaction.fromHex(hex);
    } catch (e) {
      return { success: false, errmsg: `TX decode failed: ${(e as Error).message}` };
    }
    this.refresh();
    const id = tx.getId();
    if (this.confirmed.has(id)) return { success: true, errmsg: '' };
    const pool = this.mempool();
    if (pool.some((t) => t.getId() === id)) return { success: true, errmsg: '' };
    const available = new Map(this.utxos);
    for (const t of pool) applyTx(available, t);
    for (const i of tx.ins) {
      if (!available.has(`${txidOf(i.hash)}:${i.index}`)) {
        return { success: false, errmsg: `bad-txns-inputs-missingorspent (${txidOf(i.hash)}:${i.index})` };
      }
    }
    writeAtomic(join(this.dir, 'mempool', `${id}.hex`), tx.toHex());
    return { success: true, errmsg: '' };
  }
}

function txidOf(hash: Uint8Array): string {
  return Buffer.from(hash).reverse().toString('hex');
}

function applyTx(utxos: Map<string, Utxo>, tx: Transaction): void {
  if (!tx.isCoinbase()) for (const i of tx.ins) utxos.delete(`${txidOf(i.hash)}:${i.index}`);
  const id = tx.getId();
  tx.outs.forEach((o, n) => utxos.set(`${id}:${n}`, { value: o.value, script: o.script }));
}

export function outputScript(addr: string): Uint8Array {
  return address.toOutputScript(addr, networks.regtest);
}

/**
 * Mines `n` blocks on top of the tip; the first includes the mempool's valid transactions. The
 * coinbase pays the subsidy to `payTo` (an address) or to OP_TRUE. Returns the new tip height.
 */
export function mine(dir: string, n: number, payTo?: string): number {
  const view = new ChainView(dir);
  let tip = view.refresh();
  const payout = payTo === undefined ? OP_TRUE : outputScript(payTo);
  for (let k = 0; k < n; k++) {
    const prev = view.block(tip)!.block;
    const height = tip + 1;
    const txs: Transaction[] = [];
    const spent = new Set<string>();
    const available = new Map(view.utxos);
    if (k === 0) {
      for (const tx of view.mempool()) {
        const keys = tx.ins.map((i) => `${txidOf(i.hash)}:${i.index}`);
        if (keys.some((key) => !available.has(key) || spent.has(key))) continue; // conflict: left out
        for (const key of keys) spent.add(key);
        applyTx(available, tx);
        txs.push(tx);
      }
    }
    const cb = new Transaction();
    cb.version = 2;
    // BIP34: the height first in the coinbase script
    cb.addInput(new Uint8Array(32), 0xffffffff, 0xffffffff, script.compile([script.number.encode(height), Buffer.from('clnvault-e2e')]));
    cb.setWitness(0, [new Uint8Array(32)]);
    cb.addOutput(payout, 5_000_000_000n >> BigInt(Math.floor(height / 150)));
    const block = new Block();
    block.version = 0x20000000;
    block.prevHash = prev.getHash();
    block.timestamp = Math.max(prev.timestamp + 1, Math.floor(Date.now() / 1000));
    block.bits = REGTEST_BITS;
    block.transactions = [cb, ...txs];
    // BIP141 witness commitment: OP_RETURN aa21a9ed || hash256(witness merkle root || reserved value)
    const commit = Block.calculateMerkleRoot(block.transactions, true);
    cb.addOutput(script.compile([script.OPS['OP_RETURN']!, Buffer.concat([WITNESS_MAGIC, commit])]), 0n);
    block.merkleRoot = Block.calculateMerkleRoot(block.transactions);
    block.witnessCommit = commit;
    block.nonce = 0;
    while (!block.checkProofOfWork()) block.nonce++;
    if (!block.checkTxRoots()) throw new Error(`mined block ${height}: merkle roots do not check`);
    writeAtomic(blockFile(dir, height), block.toHex());
    for (const tx of txs) rmSync(join(dir, 'mempool', `${tx.getId()}.hex`), { force: true });
    tip = view.refresh();
  }
  return tip;
}

export function tipHeight(dir: string): number {
  return new ChainView(dir).refresh();
}

export function mempoolSize(dir: string): number {
  return readdirSync(join(dir, 'mempool')).filter((f) => f.endsWith('.hex')).length;
}
