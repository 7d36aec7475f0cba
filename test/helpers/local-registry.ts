/**
 * A package registry on 127.0.0.1 that knows only the runtime dependencies in package-lock.json, so that
 * `npm install -g clnvault-x.y.z.tgz` can run in a test without the network.
 *
 * Why it is needed: installing a tarball makes npm resolve its dependencies' version ranges, which needs
 * each dependency's registry document ("packument"), and `npm ci` (how a checkout is installed) caches
 * only the dependency tarballs, never those documents; `--offline` therefore fails with ENOTCACHED. This
 * server answers the documents, built from the lock file (one version per package, the locked one, with
 * its integrity); npm then takes the tarballs from its own cache by integrity, as `npm ci` left them.
 * A tarball npm does not have cached is asked for here and answered 404: `missing` names it.
 */
import { createServer, type Server } from 'node:http';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';

interface LockEntry {
  version?: string;
  integrity?: string;
  dependencies?: Record<string, string>;
  optionalDependencies?: Record<string, string>;
  bin?: Record<string, string> | string;
  engines?: Record<string, string>;
  hasInstallScript?: boolean;
  dev?: boolean;
  link?: boolean;
}

export interface LocalRegistry {
  url: string;
  /** names asked for that the lock file does not hold, and tarballs npm had to fetch */
  missing: string[];
  close(): Promise<void>;
}

export async function startLocalRegistry(lockFile: string): Promise<LocalRegistry> {
  const lock = JSON.parse(readFileSync(lockFile, 'utf8')) as { packages: Record<string, LockEntry> };
  const versions = new Map<string, Map<string, LockEntry>>();
  for (const [path, entry] of Object.entries(lock.packages)) {
    const at = path.lastIndexOf('node_modules/');
    if (at < 0 || entry.dev || entry.link || !entry.version || !entry.integrity) continue;
    const name = path.slice(at + 'node_modules/'.length);
    if (!versions.has(name)) versions.set(name, new Map());
    versions.get(name)!.set(entry.version, entry);
  }
  const missing: string[] = [];
  let base = '';
  const server: Server = createServer((req, res) => {
    const name = decodeURIComponent((req.url ?? '/').slice(1));
    const known = versions.get(name);
    if (!known) {
      missing.push(name);
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not found"}');
      return;
    }
    const doc = {
      name,
      'dist-tags': { latest: [...known.keys()].at(-1) },
      versions: Object.fromEntries(
        [...known].map(([version, e]) => [
          version,
          {
            name,
            version,
            dependencies: e.dependencies ?? {},
            optionalDependencies: e.optionalDependencies ?? {},
            bin: e.bin,
            engines: e.engines,
            hasInstallScript: e.hasInstallScript,
            // never fetched while npm's cache holds the integrity; if it does not, the 404 names it
            dist: { tarball: `${base}/-/tarball/${encodeURIComponent(name)}/${version}.tgz`, integrity: e.integrity },
          },
        ]),
      ),
    };
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(doc));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: `${base}/`,
    missing,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
