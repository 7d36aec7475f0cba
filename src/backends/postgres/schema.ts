import type { ClientBase } from 'pg';

/**
 * The tables, in the schema `clnvault`. `schema_version` records which migrations ran; each release
 * appends migrations and never edits a published one, so `clnvault init` (or any later release's) brings
 * an older database up to date in place.
 *
 * Isolation between nodes is row-level security keyed on the backup's owner role: a node's role sees and
 * touches only the rows of backups it created (docs/postgresql.md has the GRANTs).
 */

export const SCHEMA = 'clnvault';
/**
 * transaction-level advisory lock serialising `clnvault init`'s migrations (only; the one-writer and
 * one-compaction rules are leases in the backup's row, lease.ts, which no other role can take)
 */
export const MIGRATE_LOCK_CLASS = 0x636c6e76; // 'clnv'
/** snapshot bytes are stored in rows of this size: never the whole database in one value or in memory */
export const CHUNK_BYTES = 1 << 20;
export const KIND_CHANGE = 0;
export const KIND_SNAPSHOT = 1;

/** exported for the migration test, which builds an older schema with the published steps */
export const MIGRATIONS: readonly string[] = [
  // 1: first release
  `CREATE TABLE clnvault.backups (
     id serial PRIMARY KEY,
     name text NOT NULL UNIQUE,
     owner name NOT NULL DEFAULT current_user,
     created_at timestamptz NOT NULL DEFAULT now()
   );
   -- seq orders a backup's entries (the file order of the file formats); a snapshot written by compaction
   -- shares the seq of the last entry it covers and sorts after it (kind 1 > 0), so the order stays right
   -- while both exist, before the superseded rows are deleted.
   CREATE TABLE clnvault.entries (
     backup_id integer NOT NULL REFERENCES clnvault.backups(id) ON DELETE CASCADE,
     seq bigint NOT NULL,
     kind smallint NOT NULL CHECK (kind IN (0, 1)),
     version bigint NOT NULL CHECK (version >= 0 AND version < 4294967296),
     pragma_only boolean NOT NULL DEFAULT false,
     statements text[],
     bytes bigint NOT NULL,
     chunks integer NOT NULL DEFAULT 0,
     created_at timestamptz NOT NULL DEFAULT now(),
     PRIMARY KEY (backup_id, seq, kind),
     CHECK ((kind = 0) = (statements IS NOT NULL))
   );
   -- The version rule in the database too: lightningd bumps data_version with every transaction, so two
   -- stored transactions of one backup never share it. PRAGMA-only batches repeat the version they follow,
   -- and a snapshot shares the version of the last change it covers, hence the partial index.
   CREATE UNIQUE INDEX entries_one_per_version ON clnvault.entries (backup_id, version) WHERE kind = 0 AND NOT pragma_only;
   CREATE TABLE clnvault.snapshot_chunks (
     backup_id integer NOT NULL,
     seq bigint NOT NULL,
     kind smallint NOT NULL DEFAULT 1 CHECK (kind = 1),
     chunk integer NOT NULL,
     data bytea NOT NULL,
     PRIMARY KEY (backup_id, seq, chunk),
     FOREIGN KEY (backup_id, seq, kind) REFERENCES clnvault.entries(backup_id, seq, kind) ON DELETE CASCADE
   );
   ALTER TABLE clnvault.backups ENABLE ROW LEVEL SECURITY;
   ALTER TABLE clnvault.entries ENABLE ROW LEVEL SECURITY;
   ALTER TABLE clnvault.snapshot_chunks ENABLE ROW LEVEL SECURITY;
   CREATE POLICY own_backups ON clnvault.backups USING (owner = current_user) WITH CHECK (owner = current_user);
   -- the subquery sees only the caller's own backups (the policy above applies to it)
   CREATE POLICY own_entries ON clnvault.entries USING (backup_id IN (SELECT id FROM clnvault.backups));
   CREATE POLICY own_chunks ON clnvault.snapshot_chunks USING (backup_id IN (SELECT id FROM clnvault.backups));
   -- Node roles are members of clnvault_node (docs/postgresql.md); without that role only the owner uses the tables.
   DO $$ BEGIN
     IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clnvault_node') THEN
       GRANT USAGE ON SCHEMA clnvault TO clnvault_node;
       GRANT SELECT ON clnvault.schema_version TO clnvault_node;
       GRANT SELECT, INSERT, DELETE ON clnvault.backups, clnvault.entries, clnvault.snapshot_chunks TO clnvault_node;
       GRANT USAGE ON SEQUENCE clnvault.backups_id_seq TO clnvault_node;
     END IF;
   END $$;`,
  // 2: one writer (and one compaction) per backup as a lease in the backup's row (lease.ts) instead of an
  // advisory lock, which any role could take for another's backup. UPDATE is granted on these columns only.
  `ALTER TABLE clnvault.backups
     ADD COLUMN writer_pid integer,
     ADD COLUMN writer_started timestamptz,
     ADD COLUMN compact_pid integer,
     ADD COLUMN compact_started timestamptz;
   DO $$ BEGIN
     IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'clnvault_node') THEN
       GRANT UPDATE (writer_pid, writer_started, compact_pid, compact_started) ON clnvault.backups TO clnvault_node;
     END IF;
   END $$;`,
  // 3: encrypted backups (docs/encryption.md). The backup row says, readable without the key, that it is
  // encrypted and with which key (kind and fingerprint), and holds the random 16-byte id that every
  // record's authentication covers. An encrypted change keeps its whole stored payload (prefix,
  // ciphertext, tag) in `record` and has no statements; an encrypted snapshot keeps its prefix and tag in
  // `record` and its ciphertext in snapshot_chunks. Version, kind, seq and pragma_only stay plaintext, so
  // the version rules, the rewind, compaction planning and the lease work without the key.
  `ALTER TABLE clnvault.backups
     ADD COLUMN uid bytea CHECK (uid IS NULL OR length(uid) = 16),
     ADD COLUMN enc_kind smallint CHECK (enc_kind IS NULL OR enc_kind BETWEEN 1 AND 255),
     ADD COLUMN enc_fingerprint bytea CHECK (enc_fingerprint IS NULL OR length(enc_fingerprint) = 8),
     ADD CONSTRAINT backups_enc_whole CHECK ((enc_kind IS NULL) = (enc_fingerprint IS NULL) AND (enc_kind IS NULL OR uid IS NOT NULL));
   ALTER TABLE clnvault.entries ADD COLUMN record bytea;
   -- migration 1's unnamed table CHECK ((kind = 0) = (statements IS NOT NULL)) is called entries_check
   ALTER TABLE clnvault.entries DROP CONSTRAINT entries_check;
   ALTER TABLE clnvault.entries ADD CONSTRAINT entries_payload CHECK (
     CASE WHEN kind = 0 THEN (statements IS NULL) <> (record IS NULL) ELSE statements IS NULL END);`,
  // 4: less work per db_write INSERT, same rules. The foreign key to backups
  // locked the backup's row (FOR KEY SHARE, a WAL record) on every insert; row-level security already
  // confines a role's rows to its own backups, and removing a backup deletes its entries in the same
  // transaction (worker.ts, 'drop'). The policies' IN (SELECT id FROM backups) read every backup row the
  // role can see per statement; EXISTS finds the one row by its primary key. Who may touch what is unchanged.
  `ALTER TABLE clnvault.entries DROP CONSTRAINT entries_backup_id_fkey;
   DROP POLICY own_entries ON clnvault.entries;
   CREATE POLICY own_entries ON clnvault.entries USING (EXISTS (SELECT 1 FROM clnvault.backups b WHERE b.id = entries.backup_id));
   DROP POLICY own_chunks ON clnvault.snapshot_chunks;
   CREATE POLICY own_chunks ON clnvault.snapshot_chunks USING (EXISTS (SELECT 1 FROM clnvault.backups b WHERE b.id = snapshot_chunks.backup_id));`,
  // 5: less work per db_write INSERT, same rules. PostgreSQL parses and plans a table's CHECK constraints
  // again in every statement that runs them (from their stored text); a domain's checks are planned once per
  // session (its type cache) and only instantiated per statement. Backend CPU per INSERT on the development
  // VM, no commit cost: 22.2 us with the two CHECKs below, 18.5 us with these domains (bench/postgres-schema.ts,
  // docs/postgresql.md "Where the time goes"). The domains start without their checks so that
  // changing the column types rewrites no rows (the version index is rebuilt: its predicate names kind);
  // adding the checks then validates the existing rows.
  `CREATE DOMAIN clnvault.entry_kind AS smallint;
   CREATE DOMAIN clnvault.entry_version AS bigint;
   ALTER TABLE clnvault.entries
     ALTER COLUMN kind TYPE clnvault.entry_kind,
     ALTER COLUMN version TYPE clnvault.entry_version,
     DROP CONSTRAINT entries_kind_check,
     DROP CONSTRAINT entries_version_check;
   ALTER DOMAIN clnvault.entry_kind ADD CONSTRAINT entry_kind_check CHECK (VALUE IN (0, 1));
   ALTER DOMAIN clnvault.entry_version ADD CONSTRAINT entry_version_check CHECK (VALUE >= 0 AND VALUE < 4294967296);`,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

export class PgSchemaError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PgSchemaError';
  }
}

