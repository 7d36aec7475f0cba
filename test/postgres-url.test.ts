/** postgresql: URLs: what reaches `pg`, what reaches logs, and the refusals (no server needed). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isPostgresUrl, parsePgUrl, redact } from '../src/backends/postgres/url.js';
import { parseBackupUrl } from '../src/backends/url.js';

describe('postgresql: URLs', () => {
  it('takes backup= out and hands everything else to pg unchanged', () => {
    const t = parsePgUrl('postgresql://node1:s3cret@db.example:6432/clnvault?sslmode=verify-full&backup=node1&application_name=x');
    assert.equal(t.backup, 'node1');
    assert.equal(t.connectionString, 'postgresql://node1:s3cret@db.example:6432/clnvault?sslmode=verify-full&application_name=x');
    assert.equal(t.display, 'postgresql://node1:***@db.example:6432/clnvault?sslmode=verify-full&backup=node1&application_name=x');
  });

  it('accepts postgres://, a Unix socket directory as host=, and no user or password (PGPASSWORD, .pgpass)', () => {
    const t = parsePgUrl('POSTGRES:///clnvault?host=/var/run/postgresql&backup=n.1-a_b');
    assert.equal(t.connectionString, 'postgres:///clnvault?host=/var/run/postgresql');
    assert.equal(t.backup, 'n.1-a_b');
    assert.equal(isPostgresUrl('postgres://h/d?backup=x'), true);
    assert.equal(isPostgresUrl('file:///x'), false);
    assert.equal(parseBackupUrl('postgresql://h/d?backup=x', '/').scheme, 'postgresql');
  });

  it('refuses a URL without a usable backup name or database, never echoing the password', () => {
    for (const bad of [
      'postgresql://u:pw@h/db',
      'postgresql://u:pw@h/db?backup=',
      'postgresql://u:pw@h/db?backup=a%20b',
      'postgresql://u:pw@h/db?backup=%zz',
      'postgresql://u:pw@h/db?backup=a&backup=b',
      'postgresql://u:pw@h/?backup=a',
      'postgresql://u:pw@h?backup=a',
      `postgresql://u:pw@h/db?backup=${'x'.repeat(64)}`,
    ]) {
      assert.throws(() => parsePgUrl(bad), (e: Error) => !e.message.includes(':pw@') && /backup|database|URL/.test(e.message), bad);
    }
  });

  it('redacts passwords in the user part and in password= parameters', () => {
    assert.equal(redact('postgresql://u:p%40ss@h/db?backup=a'), 'postgresql://u:***@h/db?backup=a');
    assert.equal(redact('postgresql://h/db?backup=a&password=zz&x=1'), 'postgresql://h/db?backup=a&password=***&x=1');
    assert.equal(redact('file:///mnt/x.bkp'), 'file:///mnt/x.bkp');
  });
});
