import { cpSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * A copy of the built tree (dist/src) in which one file is replaced or removed: a damaged install, or a
 * worker thread that dies in a chosen way, while the rest is the product as built. The plugin loads its
 * workers by paths relative to its own modules, so they are taken from the copy.
 */

const BUILT_SRC = fileURLToPath(new URL('../../src', import.meta.url));
const NODE_MODULES = fileURLToPath(new URL('../../../node_modules', import.meta.url));

export interface PluginCopy {
  /** the replaced file in the copy */
  file: string;
  /** the copy's plugin entry */
  plugin: string;
  cleanup: () => void;
}

/** `rel`: a path under src/ (e.g. 'plugin/compact-worker.js'); `content` null removes it. */
export function pluginCopy(rel: string, content: string | null): PluginCopy {
  const root = mkdtempSync(join(tmpdir(), 'clnvault-plugin-copy-'));
  cpSync(BUILT_SRC, join(root, 'src'), { recursive: true });
  symlinkSync(NODE_MODULES, join(root, 'node_modules'));
  writeFileSync(join(root, 'package.json'), '{"type":"module"}\n');
  const file = join(root, 'src', rel);
  if (content === null) rmSync(file);
  else writeFileSync(file, content);
  return { file, plugin: join(root, 'src', 'plugin', 'main.js'), cleanup: () => rmSync(root, { recursive: true, force: true }) };
}
