import type { Redis } from 'ioredis';
import { CHECK_EVERY_MS } from '../../src/redis/requirements.ts';
import { call, startTestBroker, waitFor } from '../helpers/broker.ts';
import { capturingLogger } from '../helpers/log-capture.ts';
import { type RedisStandalone, startStandalone } from '../helpers/redis-topology.ts';

/**
 * A Redis that evicts keys (a shared cache Redis on allkeys-lru, a managed Redis defaulting to volatile-lru)
 * deletes the broker's records under memory pressure: a lease record is the only path to revoking its
 * credential. Before, the broker started and answered ready on one (only BullMQ printed a console warning), and
 * an evicted lease left a Vault token outliving its task. Now startup refuses any policy but noeviction, and a
 * running broker whose Redis is switched to one answers /readyz 503 naming it until it is switched back.
 */
let redis: RedisStandalone;
let admin: Redis;

beforeAll(async () => {
  redis = await startStandalone();
  admin = redis.client();
  await admin.connect();
}, 30_000);
afterAll(async () => {
  admin?.disconnect();
  await redis?.stop();
});

const setPolicy = (policy: string) => admin.config('SET', 'maxmemory-policy', policy);
const brokerOn = (prefix: string, logger?: ReturnType<typeof capturingLogger>['logger']) =>
  startTestBroker('evict', { prefix, config: { redis: { url: redis.url, prefix } }, ...(logger ? { broker: { logger } } : {}) });

test.each(['allkeys-lru', 'volatile-lru', 'allkeys-random', 'volatile-ttl'])(
  'on a Redis with maxmemory-policy %s the broker refuses to start, naming it, and writes nothing',
  async (policy) => {
    const prefix = `evict-${process.pid}-${policy}`;
    await setPolicy(policy);
    try {
      await expect(brokerOn(prefix)).rejects.toThrow(
        new RegExp(`does not suit the broker: maxmemory-policy is ${policy}; the broker needs noeviction`),
      );
      expect(await admin.keys(`${prefix}:*`)).toEqual([]);
    } finally {
      await setPolicy('noeviction');
    }
  },
);

test('a Redis switched to volatile-lru under a running broker: /readyz 503 naming it, logged once; ready again on noeviction', async () => {
  const { logger, lines } = capturingLogger<{ msg: string; problems?: string[] }>('info');
  const t = await brokerOn(`evict-${process.pid}-run`, logger);
  try {
    expect((await call(t.url, 'GET', '/readyz', {})).body).toMatchObject({ status: 'ready', checks: { redisSetup: true } });
    await setPolicy('volatile-lru');
    // The setup checks run at most every CHECK_EVERY_MS (5 s; src/redis/requirements.ts).
    const r = await waitFor(async () => {
      const r = await call(t.url, 'GET', '/readyz', {});
      return r.status === 503 && r;
    }, CHECK_EVERY_MS + 5000);
    expect(r.body.checks).toMatchObject({ redis: true, redisSetup: false });
    expect(r.body.problems).toEqual([expect.stringMatching(/^maxmemory-policy is volatile-lru; the broker needs noeviction/)]);
    // Still not ready after a new round, and said once in the log, not once per probe.
    await new Promise((res) => setTimeout(res, CHECK_EVERY_MS + 100));
    expect((await call(t.url, 'GET', '/readyz', {})).status).toBe(503);
    const said = lines.filter((l) => l.msg.startsWith('Redis does not suit the broker'));
    expect(said).toEqual([expect.objectContaining({ problems: r.body.problems })]);

    await setPolicy('noeviction');
    await waitFor(async () => (await call(t.url, 'GET', '/readyz', {})).status === 200, CHECK_EVERY_MS + 5000);
    expect(lines.filter((l) => l.msg === 'Redis suits the broker again')).toHaveLength(1);
  } finally {
    await setPolicy('noeviction');
    await t.broker.close();
  }
}, 30_000);
