import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { script } from '../../src/redis/scripts.ts';
import { AGENT, auditRecords, call, openAgentTask, REDIS_URL, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { tcpProxy } from '../helpers/tcp-proxy.ts';

/**
 * Review: a connection dropped after Redis ran [lease-create, audit-append] (same socket write) but before
 * their answers reached the broker (a failover, a network blip). ioredis resends both
 * (autoResendUnfulfilledCommands). lease-create is not idempotent: it re-adds the issue record's outbox
 * member the append had just removed; the resent append answers "already written" without removing it; so
 * recovery appends a second credential.issue for the same lease. (It also counts the lease twice in `live`.)
 */
async function dropAnswersProxy(redisUrl: string) {
  let armed: string | undefined;
  let done: () => void = () => {};
  const fired = new Promise<void>((r) => {
    done = r;
  });
  const proxy = await tcpProxy(redisUrl, (client, upstream) => {
    let swallow = false;
    client.on('data', (chunk: Buffer) => {
      if (armed && chunk.indexOf(armed, 0, 'latin1') >= 0) {
        armed = undefined;
        swallow = true;
        // Redis runs what was sent; its answers never reach the broker, then the connection drops.
        setTimeout(() => {
          client.destroy();
          upstream.destroy();
          done();
        }, 300);
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      if (!swallow) client.write(chunk);
    });
  });
  return {
    ...proxy,
    arm: (sha: string): Promise<void> => {
      armed = sha;
      return fired;
    },
  };
}

let t: TestBroker;
let proxy: Awaited<ReturnType<typeof dropAnswersProxy>>;
beforeAll(async () => {
  proxy = await dropAnswersProxy(REDIS_URL);
  t = await startTestBroker('audit-resend', { config: { redis: { url: proxy.url, prefix: `test-audit-resend-${Date.now()}` } } });
});
afterAll(async () => {
  await t?.close();
  await proxy.close();
});

test('a lease-create and its issue record resent after a dropped connection are one credential.issue', async () => {
  const { keys, redis } = t.broker.deps;
  await openAgentTask(t, 't-resend', [{ role: 'demo-api' }]);
  // A first issuance: the chain head is known, so the next record rides in lease-create's socket write.
  expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-resend', role: 'demo-api' })).status).toBe(201);
  const cut = proxy.arm(script('lease-create').sha);
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-resend', role: 'demo-api' });
  await cut;
  // Recovery takes members older than its grace period: age them, then run a pass.
  const outbox = keys.auditOutbox(keys.bucketOfTask('t-resend'));
  const flat = await redis.zrange(outbox, '0', '-1', 'WITHSCORES');
  for (let i = 0; i < flat.length; i += 2) await redis.zadd(outbox, 'XX', Number(flat[i + 1]) - 60_000, flat[i]!);
  await t.broker.outbox.pass();
  const issues = (await auditRecords(redis, keys)).filter((x) => x.action === 'credential.issue' && x.taskId === 't-resend');
  const live = await redis.hget(keys.task('t-resend'), 'live');
  // Each lease id at most once among the issue records.
  const ids = issues.map((x) => x.leaseId);
  expect(new Set(ids).size).toBe(ids.length);
  if (r.status === 201) expect(ids).toContain(r.body.leaseId);
  // The lease is counted once in the task.
  expect(live).toBe('2');
});
