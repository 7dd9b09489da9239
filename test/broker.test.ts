import { randomBytes } from 'node:crypto';
import { Server } from 'node:http';
import { jest } from '@jest/globals';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeProtectedHeader } from 'jose';
import { startBroker } from '../src/broker.ts';
import { validateConfig } from '../src/config/load.ts';
import { silentLogger } from '../src/logger.ts';
import { Redis } from 'ioredis';
import { AGENT, ORCH, REDIS_URL, call, dropPrefix, startSibling, startTestBroker, waitFor, type TestBroker } from './helpers/broker.ts';

const agentId = `spiffe://dev.local${AGENT}`;
const introspect = async (url: string, as: Record<string, string>, token: string) =>
  (await (
    await fetch(`${url}/v1/introspect`, {
      method: 'POST',
      headers: { ...as, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    })
  ).json()) as { active: boolean };

// Each broker takes seconds to start on a loaded machine (three here, in one test): room for that, the same for all.
const SEVERAL_BROKERS_MS = 90_000;

describe('several instances on one Redis', () => {
  test(
    'share signing keys (same JWKS, tokens from one introspect on the other) and keep them across restarts',
    async () => {
      const a: TestBroker = await startTestBroker('multi');
      const b = await startSibling(a);
      try {
        const jwksA = await call(a.url, 'GET', '/.well-known/jwks.json', {});
        const jwksB = await call(b.url, 'GET', '/.well-known/jwks.json', {});
        expect(jwksA.body).toEqual(jwksB.body);
        expect(jwksA.body.keys).toHaveLength(1);
        await call(a.url, 'POST', '/v1/tasks', a.as(ORCH), {
          taskId: 't-multi',
          agent: agentId,
          tenant: 'acme',
          purpose: 'p',
          ttlSeconds: 600,
          grants: [{ role: 'demo-api' }],
        });
        const cred = await call(b.url, 'POST', '/v1/credentials', b.as(AGENT), { taskId: 't-multi', role: 'demo-api' });
        expect(cred.status).toBe(201);
        expect((await introspect(a.url, a.as('/rs/x'), cred.body.credentials.access_token)).active).toBe(true);
        const kid = decodeProtectedHeader(cred.body.credentials.access_token).kid;
        await b.broker.close();
        const c = await startSibling(a);
        expect((await call(c.url, 'GET', '/.well-known/jwks.json', {})).body.keys[0].kid).toBe(kid);
        expect((await introspect(c.url, c.as('/rs/x'), cred.body.credentials.access_token)).active).toBe(true);
        await c.broker.close();
      } finally {
        await a.close();
      }
    },
    SEVERAL_BROKERS_MS,
  );

  test(
    'without secrets.kek (the contract does not require it) instances still share one signing key',
    async () => {
      const a = await startTestBroker('nokek');
      const { baseDir: _b, file: _f, secrets: _s, ...raw } = JSON.parse(JSON.stringify(a.config)) as Record<string, unknown>;
      await a.broker.close();
      await dropPrefix(a.prefix);
      const noKek = validateConfig(raw, {}, a.config.file);
      const one = await startBroker(noKek, { logger: silentLogger });
      const two = await startBroker(noKek, { logger: silentLogger });
      try {
        const j1 = await call(one.url!, 'GET', '/.well-known/jwks.json', {});
        const j2 = await call(two.url!, 'GET', '/.well-known/jwks.json', {});
        expect(j1.body.keys).toHaveLength(1);
        expect(j2.body).toEqual(j1.body);
      } finally {
        await one.close();
        await two.close();
        await dropPrefix(a.prefix);
      }
    },
    SEVERAL_BROKERS_MS,
  );

  test(
    'an API-only instance and a worker-only instance split the work',
    async () => {
      const api = await startTestBroker('split', { broker: { worker: false, logger: silentLogger } });
      try {
        await call(api.url, 'POST', '/v1/tasks', api.as(ORCH), {
          taskId: 't-split',
          agent: agentId,
          tenant: 'acme',
          purpose: 'p',
          ttlSeconds: 600,
          grants: [{ role: 'demo-api' }],
        });
        const cred = await call(api.url, 'POST', '/v1/credentials', api.as(AGENT), { taskId: 't-split', role: 'demo-api' });
        await call(api.url, 'POST', '/v1/tasks/t-split/complete', api.as(ORCH));
        await new Promise((r) => setTimeout(r, 300));
        // No worker yet: the revocation waits in the queue (introspection is already inactive).
        expect((await call(api.url, 'GET', `/v1/leases/${cred.body.leaseId}`, api.as(AGENT))).body.status).toBe('revoking');
        const worker = await startSibling(api, { api: false, logger: silentLogger });
        expect(worker.broker.url).toBeUndefined();
        await waitFor(
          async () => (await call(api.url, 'GET', `/v1/leases/${cred.body.leaseId}`, api.as(AGENT))).body.status === 'revoked',
          60_000,
        );
        await worker.broker.close();
      } finally {
        await api.close();
      }
    },
    SEVERAL_BROKERS_MS,
  );
});

test('graceful shutdown lets in-flight requests finish, without waiting for the grace timer', async () => {
  // The longest grace there is: a shutdown that waited for it would cut the connections (closeAllConnections),
  // which is what is judged below, not how long the close took on this machine.
  const t = await startTestBroker('shutdown', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', shutdownGraceMs: 60_000 } },
  });
  const cutOff = jest.spyOn(Server.prototype, 'closeAllConnections');
  await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-shut',
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  // Close while requests are on the wire: right after the first one reaches the lease store.
  const store = t.broker.deps.leases;
  const create = store.create.bind(store);
  let firstArrived!: () => void;
  const arrived = new Promise<void>((r) => {
    firstArrived = r;
  });
  store.create = (...args) => {
    firstArrived();
    return create(...args);
  };
  let started = 0;
  const inflight = Array.from({ length: 40 }, () => {
    started += 1;
    return call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-shut', role: 'demo-api' }).then(
      (r) => String(r.status),
      // Refused, or reset on a keep-alive socket the server was closing while idle: never read, safe to retry.
      (err: { cause?: { code?: string } }) =>
        ['ECONNREFUSED', 'ECONNRESET', 'UND_ERR_SOCKET'].includes(err.cause?.code ?? '')
          ? 'not accepted'
          : `failed:${err.cause?.code ?? 'unknown'}`,
    );
  });
  await arrived;
  await t.broker.close();
  const statuses = await Promise.all(inflight);
  // Every connection closed on its own once its response was out: the grace timer never had to cut one.
  expect(cutOff).not.toHaveBeenCalled();
  cutOff.mockRestore();
  expect(started).toBe(40);
  for (const s of statuses) expect(['201', 'not accepted']).toContain(s);
  const ok = statuses.filter((s) => s === '201').length;
  expect(ok).toBeGreaterThan(0);
  // Lose nothing: every lease the broker recorded was answered with its 201.
  const r = new Redis(REDIS_URL);
  const leases = await r.zrange(t.broker.deps.keys.taskLeases('t-shut'), '0', '-1');
  await r.quit();
  expect(leases.length).toBe(ok);
  await dropPrefix(t.prefix);
}, 90_000);

