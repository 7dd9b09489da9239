import { decodeJwt } from 'jose';
import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

let t: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;
beforeAll(async () => {
  t = await startTestBroker('oauth');
  await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-oauth',
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
});
afterAll(async () => {
  await t.close();
});

const exchange = async (params: Record<string, string>, contentType = 'application/x-www-form-urlencoded') => {
  const res = await fetch(`${t.url}/v1/token`, {
    method: 'POST',
    headers: { 'content-type': contentType },
    body: new URLSearchParams(params),
  });
  return { status: res.status, body: (await res.json()) as Record<string, any> };
};
const base = () => ({
  grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
  subject_token: t.issuer.svid(AGENT),
  subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
  audience: 'tickets-api',
  task_id: 't-oauth',
});

test('RFC 8693 exchange returns an access token bound to the task', async () => {
  const r = await exchange({ ...base(), scope: 'tickets:read', requested_token_type: 'urn:ietf:params:oauth:token-type:access_token' });
  expect(r.status).toBe(200);
  expect(r.body).toMatchObject({
    issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    token_type: 'Bearer',
    scope: 'tickets:read',
  });
  expect(r.body.expires_in).toBeGreaterThan(0);
  expect(decodeJwt(r.body.access_token)).toMatchObject({ sub: agentId, aud: 'https://tickets.internal', task_id: 't-oauth' });
});

test.each([
  ['wrong grant_type', { grant_type: 'client_credentials' }, 'unsupported_grant_type'],
  ['missing subject_token', { subject_token: '' }, 'invalid_request'],
  ['bad subject_token_type', { subject_token_type: 'urn:x' }, 'invalid_request'],
  ['invalid subject token', { subject_token: 'a.b.c' }, 'invalid_grant'],
  ['unknown audience', { audience: 'nope' }, 'invalid_target'],
  ['ungranted audience', { audience: 'demo-api' }, 'invalid_target'],
  ['scope outside the grant', { scope: 'tickets:write' }, 'invalid_scope'],
  ['missing task_id', { task_id: '' }, 'invalid_request'],
  ['another agent', { subject_token: '' }, 'unauthorized_client'],
])('%s → %s', async (name, over, error) => {
  const params: Record<string, string> = { ...base(), ...over };
  if (name === 'another agent') params.subject_token = t.issuer.svid('/agent/other');
  const r = await exchange(params);
  expect(r.status).toBe(400);
  expect(r.body.error).toBe(error);
  expect(typeof r.body.error_description).toBe('string');
});

test('a repeated parameter is invalid_request; JSON bodies are refused', async () => {
  const body = new URLSearchParams(base());
  body.append('task_id', 't-other');
  const res = await fetch(`${t.url}/v1/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body });
  expect(((await res.json()) as { error: string }).error).toBe('invalid_request');
  const json = await fetch(`${t.url}/v1/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(base()),
  });
  expect(json.status).toBe(415);
  expect(((await json.json()) as { error: string }).error).toBe('invalid_request');
});
