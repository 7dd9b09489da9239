import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { silentLogger } from '../../src/logger.ts';
import { Keys } from '../../src/redis/keys.ts';
import { RedisRequirements } from '../../src/redis/requirements.ts';
import { CHECK_EVERY_MS } from '../../src/redis/requirements.ts';
import { AGENT, ORCH, call, startTestBroker, testConfigFile, waitFor } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { type RedisStandalone, startStandalone } from '../helpers/redis-topology.ts';
import { START_TIMEOUT_MS } from '../helpers/process.ts';
import { jest } from '@jest/globals';

// The startup test below waits for a broker process's exit for as long as a start may take.
jest.setTimeout(START_TIMEOUT_MS + 10_000);

/**
 * The broker's Redis ACL user (docs/operations.md, "What the broker needs of Redis"). A user missing a command
 * used to pass /readyz (a plain SET) and fail every request with 500; a user without INFO (`-@dangerous`) left
 * a process that neither served nor exited (BullMQ's worker loop spinning on the refused INFO). Now startup
 * fails naming what is missing, before any BullMQ queue exists, and a user losing a command at run time makes
 * /readyz 503 naming it while requests answer 503, never 500.
 */
let redis: RedisStandalone;
let admin: Redis;
let n = 0;

beforeAll(async () => {
  redis = await startStandalone({ password: 'adminpw' });
  admin = redis.client();
  await admin.connect();
}, 30_000);
afterAll(async () => {
  admin?.disconnect();
  await redis?.stop();
});

/** (Re)creates ACL user `broker` with `rules` (keys and channels: all unless the rules say otherwise); its URL. */
async function brokerUser(...rules: string[]): Promise<string> {
  const scoped = rules.some((r) => r.startsWith('~') || r.startsWith('&') || r === 'resetchannels');
  await admin.call('ACL', 'SETUSER', 'broker', 'reset', 'on', '>pw', ...(scoped ? [] : ['~*', '&*']), ...rules);
  return `redis://broker:pw@127.0.0.1:${redis.port}`;
}

const prefix = () => `acl-${process.pid}-${++n}`;
const startOn = (url: string, p = prefix()) => startTestBroker('acl', { prefix: p, config: { redis: { url, prefix: p } } });
const open = (t: { url: string; as: (p: string) => Record<string, string> }, taskId: string) =>
  call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });

