/**
 * postgresql://[user[:password]@]host[:port]/dbname?backup=NAME (or postgres://). Everything except
 * `backup` is handed to `pg` untouched, so libpq-style parameters (sslmode, host=/var/run/postgresql for a
 * Unix socket, application_name...) and PGPASSWORD / ~/.pgpass work exactly as `pg` supports them.
 */

export interface PgTarget {
  /** the URL without `backup=`, for `pg`'s connectionString */
  connectionString: string;
  /** the backup's name inside the database */
  backup: string;
  /** the URL as shown in logs and reports: any password replaced by *** */
  display: string;
}

/** Names go into log lines and error messages: keep them plain. */
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

export function isPostgresUrl(url: string): boolean {
  return /^postgres(ql)?:/i.test(url);
}

export class PgUrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UrlError';
  }
}

export function parsePgUrl(url: string): PgTarget {
  const m = /^(postgres(?:ql)?):\/\/([^?#]*)(\?[^#]*)?$/i.exec(url);
  if (m === null) {
    throw new PgUrlError(
      `${redact(url)} is not a PostgreSQL backup URL: write postgresql://[user[:password]@]host[:port]/dbname?backup=NAME`,
    );
  }
  const query = (m[3] ?? '').slice(1);
  const kept: string[] = [];
  let backup: string | null = null;
  for (const part of query.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = eq >= 0 ? part.slice(0, eq) : part;
    if (key === 'backup') {
      if (backup !== null) throw new PgUrlError(`${redact(url)} names the backup twice; give one backup=NAME`);
      try {
        backup = decodeURIComponent(eq >= 0 ? part.slice(eq + 1) : '');
      } catch {
        throw new PgUrlError(`${redact(url)}: backup= holds a malformed %-escape`);
      }
    } else {
      kept.push(part);
    }
  }
  if (backup === null || !NAME_RE.test(backup)) {
    throw new PgUrlError(
      `${redact(url)} needs backup=NAME (1-63 letters, digits, '_', '.', '-'; e.g. ?backup=node1): one database holds ` +
        `many nodes' backups, each under its own name`,
    );
  }
  const path = m[2]!;
  const slash = path.indexOf('/');
  if (slash < 0 || path.slice(slash + 1).length === 0) {
    throw new PgUrlError(`${redact(url)} names no database: write postgresql://host/dbname?backup=${backup}`);
  }
  const connectionString = `${m[1]!.toLowerCase()}://${path}${kept.length > 0 ? `?${kept.join('&')}` : ''}`;
  return { connectionString, backup, display: redact(url) };
}

/** A password in the URL must never reach a log line. */
export function redact(url: string): string {
  return url
    .replace(/^([a-z]+:\/\/[^:@/?#]*):[^@/?#]*@/i, '$1:***@')
    .replace(/([?&]password=)[^&#]*/gi, '$1***');
}
