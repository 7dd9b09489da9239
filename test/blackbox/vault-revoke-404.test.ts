import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * Red team: the broker took any 404 on a revocation call for Vault's "already gone" and ended the lease
 * `revoked`. Vault never answers 404 there (an unknown accessor is 400 `invalid accessor`, an unknown lease
 * 204): a 404 comes from whatever stands between the broker and Vault (an ingress or load balancer with no
 * route for a moment, a path prefix gone from a proxy). The lease showed `revoked` while the token and the
 * database user went on working until their TTL (contract section 5: never revoked before the upstream
 * confirmed). Now a 404 is a failed attempt: `revoke_failed`, retried, `revoked` once Vault itself confirms.
 */
let emu: VaultEmulator;
let t: TestBroker;
let proxy: Server;
/** While set, the proxy answers every request on a matching path 404 (plain text, as a proxy with no route does). */
let noRoute: RegExp | undefined;
const agentId = `spiffe://dev.local${AGENT}`;

beforeAll(async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  emu.createDatabaseRole('orders', { defaultTtl: 3600, maxTtl: 7200 });
  const { token } = emu.createToken({ policies: ['jit-broker', 'ops-read'] });
  proxy = createServer((req, res) => {
    if (noRoute?.test(req.url ?? '')) {
      req.resume();
      res.writeHead(404, { 'content-type': 'text/plain' }).end('404 page not found\n');
      return;
    }
    const up = request(new URL(req.url!, emu.url), { method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode!, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
  t = await startTestBroker('rt-vault-revoke-404', {
    config: {
      providers: { vault: { address: url, auth: { token }, requestTimeoutMs: 2000 } },
      roles: {
        'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } },
        'orders-db': { provider: 'vault', path: 'database/creds/orders' },
      },
      revocation: { backoffMs: 50, maxBackoffMs: 300, reconcileIntervalMs: 60_000, lockMs: 1000, stalledCheckMs: 500, sweepMs: 20 },
    },
  });
});
afterAll(async () => {
  await t?.close();
  await new Promise((r) => proxy?.close(r));
  await emu?.stop();
});

const lease = async (id: string) => (await call(t.url, 'GET', `/v1/leases/${id}`, t.as(AGENT))).body;

test.each([
  ['a token', 'vault-ops', /revoke-accessor/],
  ['a database secret', 'orders-db', /sys\/leases\/revoke|revoke-accessor/],
])('a 404 from a proxy in front of Vault does not revoke %s: revoke_failed until Vault itself confirms', async (_what, role, path) => {
  const taskId = `t-404-${role}`;
  const opened = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role }],
  });
  expect(opened.status).toBe(201);
  const issued = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role, ttlSeconds: 300 });
  expect(issued.status).toBe(201);
  const { leaseId, credentials } = issued.body;
  const alive = () => (role === 'vault-ops' ? emu.isTokenValid(credentials.token) : emu.isDbUserValid(credentials.username));
  noRoute = path;
  try {
    expect((await call(t.url, 'DELETE', `/v1/leases/${leaseId}`, t.as(AGENT))).status).toBe(202);
    const failing = await waitFor(async () => {
      const l = await lease(leaseId);
      return (l.status === 'revoke_failed' || l.status === 'revoked') && l;
    }, 8000);
    // Still alive upstream: the lease must not say otherwise.
    expect(alive()).toBe(true);
    expect(failing.status).toBe('revoke_failed');
    await new Promise((r) => setTimeout(r, 500));
    expect((await lease(leaseId)).status).toBe('revoke_failed');
  } finally {
    noRoute = undefined;
  }
  await waitFor(async () => (await lease(leaseId)).status === 'revoked', 8000);
  expect(alive()).toBe(false);
});
