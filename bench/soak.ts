/**
 * The long crash soak: `npm run soak -- --trials N [--seed S] [--format v2|v1|both] [--check-every-restart]`.
 * Prints progress every 100 trials and a summary; exits 1 on any divergence (every one is listed).
 */
import { parseArgs } from 'node:util';
import { join } from 'node:path';
import { progress, runSoak, type SoakReport } from '../test/helpers/rel-soak.js';
import { CLN } from '../test/helpers/sim-fixtures.js';

const { values } = parseArgs({
  options: {
    trials: { type: 'string', default: '2000' },
    seed: { type: 'string', default: String(Date.now() % 1_000_000) },
    format: { type: 'string', default: 'both' },
    'check-every-restart': { type: 'boolean', default: false },
    'trials-per-node': { type: 'string', default: '60' },
  },
});
const trials = Number(values.trials);
const seed = Number(values.seed);
const formats = values.format === 'both' ? (['v2', 'v1'] as const) : ([values.format] as ['v2'] | ['v1']);
if (!Number.isInteger(trials) || trials < 1 || !Number.isInteger(seed)) {
  console.error('usage: npm run soak -- --trials N [--seed S] [--format v2|v1|both] [--check-every-restart]');
  process.exit(2);
}

const t0 = performance.now();
const reports: SoakReport[] = [];
// v2 is the default format, so it gets the larger share; v1 still sees every fault kind
const share = formats.length === 2 ? [Math.ceil(trials * 0.75), Math.floor(trials * 0.25)] : [trials];
await Promise.all(
  formats.map(async (format, i) => {
    const r = await runSoak({
      trials: share[i]!,
      seed: seed + i,
      format,
      transcript: join(CLN, 'session-basic/hooks.jsonl'),
      checkAfterEveryRestart: values['check-every-restart'],
      checkpointEvery: 20,
      trialsPerNode: Number(values['trials-per-node']),
      compactAtBytes: format === 'v2' ? 4_000_000 : 2_000_000,
      log: (l) => console.log(`[${format}] ${l}`),
    });
    reports.push(r);
  }),
);
const secs = (performance.now() - t0) / 1000;
let divergences = 0;
for (const r of reports) {
  console.log(`\n${progress(r)}`);
  console.log(`  faults: ${Object.entries(r.byFault).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  console.log(`  ${r.nodes} nodes, ${r.plugins} plugin starts, ${r.checks} restore-and-compare checks`);
  for (const d of r.divergences) console.log(`  DIVERGENCE trial ${d.trial} (${d.fault}): ${d.detail}`);
  divergences += r.divergences.length;
}
console.log(`\n${reports.reduce((a, r) => a + r.trials, 0)} trials, ${divergences} divergences, seed ${seed}, ${secs.toFixed(0)} s`);
// the restore-and-compare checks run in this process (the plugins, which compact, are children): its peak, for the record
console.log(`peak RSS of the soak process (its restores and checks): ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB`);
process.exitCode = divergences === 0 ? 0 : 1;
