/**
 * Seeded generators of db_write traffic shaped like what Core Lightning v26.06.6 really sends (statement
 * text copied from the recorded fixtures: spacing, `x'..'` blobs, `''`-escaped text, trailing `;` or not).
 * Every statement is valid against the real CLN schema, which a node gets from `SimNode.boot()` (or by
 * replaying the start of a fixture). Same seed, same starting DB → same traffic.
 *
 * The generator keeps its own view of the DB (next ids, unpaid invoices, ...): build it again with
 * `Workload.fromDb` after a crash, since uncommitted batches advanced that view.
 */
import Database from '../engine/sqlite.js';
import type { DbWriteResult, SimNode } from './lightningd.js';

/** mulberry32: tiny, fast, good enough for test traffic, and the same on every platform. */
export class Prng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) b.writeUInt32LE((this.next() * 4294967296) >>> 0, i);
    for (; i < n; i++) b[i] = (this.next() * 256) & 0xff;
    return b;
  }
  hex(n: number): string {
    return this.bytes(n).toString('hex');
  }
  /** Log-uniform in [min, max]: as many 100-byte values as 100-kilobyte ones per decade. */
  logUniform(min: number, max: number): number {
    return Math.round(Math.exp(Math.log(min) + this.next() * (Math.log(max) - Math.log(min))));
  }
  /** An unsigned 63-bit decimal (CLN's groupids), beyond double precision. */
  u63(): string {
    return ((BigInt((this.next() * 2 ** 31) >>> 0) << 32n) | BigInt((this.next() * 2 ** 32) >>> 0)).toString();
  }
}

export type WorkBatch = { kind: 'tx'; statements: string[] } | { kind: 'pragma'; statement: string };

export type WorkKind = 'invoice' | 'invoice-paid' | 'payment' | 'payment-complete' | 'datastore' | 'datastore-delete' | 'rebuild';

export interface WorkItem {
  kind: WorkKind;
  batches: WorkBatch[];
}

export interface WorkloadOptions {
  /** Relative weights of each kind in `next()`. */
  mix?: Partial<Record<WorkKind, number>>;
  /** Datastore value sizes in bytes, drawn log-uniformly (default 100 B – 1 MiB). */
  datastoreSize?: [number, number];
  /** Distinct datastore keys the generator cycles through: bounds the DB size on long runs. */
  datastoreKeys?: number;
}

export const DEFAULT_MIX: Record<WorkKind, number> = {
  invoice: 35,
  'invoice-paid': 15,
  payment: 20,
  'payment-complete': 15,
  datastore: 12,
  'datastore-delete': 1,
  rebuild: 2,
};

interface State {
  vars: Set<string>;
  invoicesCreated: number;
  nextInvoiceId: number;
  invoicesUpdated: number;
  nextPayIndex: number;
  unpaid: Array<{ id: number; msat: number }>;
  sendpaysCreated: number;
  sendpaysUpdated: number;
  nextPaymentId: number;
  pending: Array<{ hash: string; groupid: string; msat: number }>;
  datastore: Set<string>;
  now: number;
}

const BECH32 = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l';
const WORDS = ['coffee', 'O\'Brien\'s tab', 'rent', 'zap ⚡', 'Grüße', '日本語', 'tab\there', 'semi;colon', 'x\'00ff\'', '-- not a comment', 'percent %s', '🎉', 'back\\slash', '"quoted"'];
const DS_PREFIX = Buffer.from('clnvault-sim\0', 'utf8');

