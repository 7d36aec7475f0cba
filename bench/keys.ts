/**
 * What the key sources cost (src/crypto/keys.ts):
 *   - the plugin's start-up share: importing the key code (BIP39 word list, @noble/hashes), bundled by
 *     esbuild as the plugin entry is (scripts/postbuild.js), after node:crypto (timed apart: the plugin
 *     needs it for encryption anyway), and the first keyFromHsmSecret on a words-layout hsm_secret, in a
 *     fresh process as at each lightningd start;
 *   - a warm keyFromHsmSecret (words layout, raw layout) and keyFromMnemonic;
 *   - scrypt at the default parameters (keyFromPassphrase): wall and CPU time, and its memory bound.
 * The load average is printed beside the figures: this machine is shared.
 *
 *   node dist/bench/keys.js [--runs N]
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildSync } from 'esbuild';
import { keyFromHsmSecret, keyFromMnemonic, keyFromPassphrase, newPassphraseParams } from '../src/crypto/keys.js';
import { summarize } from './stats.js';

const WORDS = 'board foot wage lift all sibling gravity immense skirt extra frost gossip';
const KEYS_SOURCE = fileURLToPath(new URL('../../src/crypto/keys.ts', import.meta.url));

const { values } = parseArgs({ options: { runs: { type: 'string', default: '15' } } });
const runs = Number(values.runs);
const dir = mkdtempSync(join(tmpdir(), 'clnvault-bench-keys-'));
try {
  const words = join(dir, 'hsm_secret.words');
  writeFileSync(words, Buffer.concat([Buffer.alloc(32), Buffer.from(WORDS)]));
  const raw = join(dir, 'hsm_secret.raw');
  writeFileSync(raw, Buffer.alloc(32, 7));
  const bundle = join(dir, 'keys.mjs');
  buildSync({ entryPoints: [KEYS_SOURCE], bundle: true, platform: 'node', format: 'esm', target: 'node20', outfile: bundle, logLevel: 'error' });
  const load0 = loadavg()[0]!;

  // a fresh process each time: what one plugin start pays
  const child = `const t = process.hrtime.bigint();
await import('node:crypto');
const t0 = process.hrtime.bigint();
const k = await import(${JSON.stringify(bundle)});
const t1 = process.hrtime.bigint();
k.keyFromHsmSecret(${JSON.stringify(words)});
const t2 = process.hrtime.bigint();
console.log(JSON.stringify({ cryptoMs: Number(t0 - t) / 1e6, importMs: Number(t1 - t0) / 1e6, firstMs: Number(t2 - t1) / 1e6 }));`;
  const cryptos: number[] = [];
  const imports: number[] = [];
  const firsts: number[] = [];
  for (let i = 0; i < runs; i++) {
    const r = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', child], { encoding: 'utf8' })) as { cryptoMs: number; importMs: number; firstMs: number };
    cryptos.push(r.cryptoMs);
    imports.push(r.importMs);
    firsts.push(r.firstMs);
  }

  const time = (f: () => unknown, n: number): number[] => {
    const out: number[] = [];
    for (let i = 0; i < n; i++) {
      const t = process.hrtime.bigint();
      f();
      out.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    return out;
  };
  const warmWords = time(() => keyFromHsmSecret(words), runs * 4);
  const warmRaw = time(() => keyFromHsmSecret(raw), runs * 4);
  const mnemonic = time(() => keyFromMnemonic(WORDS), runs * 4);
  const params = newPassphraseParams();
  const scryptWall: number[] = [];
  const scryptCpu: number[] = [];
  for (let i = 0; i < Math.max(3, Math.ceil(runs / 3)); i++) {
    const c = process.cpuUsage();
    scryptWall.push(...time(() => keyFromPassphrase('correct horse battery staple', params), 1));
    const d = process.cpuUsage(c);
    scryptCpu.push((d.user + d.system) / 1000);
  }
  const load1 = loadavg()[0]!;
  const ms = (xs: number[]): string => {
    const s = summarize(xs);
    return `p50 ${s.p50.toFixed(2)} ms, max ${s.max.toFixed(2)} ms`;
  };
  console.log(`keys bench (${runs} runs; load average ${load0.toFixed(2)} before, ${load1.toFixed(2)} after; ${process.version})`);
  console.log(`  plugin start-up share, fresh process: node:crypto ${ms(cryptos)}; then the bundled key code ${ms(imports)}; first keyFromHsmSecret (words) ${ms(firsts)}`);
  console.log(`  keyFromHsmSecret warm: words layout ${ms(warmWords)}; raw layout ${ms(warmRaw)}`);
  console.log(`  keyFromMnemonic warm: ${ms(mnemonic)}`);
  console.log(
    `  scrypt N=${params.N} r=${params.r} p=${params.p} (${(128 * params.N * params.r) / 2 ** 20} MiB): wall ${ms(scryptWall)}; CPU p50 ${summarize(scryptCpu).p50.toFixed(1)} ms`,
  );
  console.log(
    JSON.stringify({
      bench: 'keys',
      load: [load0, load1],
      cryptoMs: summarize(cryptos),
      importMs: summarize(imports),
      firstHsmSecretMs: summarize(firsts),
      warmWordsMs: summarize(warmWords),
      warmRawMs: summarize(warmRaw),
      mnemonicMs: summarize(mnemonic),
      scrypt: { N: params.N, r: params.r, p: params.p, wallMs: summarize(scryptWall), cpuMs: summarize(scryptCpu) },
    }),
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