/** The schema version the database holds, 0 when clnvault's tables do not exist yet. */
export async function schemaVersion(c: ClientBase): Promise<number> {
  const t = await c.query(`SELECT to_regclass('clnvault.schema_version') IS NOT NULL AS present`);
  if (!t.rows[0].present) return 0;
  const r = await c.query(`SELECT coalesce(max(version), 0) AS v FROM clnvault.schema_version`);
  return Number(r.rows[0].v);
}

/** Refuses a database this release cannot use, naming the fix. */
export async function checkSchema(c: ClientBase, where: string): Promise<void> {
  const v = await schemaVersion(c);
  if (v === 0) {
    throw new PgSchemaError(`${where} has no clnvault tables: create the backup first with 'clnvault init ${where}'`);
  }
  if (v < SCHEMA_VERSION) {
    throw new PgSchemaError(
      `${where} holds clnvault schema version ${v}, this release needs ${SCHEMA_VERSION}: run 'clnvault init' of this ` +
        `release once with a role that owns the clnvault schema (it migrates in place)`,
    );
  }
  if (v > SCHEMA_VERSION) {
    throw new PgSchemaError(`${where} holds clnvault schema version ${v}, newer than this release knows (${SCHEMA_VERSION}): upgrade clnvault`);
  }
}

/**
 * Creates or migrates the schema in one transaction, serialised by a transaction-level advisory lock
 * so that two `clnvault init` running at once do not both create it.
 */
export async function migrate(c: ClientBase): Promise<{ from: number; to: number }> {
  await c.query('BEGIN');
  try {
    await c.query('SELECT pg_advisory_xact_lock($1, 0)', [MIGRATE_LOCK_CLASS]);
    await c.query(`CREATE SCHEMA IF NOT EXISTS ${SCHEMA}`);
    await c.query(`CREATE TABLE IF NOT EXISTS clnvault.schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`);
    const from = await schemaVersion(c);
    if (from > SCHEMA_VERSION) {
      throw new PgSchemaError(`the database holds clnvault schema version ${from}, newer than this release knows (${SCHEMA_VERSION}): upgrade clnvault`);
    }
    for (let v = from + 1; v <= SCHEMA_VERSION; v++) {
      await c.query(MIGRATIONS[v - 1]!);
      await c.query('INSERT INTO clnvault.schema_version(version) VALUES ($1)', [v]);
    }
    await c.query('COMMIT');
    return { from, to: SCHEMA_VERSION };
  } catch (e) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}