test('a user with "+@all -@dangerous": the process exits 1 at once naming INFO and ROLE, nothing half-started', async () => {
  const url = await brokerUser('+@all', '-@dangerous');
  const p = prefix();
  const file = testConfigFile(new TestIssuer(), p, { redis: { url, prefix: p } });
  const child = spawn(process.execPath, ['src/main.ts'], {
    env: { ...process.env, BROKER_CONFIG: file, LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  // Before: no exit within 20 s (and no /healthz answer: the event loop starved). The wait is a pure upper
  // bound, as long as a start may take (a start took over 60 s on a loaded machine): the exit comes at startup.
  const code = await new Promise<number | null | 'still running'>((resolve) => {
    const timer = setTimeout(() => resolve('still running'), START_TIMEOUT_MS);
    child.on('exit', (c) => {
      clearTimeout(timer);
      resolve(c);
    });
  });
  if (code === 'still running') child.kill('SIGKILL');
  expect({ code, out }).toEqual({ code: 1, out: expect.stringMatching(/startup failed: .*may not run INFO, ROLE \(NOPERM\)/) });
  expect(out).not.toContain('broker API listening');
  // Nothing was written under the prefix (no queue, no signing key): the probe's throwaway keys are gone too.
  expect(await admin.keys(`${p}:*`)).toEqual([]);
});

test.each([
  ['-xadd', 'XADD'],
  ['-zadd', 'ZADD'],
  ['-hset', 'HSET'],
  ['-sadd', 'SADD'],
  ['-rpush', 'RPUSH'],
  ['-pexpire', 'PEXPIRE'],
  ['-del', 'DEL'],
  ['-rpoplpush', 'RPOPLPUSH'],
  ['-evalsha', 'EVALSHA'],
  ['-eval', 'EVAL'],
  ['-multi', 'MULTI'],
  ['-exec', 'EXEC'],
  ['-publish', 'PUBLISH'],
  ['-bzpopmin', 'BZPOPMIN'],
])('a user with "+@all %s": startup fails naming %s', async (rule, command) => {
  const url = await brokerUser('+@all', rule);
  await expect(startOn(url)).rejects.toThrow(new RegExp(`does not suit the broker: the Redis user may not run ${command} \\(NOPERM\\)`));
});

test('a user whose keys or channels do not cover the prefix: startup fails saying so', async () => {
  await expect(startOn(await brokerUser('+@all', '~other:*', '&*'))).rejects.toThrow(/may not use every key under acl-\S+:\* \(NOPERM\)/);
  await expect(startOn(await brokerUser('+@all', '~*', 'resetchannels'))).rejects.toThrow(
    /may not use the pub\/sub channels under acl-\S+:\*/,
  );
});

test('the ACL line docs/operations.md gives is enough: the broker starts, is ready, opens, issues and completes', async () => {
  const doc = readFileSync('docs/operations.md', 'utf8');
  const line = /^ACL SETUSER broker (.+)$/m.exec(doc)?.[1];
  expect(line).toBeDefined();
  expect(readFileSync('README.md', 'utf8')).toContain(`ACL SETUSER broker ${line}`);
  const p = prefix();
  // The documented line is for prefix `jit` and a password from the environment.
  const rules = line!
    .replace(/\bjit:/g, `${p}:`)
    .replace(/>\S+/, '>pw')
    .split(/\s+/);
  await admin.call('ACL', 'SETUSER', 'broker', 'reset', ...rules);
  const t = await startOn(`redis://broker:pw@127.0.0.1:${redis.port}`, p);
  try {
    expect((await call(t.url, 'GET', '/readyz', {})).body).toMatchObject({ status: 'ready' });
    expect((await open(t, 'doc-acl')).status).toBe(201);
    expect((await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'doc-acl', role: 'demo-api' })).status).toBe(201);
    expect((await call(t.url, 'POST', '/v1/tasks/doc-acl/complete', t.as(ORCH))).status).toBe(202);
  } finally {
    await t.broker.close();
  }
}, 30_000);

test('a user losing ZADD while the broker runs: /readyz 503 naming it, requests 503 not_ready (never 500), ready again once it is back', async () => {
  const t = await startOn(await brokerUser('+@all'));
  try {
    expect((await open(t, 'before')).status).toBe(201);
    await brokerUser('+@all', '-zadd');
    // The setup checks run at most every CHECK_EVERY_MS (5 s; src/redis/requirements.ts).
    const ready = await waitFor(async () => {
      const r = await call(t.url, 'GET', '/readyz', {});
      return r.status === 503 && r;
    }, CHECK_EVERY_MS + 5000);
    expect(ready.body.checks).toMatchObject({ redis: true, redisSetup: false });
    expect(ready.body.problems).toEqual([expect.stringMatching(/^the Redis user may not run ZADD \(NOPERM\)/)]);
    // Before: 500 internal_error.
    const refused = await open(t, 'during');
    expect({ status: refused.status, code: refused.body.code }).toEqual({ status: 503, code: 'not_ready' });
    await brokerUser('+@all');
    await waitFor(async () => (await call(t.url, 'GET', '/readyz', {})).status === 200, CHECK_EVERY_MS + 5000);
    expect((await open(t, 'after')).status).toBe(201);
  } finally {
    await t.broker.close();
  }
}, 30_000);

test('INFO refused: the eviction policy is read with CONFIG GET; both refused: the policy is a problem of its own', async () => {
  const keys = new Keys(prefix());
  const check = async (...rules: string[]) => {
    const client = new Redis(await brokerUser('+@all', ...rules), { lazyConnect: true, enableReadyCheck: false });
    try {
      return await new RedisRequirements({ redis: client, keys, logger: silentLogger, blocking: true, wait: true }).problems();
    } finally {
      client.disconnect();
    }
  };
  await admin.config('SET', 'maxmemory-policy', 'allkeys-lfu');
  try {
    expect(await check('-info')).toEqual([
      expect.stringMatching(/^the Redis user may not run INFO \(NOPERM\)/),
      expect.stringMatching(/^maxmemory-policy is allkeys-lfu; the broker needs noeviction/),
    ]);
    expect(await check('-info', '-config')).toEqual([
      expect.stringMatching(/^the Redis user may not run INFO \(NOPERM\)/),
      expect.stringMatching(/^cannot read maxmemory-policy: INFO shows none and CONFIG GET is refused/),
    ]);
  } finally {
    await admin.config('SET', 'maxmemory-policy', 'noeviction');
  }
  expect(await check()).toEqual([]);
});