/** SQL text literal the way CLN expands a bound string. */
export function sqlText(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

export class Workload {
  private readonly rng: Prng;
  private readonly mix: Array<[WorkKind, number]>;
  private readonly total: number;

  private constructor(
    private readonly st: State,
    seed: number,
    private readonly options: WorkloadOptions,
  ) {
    this.rng = new Prng(seed);
    const mix = { ...DEFAULT_MIX, ...(options.mix ?? {}) };
    this.mix = (Object.entries(mix) as Array<[WorkKind, number]>).filter(([, w]) => w > 0);
    this.total = this.mix.reduce((a, [, w]) => a + w, 0);
  }

  /** Reads the generator's starting point from a DB that already has the CLN schema. */
  static fromDb(dbPath: string, seed: number, options: WorkloadOptions = {}): Workload {
    const db = new Database(dbPath, { readonly: true, fileMustExist: true });
    try {
      const vars = new Map<string, number>();
      for (const r of db.prepare('SELECT name, intval FROM vars').all() as Array<{ name: string; intval: number | null }>) vars.set(r.name, r.intval ?? 0);
      const scalar = (sql: string): number => Number((db.prepare(sql).pluck().get() as number | null) ?? 0);
      const unpaid = db.prepare('SELECT id, msatoshi FROM invoices WHERE state=0 ORDER BY id').all() as Array<{ id: number; msatoshi: number | null }>;
      const pending = db.prepare('SELECT hex(payment_hash) AS h, groupid, msatoshi FROM payments WHERE status=0 ORDER BY id').safeIntegers(true).all() as Array<{ h: string; groupid: bigint; msatoshi: bigint }>;
      const keys = db.prepare('SELECT hex(key) AS k FROM datastore').pluck().all() as string[];
      const prefix = DS_PREFIX.toString('hex').toUpperCase();
      const st: State = {
        vars: new Set(vars.keys()),
        invoicesCreated: vars.get('last_invoices_created_index') ?? 0,
        nextInvoiceId: Math.max(vars.get('last_invoices_created_index') ?? 0, scalar('SELECT MAX(id) FROM invoices')) + 1,
        invoicesUpdated: vars.get('last_invoices_updated_index') ?? 0,
        nextPayIndex: vars.get('next_pay_index') ?? 1,
        unpaid: unpaid.map((r) => ({ id: r.id, msat: r.msatoshi ?? 1000 })),
        sendpaysCreated: vars.get('last_sendpays_created_index') ?? 0,
        sendpaysUpdated: vars.get('last_sendpays_updated_index') ?? 0,
        nextPaymentId: Math.max(vars.get('last_sendpays_created_index') ?? 0, scalar('SELECT MAX(id) FROM payments')) + 1,
        pending: pending.map((r) => ({ hash: r.h.toLowerCase(), groupid: r.groupid.toString(), msat: Number(r.msatoshi) })),
        datastore: new Set(keys.filter((k) => k.startsWith(prefix)).map((k) => k.toLowerCase())),
        // Timestamps inside the recorded range, advancing, so runs do not depend on the wall clock.
        now: 1796300000,
      };
      return new Workload(st, seed, options);
    } finally {
      db.close();
    }
  }

  next(): WorkItem {
    let r = this.rng.next() * this.total;
    for (const [kind, w] of this.mix) {
      r -= w;
      if (r < 0) return this.make(kind);
    }
    return this.make(this.mix[this.mix.length - 1]![0]);
  }

  make(kind: WorkKind): WorkItem {
    switch (kind) {
      case 'invoice':
        return this.invoice();
      case 'invoice-paid':
        return this.invoicePaid();
      case 'payment':
        return this.payment();
      case 'payment-complete':
        return this.paymentComplete();
      case 'datastore':
        return this.datastore();
      case 'datastore-delete':
        return this.datastoreDelete();
      case 'rebuild':
        return this.rebuild();
    }
  }

  /** `invoice` RPC: ~1 KB, the index update (plus its INSERT the first time), the invoice row. */
  invoice(): WorkItem {
    const st = this.st;
    const id = st.nextInvoiceId++;
    st.invoicesCreated++;
    const amount = this.rng.next() < 0.1 ? null : this.rng.int(1, 5_000_000) * 1000;
    const label = `sim-${id} ${this.rng.pick(WORDS)}`;
    const desc = `${this.rng.pick(WORDS)} ${this.rng.pick(WORDS)} #${id} ${'x'.repeat(this.rng.int(0, 120))}`;
    const bolt11 = `lnbcrt${amount === null ? '' : `${amount / 1000}n`}1p${this.bech32(this.rng.int(280, 420))}`;
    const s = [...this.setVar('last_invoices_created_index', st.invoicesCreated)];
    s.push(
      `INSERT INTO invoices            ( id, payment_hash, payment_key, state            , msatoshi, label, expiry_time            , pay_index, msatoshi_received            , paid_timestamp, bolt11, description, features, local_offer_id)     VALUES ( ${id}, x'${this.rng.hex(32)}', x'${this.rng.hex(32)}', 0            , ${amount ?? 'NULL'}, ${sqlText(label)}, ${this.tick() + 604800}            , NULL, NULL            , NULL, ${sqlText(bolt11)}, ${sqlText(desc)}, x'02000002024100', NULL);`,
    );
    st.unpaid.push({ id, msat: amount ?? 1000 });
    return { kind: 'invoice', batches: [{ kind: 'tx', statements: s }] };
  }

  /** An incoming payment settles an invoice (pay_index, updated_index). */
  invoicePaid(): WorkItem {
    const st = this.st;
    if (st.unpaid.length === 0) return this.invoice();
    const [inv] = st.unpaid.splice(this.rng.int(0, st.unpaid.length - 1), 1);
    const payIndex = st.nextPayIndex++;
    st.invoicesUpdated++;
    const s = [
      ...this.setVar('next_pay_index', st.nextPayIndex),
      ...this.setVar('last_invoices_updated_index', st.invoicesUpdated),
      `UPDATE invoices   SET state=1     , pay_index=${payIndex}     , msatoshi_received=${inv!.msat}     , paid_timestamp=${this.tick()}     , paid_txid=NULL     , paid_outnum=NULL     , updated_index=${st.invoicesUpdated} WHERE id=${inv!.id};`,
    ];
    return { kind: 'invoice-paid', batches: [{ kind: 'tx', statements: s }] };
  }

  /** `pay`/sendpay: a payments row in state pending. */
  payment(): WorkItem {
    const st = this.st;
    const id = st.nextPaymentId++;
    st.sendpaysCreated++;
    const hash = this.rng.hex(32);
    const groupid = this.rng.u63();
    const msat = this.rng.int(1, 10_000_000) * 1000;
    const bolt11 = `lnbcrt${msat / 1000}n1p${this.bech32(this.rng.int(280, 420))}`;
    const s = [
      ...this.setVar('last_sendpays_created_index', st.sendpaysCreated),
      `INSERT INTO payments (  id,  status,  payment_hash,  destination,  msatoshi,  timestamp,  path_secrets,  route_nodes,  route_channels,  msatoshi_sent,  description,  bolt11,  total_msat,  partid,  local_invreq_id,  groupid,  paydescription) VALUES (${id}, 0, x'${hash}', x'03${this.rng.hex(32)}', ${msat}, ${this.tick()}, NULL, NULL, NULL, ${msat}, NULL, ${sqlText(bolt11)}, ${msat}, 1, NULL, ${groupid}, NULL);`,
    ];
    st.pending.push({ hash, groupid, msat });
    return { kind: 'payment', batches: [{ kind: 'tx', statements: s }] };
  }

  paymentComplete(): WorkItem {
    const st = this.st;
    if (st.pending.length === 0) return this.payment();
    const [p] = st.pending.splice(0, 1);
    st.sendpaysUpdated++;
    const s = [
      ...this.setVar('last_sendpays_updated_index', st.sendpaysUpdated),
      `UPDATE payments SET status=1, completed_at=${this.tick()}, updated_index=${st.sendpaysUpdated} WHERE payment_hash=x'${p!.hash}' AND partid=1 AND groupid=${p!.groupid}`,
    ];
    return { kind: 'payment-complete', batches: [{ kind: 'tx', statements: s }] };
  }

  /** `datastore` RPC: insert, or replace an existing key (generation+1). */
  datastore(size?: number): WorkItem {
    const [min, max] = this.options.datastoreSize ?? [100, 1 << 20];
    const n = size ?? this.rng.logUniform(min, max);
    const key = this.dsKey(this.rng.int(0, (this.options.datastoreKeys ?? 40) - 1));
    const data = this.rng.hex(n);
    const stmt = this.st.datastore.has(key)
      ? `UPDATE datastore SET data=x'${data}', generation=generation+1 WHERE key=x'${key}';`
      : `INSERT INTO datastore VALUES (x'${key}', x'${data}', 0);`;
    this.st.datastore.add(key);
    return { kind: 'datastore', batches: [{ kind: 'tx', statements: [stmt] }] };
  }

  datastoreDelete(): WorkItem {
    const keys = [...this.st.datastore];
    if (keys.length === 0) return this.datastore();
    const key = this.rng.pick(keys);
    this.st.datastore.delete(key);
    return { kind: 'datastore-delete', batches: [{ kind: 'tx', statements: [`DELETE FROM datastore WHERE key=x'${key}';`] }] };
  }

  /**
   * CLN's table rebuild (its column-deletion migrations): `PRAGMA foreign_keys = OFF;` with the current
   * data_version, the rebuild as one transaction, `PRAGMA foreign_keys = ON;` with the rebuild's version.
   */
  rebuild(): WorkItem {
    return {
      kind: 'rebuild',
      batches: [
        { kind: 'pragma', statement: 'PRAGMA foreign_keys = OFF;' },
        {
          kind: 'tx',
          statements: [
            'ALTER TABLE datastore RENAME TO temp_datastore;',
            'CREATE TABLE datastore (  key BLOB,  data BLOB,  generation INTEGER,  PRIMARY KEY (key));',
            'INSERT INTO datastore SELECT key, data, generation FROM temp_datastore;',
            'DROP TABLE temp_datastore;',
          ],
        },
        { kind: 'pragma', statement: 'PRAGMA foreign_keys = ON;' },
      ],
    };
  }

  /** CLN's "set a var" helper: UPDATE, and an INSERT when the row did not exist yet. */
  private setVar(name: string, value: number): string[] {
    const s = [`UPDATE vars SET intval=${value} WHERE name='${name}';`];
    if (!this.st.vars.has(name)) {
      s.push(`INSERT INTO vars (name, intval) VALUES ('${name}', ${value});`);
      this.st.vars.add(name);
    }
    return s;
  }

  private dsKey(i: number): string {
    return Buffer.concat([DS_PREFIX, Buffer.from(`k${i}`, 'utf8')]).toString('hex');
  }

  private bech32(n: number): string {
    let s = '';
    for (let i = 0; i < n; i++) s += BECH32[Math.floor(this.rng.next() * 32)];
    return s;
  }

  private tick(): number {
    this.st.now += this.rng.int(0, 3);
    return this.st.now;
  }
}

export interface WorkloadRun {
  items: number;
  /** Transactional batches committed (each bumped data_version by one). */
  transactions: number;
  pragmas: number;
  /** Bytes of SQL sent. */
  bytes: number;
  /** Set when the plugin did not answer continue: the run stopped there, the node is down. */
  failure?: { item: number; detail: string };
}

/** Sends `count` generated items through the node, in order, each batch awaited like lightningd does. */
export async function runWorkload(node: SimNode, workload: Workload, count: number, onItem?: (item: WorkItem, index: number) => void): Promise<WorkloadRun> {
  const run: WorkloadRun = { items: 0, transactions: 0, pragmas: 0, bytes: 0 };
  for (let i = 0; i < count; i++) {
    const item = workload.next();
    onItem?.(item, i);
    for (const b of item.batches) {
      let r: DbWriteResult;
      if (b.kind === 'pragma') {
        r = await node.pragma(b.statement);
        run.bytes += b.statement.length;
      } else {
        r = await node.transaction(b.statements);
        for (const s of b.statements) run.bytes += s.length;
      }
      if (r.answered === 'error') {
        run.failure = { item: i, detail: r.detail };
        return run;
      }
      if (b.kind === 'pragma') run.pragmas++;
      else run.transactions++;
    }
    run.items++;
  }
  return run;
}
