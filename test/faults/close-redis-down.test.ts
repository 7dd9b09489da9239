import { startTestBroker } from '../helpers/broker.ts';
import { startStandalone } from '../helpers/redis-topology.ts';

/**
 * Shutdown while Redis is down (or just restarted, its connections still
 * reconnecting) must still finish. Before, `close()` waited forever on
 * BullMQ's queue and worker closes, which wait for an `end` event a
 * reconnecting ioredis client never emits: a SIGTERM during a Redis outage
 * left the process running, and stayed stuck after Redis came back.
 */
// Each case closes the broker while its Redis is down or its clients still reconnect: ioredis arms its disconnect
// timer (disconnectTimeout, 500 ms in the connector) on sockets already closed, and no close event comes to clear
// it. Let them lapse before the file ends: left running, they keep a jest worker that ends with this file alive
// past jest's grace, and it is force-killed ("failed to exit gracefully").
afterAll(() => new Promise((r) => setTimeout(r, 600)));

test.each([
  ['while Redis is down', false],
  ['right after Redis restarted empty', true],
])(
  'close() finishes %s',
  async (_what, restart) => {
    const redis = await startStandalone();
    try {
      const t = await startTestBroker('close-down', {
        config: { redis: { url: redis.url, prefix: 'close-down' }, server: { port: 0, shutdownGraceMs: 1000 } },
      });
      await redis.kill();
      await new Promise((r) => setTimeout(r, 1000));
      if (restart) await redis.restart();
      // Before, it never finished: judged on whether it finishes, with a deadline far past the grace (a loaded
      // machine stretches a close that takes a second to several), not on how long it took.
      let timer: NodeJS.Timeout | undefined;
      const outcome = await Promise.race([
        t.broker.close().then(() => 'closed'),
        new Promise((r) => {
          timer = setTimeout(() => r('still closing'), 30_000);
        }),
      ]);
      clearTimeout(timer);
      expect(outcome).toBe('closed');
    } finally {
      await redis.stop();
    }
  },
  60_000,
);
