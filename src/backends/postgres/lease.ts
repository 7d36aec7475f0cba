import type { ClientBase } from 'pg';

/**
 * "One writer per backup" (and "one compaction per backup") as a lease in the backup's own row, not an
 * advisory lock: advisory locks ignore grants and row-level security, so any role of the cluster could
 * take another node's lock and keep that node from starting. The row is visible and updatable only by
 * the backup's owner role (RLS on clnvault.backups, UPDATE granted on the lease columns only), so only
 * that role can hold or take its lease.
 *
 * The lease names the holding session: its server pid and that session's start time (a pid alone can be
 * reused). It is free when empty or when no such session is alive any more (pg_stat_activity shows every
 * column of sessions of the caller's own role), so a holder that crashed, was killed or lost its
 * connection never blocks the next start once the server has ended its session; a failover to a standby
 * frees it too (the new primary has no such session).
 */

export type LeaseKind = 'writer' | 'compact';

const COLUMNS: Record<LeaseKind, { pid: string; started: string }> = {
  writer: { pid: 'writer_pid', started: 'writer_started' },
  compact: { pid: 'compact_pid', started: 'compact_started' },
};

export interface LeaseHolder {
  pid: number;
  applicationName: string;
  addr: string | null;
  since: Date;
}

/**
 * Takes the lease for this session, or returns who holds it. One short transaction: the row lock
 * serialises two sessions taking it at once, and pg_stat_activity is read only after that lock is held
 * (its snapshot is per transaction), so a holder that committed just before is seen alive.
 */
export async function takeLease(c: ClientBase, id: number, kind: LeaseKind): Promise<{ ok: true } | { ok: false; holder: LeaseHolder | null }> {
  const col = COLUMNS[kind];
  await c.query('BEGIN');
  try {
    const row = await c.query('SELECT id FROM clnvault.backups WHERE id = $1 FOR UPDATE', [id]);
    if (row.rows.length === 0) throw new Error(`backup id ${id} is not visible to this role`);
    // compared in SQL: backend_start has microseconds, a JavaScript Date only milliseconds
    const alive = await c.query(
      `SELECT a.pid, a.application_name, a.client_addr::text AS addr, a.backend_start
         FROM clnvault.backups b JOIN pg_stat_activity a ON a.pid = b.${col.pid} AND a.backend_start = b.${col.started}
        WHERE b.id = $1 AND a.pid <> pg_backend_pid()`,
      [id],
    );
    if (alive.rows.length > 0) {
      await c.query('ROLLBACK');
      const h = alive.rows[0];
      return { ok: false, holder: { pid: Number(h.pid), applicationName: h.application_name ?? '', addr: h.addr ?? null, since: new Date(h.backend_start) } };
    }
    await c.query(
      `UPDATE clnvault.backups SET ${col.pid} = pg_backend_pid(),
              ${col.started} = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
        WHERE id = $1`,
      [id],
    );
    await c.query('COMMIT');
    return { ok: true };
  } catch (e) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}

/** Gives the lease back if this session still holds it (a session that ends frees it anyway). */
export async function releaseLease(c: ClientBase, id: number, kind: LeaseKind): Promise<void> {
  const col = COLUMNS[kind];
  await c.query(`UPDATE clnvault.backups SET ${col.pid} = NULL, ${col.started} = NULL WHERE id = $1 AND ${col.pid} = pg_backend_pid()`, [id]);
}

export function describeHolder(h: LeaseHolder | null): string {
  if (h === null) return '';
  return ` (held by ${h.applicationName || 'a session'}${h.addr ? ` from ${h.addr}` : ''}, server pid ${h.pid}, since ${h.since.toISOString()})`;
}
