/**
 * Crash soak, short version (the long one: `npm run soak -- --trials N`). The real plugin is SIGKILLed
 * mid-append, the node dies between hook answer and commit, both at once, during start-up and during
 * re-baseline, with online compaction running in the plugin; compactions get an I/O error at one of their
 * fs calls, or run back to back with no write between; after each fault the backup is restored and
 * compared with the simulator's DB. The only acceptable number of divergences is zero.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { FAULTS, progress, runSoak, type SoakReport } from './helpers/rel-soak.js';
import { CLN, PLUGIN } from './helpers/sim-fixtures.js';

const TRIALS_V2 = Number(process.env.CLNVAULT_SOAK_TRIALS ?? 150);
const TRIALS_V1 = Number(process.env.CLNVAULT_SOAK_TRIALS_V1 ?? 50);
const TRIALS_ENC = Number(process.env.CLNVAULT_SOAK_TRIALS_ENC ?? 60);

function assertNoDivergence(r: SoakReport, trials: number): void {
  const detail = r.divergences.map((d) => `trial ${d.trial} (${d.fault}): ${d.detail}`).join('\n\n');
  assert.equal(r.divergences.length, 0, `${progress(r)}\n${detail}`);
  assert.equal(r.trials, trials);
  // a soak whose faults never hit anything proves nothing: each kind must have run, and kills must have landed inside hooks
  for (const f of FAULTS) assert.ok(r.byFault[f] > 0, `fault ${f} never injected in ${trials} trials`);
  assert.ok(r.killedInHook > 0, 'no SIGKILL landed while a hook call was pending');
  assert.ok(r.rewinds > 0, 'no uncommitted head was ever rewound');
  assert.ok(r.aheadByOne > 0, 'the backup was never seen one uncommitted batch ahead');
  assert.ok(r.rebaselines > 0, 'no re-baseline ran');
  assert.ok(r.compactions + r.killedCompacting > 0, 'online compaction never ran');
  assert.ok(r.repeatedCompactions > 0, 'no compactions ran back to back');
}

// The two runs spend most of their time waiting for fdatasync and process start-up: run them side by side.
describe('crash soak', { concurrency: true }, () => {
test(`crash soak, v2: ${TRIALS_V2} trials, recorded CLN traffic then generated batches of 100 B to 1 MB`, { timeout: 600_000 }, async () => {
  const r = await runSoak({
    trials: TRIALS_V2,
    seed: Number(process.env.CLNVAULT_SOAK_SEED ?? 1),
    format: 'v2',
    transcript: join(CLN, 'session-basic/hooks.jsonl'),
    pluginPath: PLUGIN,
    checkpointEvery: 20,
    trialsPerNode: 80,
    compactAtBytes: 1_500_000,
    stopOnDivergence: true,
  });
  console.log(`# ${progress(r)}`);
  assertNoDivergence(r, TRIALS_V2);
  // one pwrite cannot be torn by SIGKILL, but a power cut can tear it: those tails must have been cut
  assert.ok(r.powerCuts > 0 && r.tailRepairs > 0, 'no torn tail was ever produced and repaired');
  assert.ok(r.aheadAfterKill > 0, 'no kill landed between the write and the answer');
  assert.ok(r.ioErrorsBeforeRename > 0 && r.ioErrorsAfterRename > 0, 'EIO never landed on both sides of a compaction\'s rename');
});

test(`crash soak, v2 encrypted (docs/encryption.md): ${TRIALS_ENC} trials, every check authenticating the whole chain`, { timeout: 600_000 }, async () => {
  const r = await runSoak({
    trials: TRIALS_ENC,
    seed: Number(process.env.CLNVAULT_SOAK_SEED ?? 1) + 13,
    format: 'v2',
    encrypt: true,
    transcript: join(CLN, 'session-basic/hooks.jsonl'),
    pluginPath: PLUGIN,
    checkpointEvery: 20,
    trialsPerNode: 60,
    compactAtBytes: 1_500_000,
    stopOnDivergence: true,
  });
  console.log(`# ${progress(r)}`);
  assertNoDivergence(r, TRIALS_ENC);
});

test(`crash soak, v1 (the reference format): ${TRIALS_V1} trials`, { timeout: 600_000 }, async () => {
  const r = await runSoak({
    trials: TRIALS_V1,
    seed: Number(process.env.CLNVAULT_SOAK_SEED ?? 1) + 7,
    format: 'v1',
    transcript: join(CLN, 'session-basic/hooks.jsonl'),
    pluginPath: PLUGIN,
    checkpointEvery: 20,
    trialsPerNode: 60,
    datastoreSize: [100, 256 << 10],
    compactAtBytes: 400_000,
    stopOnDivergence: true,
  });
  console.log(`# ${progress(r)}`);
  assertNoDivergence(r, TRIALS_V1);
});
});
