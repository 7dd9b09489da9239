import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

// The OAuth endpoints answer RFC 6749 errors for every failure, their own
// and the broker's (contract section 3): Redis out of reach is
// temporarily_unavailable (503), a bug is server_error (500), never a problem.

let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('oas-oauth-fail');
  await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-fail',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api' }],
  });
});
afterAll(async () => {
  await t?.close();
});

const form = (path: string, fields: Record<string, string>, headers: Record<string, string> = {}) =>
  fetch(`${t.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(fields).toString(),
  });
const exchange = () =>
  form('/v1/token', {
    grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
    subject_token: t.issuer.svid(AGENT),
    subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    audience: 'tickets-api',
    task_id: 't-fail',
  });

test.each([
  ['Redis out of reach', 503, 'temporarily_unavailable', new Error('Connection is closed.')],
  ['a bug', 500, 'server_error', new TypeError('boom')],
])('%s: both endpoints answer %i %s in the RFC 6749 shape', async (_name, status, error, failure) => {
  const { leases, credentials } = t.broker.services;
  const introspect = leases.introspect;
  const request = credentials.request;
  leases.introspect = async () => {
    throw failure;
  };
  credentials.request = async () => {
    throw failure;
  };
  try {
    for (const res of [await form('/v1/introspect', { token: 'x' }, t.as('/resource/r')), await exchange()]) {
      expect(res.status).toBe(status);
      expect(res.headers.get('content-type')).toMatch(/^application\/json/);
      expect(res.headers.get('cache-control')).toBe('no-store');
      expect(await res.json()).toEqual({ error, error_description: expect.any(String) });
    }
  } finally {
    leases.introspect = introspect;
    credentials.request = request;
  }
});
