// Lets `npm start` and `npm test` work on a fresh clone: install exactly what package-lock.json says
// when node_modules is missing or holds other versions than the lock file names.
//
// Compared by content, not timestamps: a checkout or rebase touches package-lock.json without changing
// it, and a needless `npm ci` deletes node_modules and rebuilds better-sqlite3 from source (minutes).
import { execSync } from 'node:child_process';
import { existsSync, lstatSync, readFileSync } from 'node:fs';

const marker = 'node_modules/.package-lock.json';

/** path -> {version, optional} of every package a lock file lists (npm's hidden lock file omits the root). */
function packages(file) {
  const all = JSON.parse(readFileSync(file, 'utf8')).packages ?? {};
  const out = new Map();
  for (const [path, meta] of Object.entries(all)) if (path !== '') out.set(path, meta);
  return out;
}

function differs(installed, wanted) {
  for (const [path, meta] of wanted) {
    const have = installed.get(path);
    if (have === undefined) {
      // optional packages for other platforms (esbuild's) are never installed here
      if (meta.optional) continue;
      return `${path} is missing`;
    }
    if (have.version !== meta.version) return `${path} is ${have.version}, the lock file says ${meta.version}`;
  }
  return null;
}

let why = null;
if (!existsSync(marker)) why = 'node_modules is missing';
else {
  try {
    why = differs(packages(marker), packages('package-lock.json'));
  } catch (e) {
    why = `cannot compare node_modules with package-lock.json (${e.message})`;
  }
}
if (why !== null) {
  if (existsSync('node_modules') && lstatSync('node_modules').isSymbolicLink()) {
    // npm ci would empty the directory the link points to, which another checkout is using
    process.stderr.write(`clnvault: ${why}, but node_modules is a symbolic link: run npm ci where it points, or replace the link by an install of its own\n`);
    process.exit(1);
  }
  process.stderr.write(`clnvault: installing dependencies (npm ci): ${why}\n`);
  execSync('npm ci --no-audit --no-fund', { stdio: 'inherit' });
}
