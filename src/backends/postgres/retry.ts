/**
 * The bounded reconnect policy: which failures are worth a reconnect, and how long to pause between
 * attempts. The overall bound is the caller's deadline ("remote_timeout" in backup.lock).
 */

/** SQLSTATE classes meaning "the connection or the server went away", not "your statement is wrong". */
const RETRY_SQLSTATE = /^(08|57P0[1-3]|53300)/;
const RETRY_ERRNO = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOENT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED']);
const RETRY_MESSAGE = /Connection terminated|connection is closed|Client was closed|not queryable|Query read timeout|timeout expired|the database system is (starting up|shutting down|in recovery)/i;

export function isConnectionError(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  if ((e as { retryable?: boolean }).retryable === true) return true;
  const code = (e as { code?: unknown }).code;
  if (typeof code === 'string' && (RETRY_SQLSTATE.test(code) || RETRY_ERRNO.has(code))) return true;
  return RETRY_MESSAGE.test(e.message);
}

/** 100 ms, doubling, at most 2 s: quick after a blip, gentle on a server that is restarting. */
export function nextDelay(attempt: number): number {
  return Math.min(100 * 2 ** attempt, 2000);
}
