import { silentLogger } from '../../src/logger.ts';
import type { LeaseRecord } from '../../src/leases/types.ts';
import type { JwtProvider } from '../../src/providers/jwt/provider.ts';
import { AGENT, ORCH, call, startSibling, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

/**
 * The other tests shorten the revocation timers so they do not wait; this one
 * keeps the defaults (sweep every 100 ms; a dead worker's job taken over
 * within lockMs 10 s + stalledCheckMs 5 s) and checks them in real time.
 */
const DEFAULTS = { revocation: {} };
let first: TestBroker;
let second: TestBroker | undefined;
afterAll(async () => {
  await second?.close();
  await first.close();
});

test("with the default timers: a TTL ends within a sweep, and a dead worker's revocation is taken over within 15 s", async () => {
  first = await startTestBroker('default-timers', { config: DEFAULTS });
  expect(first.config.revocation).toMatchObject({ sweepMs: 100, lockMs: 10_000, stalledCheckMs: 5_000 });
  const agent = `spiffe://dev.local${AGENT}`;
  await call(first.url, 'POST', '/v1/tasks', first.as(ORCH), {
    taskId: 't-def',
    agent,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  const short = await call(first.url, 'POST', '/v1/credentials', first.as(AGENT), { taskId: 't-def', role: 'demo-api', ttlSeconds: 1 });
  const exp = Date.parse(short.body.expiresAt);
  await waitFor(async () => (await first.broker.deps.leases.get(short.body.leaseId))?.status === 'expired', 5000, 20);
  expect(Date.now() - exp).toBeLessThan(1000);

  // A worker whose upstream call never returns, then dies.
  let hung = 0;
  const real = first.broker.deps.providers.get('jwt') as JwtProvider;
  first.broker.deps.providers.set(
    'jwt',
    Object.assign(Object.create(Object.getPrototypeOf(real)), real, {
      upstream: true,
      revoke: (_l: LeaseRecord) => {
        hung += 1;
        return new Promise<void>(() => {});
      },
    }),
  );
  const cred = await call(first.url, 'POST', '/v1/credentials', first.as(AGENT), { taskId: 't-def', role: 'demo-api' });
  await call(first.url, 'DELETE', `/v1/leases/${cred.body.leaseId}`, first.as(AGENT));
  await waitFor(async () => hung > 0, 5000);
  await Promise.all(first.broker.worker!.workers.map((w) => w.close(true)));
  await first.broker.sweeper!.stop();
  const died = Date.now();
  second = await startSibling(first, { api: false, logger: silentLogger });
  await waitFor(async () => (await second!.broker.deps.leases.get(cred.body.leaseId))?.status === 'revoked', 20_000, 100);
  expect(Date.now() - died).toBeLessThan(15_000 + 1500);
}, 40_000);
