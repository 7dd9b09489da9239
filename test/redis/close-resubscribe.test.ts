import { REDIS_URL, startTestBroker, uniquePrefix, waitFor } from '../helpers/broker.ts';
import { capturingLogger } from '../helpers/log-capture.ts';
import { redisHoldProxy } from '../helpers/redis-hold-proxy.ts';
import { startStandalone } from '../helpers/redis-topology.ts';

/**
 * ioredis sends SUBSCRIBE again by itself when a subscriber connection comes back, and drops the command's
 * promise: a rejection of it was unhandled, which ends a Node process run with the default
 * --unhandled-rejections=throw (the broker has no handler for them, on purpose). Seen as a test failing with
 * only "Connection is closed." and no frame of its own (test/topologies/replica-ack.test.ts: the broker closed
 * right after its Redis restarted, its subscriber re-subscribing just then).
 *
 * Jest fails a test on an unhandled rejection of a promise made in it (with the rejection's message, as
 * before the fix: "Connection is closed.", "NOPERM ..."); a turn of the loop after the close lets it be seen.
 */
const aTurn = () => new Promise((r) => setTimeout(r, 50));

test('close() while the subscriber re-subscribes after a reconnect leaves no unhandled rejection', async () => {
  const proxy = await redisHoldProxy(REDIS_URL);
  try {
    const prefix = uniquePrefix('resubscribe');
    const t = await startTestBroker('resubscribe', { prefix, config: { redis: { url: proxy.url, prefix } } });
    try {
      // The subscriber's connection drops; ioredis reconnects and sends SUBSCRIBE again, whose answer never comes back.
      await proxy.cutAndHold('subscribe');
    } finally {
      await t.close();
    }
    await aTurn();
  } finally {
    await proxy.close();
  }
}, 30_000);

test('a re-SUBSCRIBE refused by Redis (the ACL user lost the channel) is logged, not an unhandled rejection', async () => {
  const redis = await startStandalone({ password: 'adminpw' });
  const admin = redis.client();
  try {
    await admin.call('ACL', 'SETUSER', 'broker', 'reset', 'on', '>pw', '~*', '&*', '+@all');
    const { logger, lines } = capturingLogger<{ msg: string; err?: string; redis?: string }>();
    const prefix = uniquePrefix('resubscribe-acl');
    const t = await startTestBroker('resubscribe-acl', {
      prefix,
      config: { redis: { url: `redis://broker:pw@127.0.0.1:${redis.port}`, prefix } },
      broker: { logger },
    });
    try {
      // Redis drops the user's subscribed connections; the subscriber comes back and is refused its channel.
      await admin.call('ACL', 'SETUSER', 'broker', 'resetchannels');
      const refused = () => lines.find((l) => /refused SUBSCRIBE/.test(l.msg));
      await waitFor(async () => refused() !== undefined, 10_000, 20);
      expect(refused()).toMatchObject({ redis: 'jit-sub', err: expect.stringMatching(/^NOPERM/) });
      await aTurn();
    } finally {
      await t.broker.close();
    }
  } finally {
    admin.disconnect();
    await redis.stop();
  }
}, 30_000);
