import { silentLogger } from '../../src/logger.ts';
import type { JwtProvider } from '../../src/providers/jwt/provider.ts';
import type { LeaseRecord } from '../../src/leases/types.ts';
import { AGENT, ORCH, call, startSibling, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

/**
 * A worker dies in the middle of a revocation (its upstream call never
 * returns and the process is gone). A second worker on the same Redis must
 * pick the job up once the dead worker's lock lapses and finish it.
 */
test('a revocation interrupted by a worker crash is finished by another worker', async () => {
  let hung = 0;
  const first: TestBroker = await startTestBroker('restart', {
    broker: {
      logger: silentLogger,
      providers: {},
    },
  });
  // Wrap the real jwt provider: its revoke hangs forever, like an upstream that never answers before the crash.
  const real = first.broker.deps.providers.get('jwt') as JwtProvider;
  first.broker.deps.providers.set(
    'jwt',
    Object.assign(Object.create(Object.getPrototypeOf(real)), real, {
      // Behave like an upstream provider, so revocation goes through a lease-end job.
      upstream: true,
      revoke: (_l: LeaseRecord) => {
        hung += 1;
        return new Promise<void>(() => {});
      },
    }),
  );
  const agentId = `spiffe://dev.local${AGENT}`;
  await call(first.url, 'POST', '/v1/tasks', first.as(ORCH), {
    taskId: 't-crash',
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  const cred = await call(first.url, 'POST', '/v1/credentials', first.as(AGENT), { taskId: 't-crash', role: 'demo-api' });
  expect(cred.status).toBe(201);
  await call(first.url, 'POST', '/v1/tasks/t-crash/complete', first.as(ORCH));
  await waitFor(async () => hung > 0);
  const mid = await first.broker.deps.leases.get(cred.body.leaseId);
  expect(mid?.status).toBe('revoking');

  // The crash: the worker stops without finishing or releasing its job.
  await Promise.all(first.broker.worker!.workers.map((w) => w.close(true)));
  await first.broker.sweeper!.stop();

  const second = await startSibling(first, { api: false, logger: silentLogger });
  const done = await waitFor(
    async () => {
      const l = await second.broker.deps.leases.get(cred.body.leaseId);
      return l?.status === 'revoked' && l;
    },
    10_000,
    50,
  );
  expect(done.reason).toBe('task_completed');
  await second.broker.close();
  await first.broker.close().catch(() => {});
  await first.close().catch(() => {});
}, 20_000);
