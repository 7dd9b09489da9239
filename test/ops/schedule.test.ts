import { Redis } from 'ioredis';
import { REDIS_URL, startSibling, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Scheduled rotation runs as a BullMQ job scheduler: with two instances on
 * one Redis, each firing is handled by exactly one of them.
 */
test('a scheduled signing-key rotation fires once per period across two instances', async () => {
  const a: TestBroker = await startTestBroker('schedule', {
    config: {
      rotation: { schedule: { 'signing-key': 1 } },
      providers: { jwt: { alg: 'ES256', retireGraceSeconds: 0, publishLeadSeconds: 0 } },
    },
  });
  const b = await startSibling(a);
  await new Promise((r) => setTimeout(r, 3500));
  await b.broker.close();
  const redis = new Redis(REDIS_URL);
  const records = (await redis.xrange(`${a.prefix}:audit`, '-', '+'))
    .map(([, f]) => JSON.parse(f[1]!))
    .filter((r) => r.action === 'rotate');
  await redis.quit();
  await a.close();
  // Every 1 s for ~3.5 s: 2-4 firings, each done once (a double would show as a second record within
  // moments of the first, or as a rotation_in_progress error).
  expect(records.length).toBeGreaterThanOrEqual(2);
  expect(records.length).toBeLessThanOrEqual(4);
  expect(records.every((r) => r.decision === 'ok' && r.actor === 'broker')).toBe(true);
  const times = records.map((r) => Date.parse(r.time));
  for (let i = 1; i < times.length; i++) expect(times[i]! - times[i - 1]!).toBeGreaterThan(500);
}, 15_000);
