import { AGENT, call, openAgentTask, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: POST /v1/introspect refused a repeated `token` (RFC 6749 3.2: parameters appear once) but took
 * a repeated `token_type_hint` and answered 200 for the token: a request docs/openapi.yaml refuses
 * (`token_type_hint` is a string), so the broker's answer did not conform to its own document (the
 * OpenAPI check in test/helpers/openapi-setup.ts failed this file on the code it was written against).
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rt-introspect-hint');
});
afterAll(async () => {
  await t.close();
});

const introspect = async (body: string) => {
  const res = await fetch(`${t.url}/v1/introspect`, {
    method: 'POST',
    headers: { ...t.as('/rs/tickets'), 'content-type': 'application/x-www-form-urlencoded' },
    body,
  });
  return { status: res.status, body: await res.json() };
};

test('a repeated token_type_hint is invalid_request; one is accepted and ignored', async () => {
  await openAgentTask(t, 'rt-hint', [{ role: 'demo-api' }]);
  const c = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'rt-hint', role: 'demo-api' });
  expect(c.status).toBe(201);
  const token = encodeURIComponent(c.body.credentials.access_token);

  const twice = await introspect(`token=${token}&token_type_hint=access_token&token_type_hint=refresh_token`);
  expect(twice).toEqual({ status: 400, body: { error: 'invalid_request', error_description: expect.stringMatching(/token_type_hint/) } });

  const once = await introspect(`token=${token}&token_type_hint=refresh_token`);
  expect(once).toMatchObject({ status: 200, body: { active: true, task_id: 'rt-hint' } });
});
