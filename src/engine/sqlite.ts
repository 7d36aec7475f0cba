import { createRequire } from 'node:module';
import type BetterSqlite3 from 'better-sqlite3';

/**
 * better-sqlite3, loaded with require() rather than `import`: importing a CommonJS package from ESM makes
 * Node scan its sources for named exports first, ~10 ms that the plugin would pay on every lightningd
 * start (the start-up budget is 150 ms, of which Node itself takes ~40).
 */
const Database = createRequire(import.meta.url)('better-sqlite3') as typeof BetterSqlite3;
// eslint-disable-next-line @typescript-eslint/no-namespace
declare namespace Database {
  type Database = BetterSqlite3.Database;
  type Options = BetterSqlite3.Options;
  type Statement<P extends unknown[] | {} = unknown[], R = unknown> = BetterSqlite3.Statement<P, R>;
}
export default Database;