test(
  'an instance whose KEK cannot open the keys in Redis refuses to start, and adds nothing',
  async () => {
    const a = await startTestBroker('kek');
    try {
      const dir = mkdtempSync(join(tmpdir(), 'jit-kek-'));
      writeFileSync(join(dir, 'kek'), randomBytes(32).toString('base64'));
      const { baseDir: _b, file: _f, ...raw } = JSON.parse(JSON.stringify(a.config)) as Record<string, unknown>;
      const wrong = validateConfig({ ...raw, secrets: { kek: { file: join(dir, 'kek') } } }, {}, a.config.file);
      const before = await a.broker.deps.redis.hgetall(a.broker.deps.keys.signingKeys());
      const refused = startBroker(wrong, { logger: silentLogger });
      await expect(refused).rejects.toThrow(/cannot decrypt signing key/);
      // A newcomer's second checkout on the same Redis gets a command that works, not just a key to look up.
      await expect(refused).rejects.toThrow('REDIS_URL=redis://127.0.0.1:6379/1 npm start');
      expect(await a.broker.deps.redis.hgetall(a.broker.deps.keys.signingKeys())).toEqual(before);
    } finally {
      await a.close();
      await dropPrefix(a.prefix);
    }
  },
  SEVERAL_BROKERS_MS,
);
