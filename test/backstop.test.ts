/**
 * The remote writers' last bound on an operation (src/backends/backstop.ts): one timer for the writer's
 * life, re-armed when it fires early, yet every operation is failed at its own deadline and not before;
 * a settled operation leaves nothing that keeps the process alive.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { Backstop } from '../src/backends/backstop.js';

const never = (): Promise<never> => new Promise<never>(() => undefined);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('Backstop', () => {
  it('passes a result and an error through, and fails only an operation that outlives its bound', async () => {
    const expired: number[] = [];
    const b = new Backstop((ms) => {
      expired.push(ms);
      return new Error(`no answer within ${ms} ms`);
    });
    assert.equal(await b.run(async () => 7, 200), 7);
    await assert.rejects(b.run(async () => Promise.reject(new Error('refused')), 200), /refused/);
    await assert.rejects(
      b.run(() => {
        throw new Error('thrown at once');
      }, 200),
      /thrown at once/,
    );
    await sleep(300);
    assert.deepEqual(expired, [], 'settled operations must never expire');
    const t0 = Date.now();
    await assert.rejects(b.run(never, 150), /no answer within 150 ms/);
    assert.ok(Date.now() - t0 >= 145, `failed after ${Date.now() - t0} ms, before its 150 ms`);
    assert.deepEqual(expired, [150]);
    b.close();
  });

  it('an operation started after the timer was armed is failed at its own deadline, not at the earlier one', async () => {
    const b = new Backstop((ms) => new Error(`expired ${ms}`));
    // arms the one timer for t0 + 400 ms
    await b.run(async () => undefined, 400);
    await sleep(250);
    // its deadline is ~t0 + 650 ms: the timer fires at ~t0 + 400, finds it not yet due and re-arms
    const t1 = Date.now();
    await assert.rejects(b.run(never, 400), /expired 400/);
    const took = Date.now() - t1;
    assert.ok(took >= 395, `failed after ${took} ms, before its own 400 ms`);
    assert.ok(took < 3000, `failed only after ${took} ms`);
    b.close();
  });

  it('a late result after the expiry changes nothing', async () => {
    let finish: (v: number) => void = () => undefined;
    const b = new Backstop(() => new Error('expired'));
    await assert.rejects(b.run(() => new Promise<number>((r) => (finish = r)), 50), /expired/);
    finish(1);
    assert.equal(await b.run(async () => 2, 1000), 2);
    b.close();
  });

  it('an idle writer keeps no process alive: a bound of an hour does not hold the exit', async () => {
    const url = new URL('../src/backends/backstop.js', import.meta.url).href;
    const script = `import { Backstop } from ${JSON.stringify(url)}; const b = new Backstop(() => new Error('x')); await b.run(async () => 1, 3_600_000); await b.run(async () => 2, 3_600_000);`;
    const t0 = Date.now();
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: 'inherit' });
    const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const [code] = (await once(child, 'exit')) as [number | null];
    clearTimeout(killer);
    assert.equal(code, 0, `the process lived ${Date.now() - t0} ms and was killed: the backstop's timer kept it alive`);
  });
});
