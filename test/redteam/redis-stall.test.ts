import type { Command, Redis } from 'ioredis';
import { ORCH, AGENT, call } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * Red team, a bad day: Redis stalls (a frozen host, a long fork, a network
 * partition that drops nothing). README and docs/security.md: "a stalled
 * Redis fails a request in 2 s (503)" (`redis.commandTimeoutMs`, default
 * 2000). A request makes several Redis calls one after the other and each
 * waits out its own 2 s, so a caller waits about four times that: clients
 * with the usual 5 s timeout see their own timeout, never the 503. Fixed
 * by src/redis/stall-guard.ts: after one timeout, commands fail fast until
 * Redis answers a PING.
 */
const own = brokerOnOwnRedis('rt-stall');

test('a stalled Redis fails a credential request with 503 within about redis.commandTimeoutMs', async () => {
  const { t, redis } = own;
  const opened = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'rt-stall-1',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(opened.status).toBe(201);
  const headers = t.as(AGENT);
  expect((await call(t.url, 'POST', '/v1/credentials', headers, { taskId: 'rt-stall-1', role: 'demo-api' })).status).toBe(201);

  // Judged on the order of the commands, not on how long the request took (a loaded machine adds seconds to
  // anything): once a command timed out, no command sent after that may wait out its own timeout as well.
  // Those in flight at that moment may (they were sent before Redis was known to be stalled); without the
  // guard, each call the request makes after a timeout waits its own 2 s.
  const client = t.broker.deps.redis as Redis;
  const send = client.sendCommand;
  const sent: { name: string; afterTimeout: boolean; outcome?: string }[] = [];
  let timedOut = false;
  client.sendCommand = function (this: Redis, command: Command, ...rest: unknown[]) {
    const entry: (typeof sent)[number] = { name: command.name, afterTimeout: timedOut };
    sent.push(entry);
    command.promise.then(
      () => {
        entry.outcome = 'ok';
      },
      (err: Error) => {
        entry.outcome = err.message.startsWith('Command timed out') ? 'timeout' : err.name;
        if (entry.outcome === 'timeout') timedOut = true;
      },
    );
    return (send as (...a: unknown[]) => unknown).call(this, command, ...rest);
  } as typeof client.sendCommand;
  const resumed = redis.pause(15_000);
  let r: Awaited<ReturnType<typeof call>>;
  try {
    r = await call(t.url, 'POST', '/v1/credentials', headers, { taskId: 'rt-stall-1', role: 'demo-api' });
  } finally {
    client.sendCommand = send;
  }
  await resumed;
  expect(r.status).toBe(503);
  expect(sent.filter((c) => c.outcome === 'timeout').length).toBeGreaterThan(0);
  expect(sent.filter((c) => c.afterTimeout && c.outcome === 'timeout')).toEqual([]);
}, 40_000);
