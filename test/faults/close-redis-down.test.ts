import { startTestBroker } from '../helpers/broker.ts';
import { startStandalone } from '../helpers/redis-topology.ts';

/**
 * Shutdown while Redis is down (or just restarted, its connections still
 * reconnecting) must still finish. Before, `close()` waited forever on
 * BullMQ's queue and worker closes, which wait for an `end` event a
 * reconnecting ioredis client never emits: a SIGTERM during a Redis outage
 * left the process running, and stayed stuck after Redis came back.
 */
test.each([
  ['while Redis is down', false],
  ['right after Redis restarted empty', true],
])(
  'close() finishes %s, within the shutdown grace',
  async (_what, restart) => {
    const redis = await startStandalone();
    try {
      const t = await startTestBroker('close-down', {
        config: { redis: { url: redis.url, prefix: 'close-down' }, server: { port: 0, shutdownGraceMs: 1000 } },
      });
      await redis.kill();
      await new Promise((r) => setTimeout(r, 1000));
      if (restart) await redis.restart();
      const t0 = Date.now();
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        t.broker.close().then(() => 'closed'),
        new Promise((r) => {
          timer = setTimeout(() => r('still closing'), 8000);
        }),
      ]);
      clearTimeout(timer);
      expect(outcome).toBe('closed');
      expect(Date.now() - t0).toBeLessThan(6000);
    } finally {
      await redis.stop();
    }
  },
  30_000,
);
