import { expect } from '@jest/globals';
import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import { AGENT, call, ORCH, REDIS_URL, TEST_REVOCATION, testConfigFile, UNLIMITED_SERVER, waitFor } from '../../helpers/broker.ts';
import { START_TIMEOUT_MS, processFixture } from '../../helpers/process.ts';
import { startUpstreams } from '../../helpers/upstreams.ts';

/**
 * Found by the chaos red team (test/redteam/chaos-revocation.test.ts): a worker SIGKILLed while its write of a
 * role's AWS deny policy was on the wire left the role's deny-list lock set for its whole TTL, 60 s. Every other
 * worker's revocation on that role waited its 15 s for the lock and failed `revocation_busy`, retried, and the
 * sessions of the ended tasks kept working for up to a minute. The lock is now set for 10 s and kept extended
 * while a write runs: the next writer gets it within its wait, and both tasks' sessions are denied seconds after
 * the kill.
 */
const fx = processFixture();
const { as } = fx;
const prefix = fx.prefix('deny-lock-killed');
let releaseHeld: (() => void) | undefined;
fx.onCleanup(() => releaseHeld?.());

test(
  'a worker killed mid-write of a role’s deny holds the role’s lock for seconds: the next worker denies both tasks’ sessions',
  async () => {
    const { a, awsRole, providers } = await startUpstreams(fx);
    const file = testConfigFile(fx.issuer, prefix, {
      server: UNLIMITED_SERVER,
      providers: { aws: providers.aws },
      roles: { reports: { provider: 'aws', roleArn: awsRole.arn, maxTtlSeconds: 3600 } },
      revocation: { ...TEST_REVOCATION, reconcileIntervalMs: 1000 },
    });
    const api = await fx.start(file, { args: ['--api'] });
    const worker = await fx.start(file, { args: ['--worker'] });
    const r = new Redis(REDIS_URL);
    fx.onCleanup(() => r.quit());

    const session = async (taskId: string) => {
      const grants = [{ role: 'reports', scopes: ['s3:GetObject'] }];
      const body = { taskId, agent: `spiffe://dev.local${AGENT}`, tenant: 'acme', purpose: 'deny-lock', ttlSeconds: 600, grants };
      expect((await call(api.url, 'POST', '/v1/tasks', as(ORCH), body)).status).toBe(201);
      const res = await call(api.url, 'POST', '/v1/credentials', as(AGENT), { taskId, role: 'reports', ttlSeconds: 900 });
      expect(res.status).toBe(201);
      return res.body.credentials.AccessKeyId as string;
    };
    const works = (accessKeyId: string) => a.evaluate(accessKeyId, 's3:GetObject', '*') === 'allow';
    const first = await session('t-killed');
    const second = await session('t-after');
    expect([works(first), works(second)]).toEqual([true, true]);

    // The worker writes the first task's deny; IAM has the request and holds it; the worker dies under it.
    const held = a.holdRequest('PutRolePolicy');
    releaseHeld = held.release;
    expect((await call(api.url, 'POST', '/v1/tasks/t-killed/complete', as(ORCH))).status).toBe(202);
    await held.arrived;
    await worker.kill('SIGKILL');
    const killedAt = performance.now();
    const lock = `${prefix}:aws:deny:${awsRole.arn}:lock`;
    // Before: 60 s.
    expect(await r.pttl(lock)).toBeGreaterThan(0);
    expect(await r.pttl(lock)).toBeLessThanOrEqual(10_000);

    await fx.start(file, { args: ['--worker'] });
    expect((await call(api.url, 'POST', '/v1/tasks/t-after/complete', as(ORCH))).status).toBe(202);
    // The new worker takes the lapsed lock within its wait: no `revocation_busy` round (a minute, before).
    await waitFor(async () => !works(first) && !works(second), 40_000, 100);
    expect(performance.now() - killedAt).toBeLessThan(30_000);
    // The dead worker's write lands late now (a document without the new deny): the read-back writes it again.
    held.release();
    await held.landed;
    await waitFor(async () => !works(first) && !works(second), 20_000, 100);
  },
  2 * START_TIMEOUT_MS + 90_000,
);
