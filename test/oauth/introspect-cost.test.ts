import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Introspection's CPU. Found in review: 1-2.4 ms of CPU per call, while the contract lets each resource
 * server introspect 1,000 times a second; the profile's largest item of the introspection itself was the
 * ES256 verify, done again on every call for a token a resource server sends on every request it gets.
 * A token seen before skips it (src/leases/verified-tokens.ts), and nothing else is skipped: the key
 * must still be published, the claims hold, the lease and task are read from Redis on every call.
 */
let t: TestBroker;
let n = 0;

beforeAll(async () => {
  t = await startTestBroker('introspect-cost', {
    config: { roles: { 'tickets-api': { provider: 'jwt', audience: 'https://tickets.internal', maxTtlSeconds: 300 } } },
  });
});
afterAll(async () => {
  await t?.close();
});

/** Opens a task and mints a token in it; returns the token, its lease and task. */
async function mint(): Promise<{ token: string; leaseId: string; taskId: string }> {
  const taskId = `ic-${++n}`;
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api' }],
  });
  expect(open.status).toBe(201);
  const c = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId, role: 'tickets-api' });
  expect(c.status).toBe(201);
  return { token: c.body.credentials.access_token, leaseId: c.body.leaseId, taskId };
}

async function introspect(token: string): Promise<Record<string, unknown>> {
  const res = await fetch(`${t.url}/v1/introspect`, {
    method: 'POST',
    headers: { ...t.as('/resource/tickets'), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ token }),
  });
  expect(res.status).toBe(200);
  return (await res.json()) as Record<string, unknown>;
}

/** How many introspected tokens had their signature checked in each way (`verified`, `remembered`). */
async function signatures(): Promise<Record<string, number>> {
  const { values } = await t.broker.deps.metrics.introspectSignatures.get();
  return Object.fromEntries(values.map((v) => [String(v.labels.check), v.value]));
}

test('introspecting a token again does not verify its signature again', async () => {
  const { token } = await mint();
  const before = await signatures();
  for (let i = 0; i < 300; i++) expect(await introspect(token)).toMatchObject({ active: true });
  const after = await signatures();
  // Before: every introspection verified the ES256 signature (~100-200 µs of CPU each, the largest part of
  // an introspection's own work). Counted, not timed: CPU figures belong to `npm run bench`.
  expect((after.verified ?? 0) - (before.verified ?? 0)).toBe(1);
  expect((after.remembered ?? 0) - (before.remembered ?? 0)).toBe(299);
});

test('a token seen before is still checked: a changed signature, a revoked lease, an ended task, a key rotated away', async () => {
  const a = await mint();
  expect(await introspect(a.token)).toMatchObject({ active: true, jti: a.leaseId });
  // The same header and claims with another signature: not the token that verified.
  const [h, p, s] = a.token.split('.') as [string, string, string];
  const flipped = `${h}.${p}.${s.slice(0, -2)}${s.endsWith('AA') ? 'AQ' : 'AA'}`;
  expect(await introspect(flipped)).toEqual({ active: false });
  expect(await introspect(a.token)).toMatchObject({ active: true });
  // Its lease revoked: inactive at once.
  expect((await call(t.url, 'DELETE', `/v1/leases/${a.leaseId}`, t.as(AGENT))).status).toBe(202);
  expect(await introspect(a.token)).toEqual({ active: false });

  const b = await mint();
  expect(await introspect(b.token)).toMatchObject({ active: true });
  expect((await call(t.url, 'POST', `/v1/tasks/${b.taskId}/complete`, t.as(ORCH), {})).status).toBe(202);
  expect(await introspect(b.token)).toEqual({ active: false });

  // The key that signed it leaves the JWKS (an immediate rotation: a compromised key): inactive at once.
  const c = await mint();
  expect(await introspect(c.token)).toMatchObject({ active: true });
  expect((await call(t.url, 'POST', '/v1/admin/rotate', t.as(ADMIN), { target: 'signing-key', immediate: true })).status).toBe(202);
  expect(await introspect(c.token)).toEqual({ active: false });
  // A token of the new key: active (and its own entry).
  const d = await mint();
  expect(await introspect(d.token)).toMatchObject({ active: true });
}, 60_000);
