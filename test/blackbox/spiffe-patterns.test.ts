import { ADMIN, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

// Black-box finding: the broker refuses a non-canonical SPIFFE ID as an identity
// (401), yet took one as a quarantine or kill-switch pattern, or as a task's
// agent. Such a pattern matches no identity that can ever call: an admin who
// quarantined `SPIFFE://dev.local/agent/x` (201, "tasks": 0) had stopped
// nothing, and spiffe://dev.local/agent/x went on working.
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('bb-patterns', { config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080' } } });
});
afterAll(async () => {
  await t.close();
});

const NEVER = [
  'SPIFFE://dev.local/agent/x',
  'spiffe://DEV.local/agent/x',
  'spiffe://dev.local/agent/x/',
  'spiffe://dev.local/agent//x',
  'spiffe://dev.local/agent/../ops/x',
  'spiffe://dev.local/agent/x%2Fy',
  'spiffe://dev.local/agent/x y',
  'spiffe://dev.local',
  'Spiffe://dev.local/agent/*',
  'spiffe://dev.local/agent//*',
];

test('a task for an agent that is no canonical SPIFFE ID is refused (found by black-box red team)', async () => {
  for (const agent of NEVER.filter((a) => !a.endsWith('/*'))) {
    const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
      agent,
      tenant: 'acme',
      purpose: 'p',
      ttlSeconds: 60,
      grants: [{ role: 'demo-api' }],
    });
    // Before: 201, a task whose agent no token can ever name.
    expect([agent, r.status, r.body.code, r.body.field]).toEqual([agent, 400, 'invalid_request', 'agent']);
  }
});

test('a quarantine or kill-switch pattern that no SPIFFE identity can match is refused, not stored (found by black-box red team)', async () => {
  for (const agent of NEVER) {
    const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent, reason: 'typo' });
    // Before: 201 and the pattern listed; the identity it meant was not stopped.
    expect([agent, q.status, q.body.code, q.body.field]).toEqual([agent, 400, 'invalid_request', 'agent']);
    const k = await call(t.url, 'POST', '/v1/admin/revoke', t.as(ADMIN), { agent });
    expect([agent, k.status, k.body.code]).toEqual([agent, 400, 'invalid_request']);
  }
  expect((await call(t.url, 'GET', '/v1/admin/quarantine', t.as(ADMIN))).body.items).toEqual([]);
  // Canonical identities and patterns (a whole trust domain included) still work, and so do OIDC identities.
  for (const agent of [
    'spiffe://dev.local/agent/x',
    'spiffe://dev.local/agent/*',
    'spiffe://other.example/*',
    'https://issuer.example#sub-1',
  ]) {
    const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent, reason: 'r' });
    expect([agent, q.status]).toEqual([agent, 201]);
    const lift = await call(t.url, 'DELETE', `/v1/admin/quarantine/${encodeURIComponent(agent)}`, t.as(ADMIN));
    expect([agent, lift.status]).toEqual([agent, 200]);
  }
});
