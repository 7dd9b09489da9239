import { afterAll, beforeAll } from '@jest/globals';
import type { BrokerOptions } from '../../src/broker.ts';
import { startTestBroker, type TestBroker, uniquePrefix } from './broker.ts';
import { type RedisStandalone, startStandalone } from './redis-topology.ts';

export interface OwnRedisBroker {
  /** The file's own redis-server: the test may FLUSHALL it, SAVE and restart it, pause it. */
  redis: RedisStandalone;
  t: TestBroker;
}

/**
 * A broker on a redis-server of its own, for a test file that does to Redis what the shared one must not see
 * (a wipe, a rollback to a snapshot, a stall). Registers the file's beforeAll and afterAll: `redis` and `t` are
 * set once beforeAll ran, so a test reads them from the returned object inside its body.
 * `config` is merged over the test config except `redis`, which is always this server under a fresh prefix.
 */
export function brokerOnOwnRedis(name: string, opts: { config?: Record<string, unknown>; broker?: BrokerOptions } = {}): OwnRedisBroker {
  const own = {} as OwnRedisBroker;
  beforeAll(async () => {
    own.redis = await startStandalone();
    const prefix = uniquePrefix(name);
    own.t = await startTestBroker(name, {
      prefix,
      config: { ...opts.config, redis: { url: own.redis.url, prefix } },
      ...(opts.broker ? { broker: opts.broker } : {}),
    });
  }, 60_000);
  afterAll(async () => {
    // broker.close(), not t.close(): the prefix lives on this server, stopped next, not on the shared Redis that
    // t.close() would scan to drop it.
    await own.t?.broker.close().catch(() => {});
    await own.redis?.stop();
  });
  return own;
}
