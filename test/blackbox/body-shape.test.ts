import { ADMIN, AGENT, ORCH, startTestBroker, type TestBroker } from '../helpers/broker.ts';

// Black-box finding: a JSON body of `null`, `"x"`, `1` or `true` answered 400 `malformed_json` (body-parser's
// strict mode takes anything but an object or array for a syntax error) while `[]` answered 400
// `invalid_request` (the route's schema refused it). Each is well-formed JSON of the wrong shape.
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('bb-shape', { config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080' } } });
});
afterAll(async () => {
  await t.close();
});

async function send(method: string, path: string, who: string, body: string, type = 'application/json') {
  const res = await fetch(`${t.url}${path}`, { method, headers: { ...t.as(who), 'content-type': type }, body });
  return { status: res.status, type: res.headers.get('content-type'), body: (await res.json().catch(() => undefined)) as any };
}

const ENDPOINTS = [
  ['POST', '/v1/tasks', ORCH],
  ['POST', '/v1/tasks/bb-shape-t/complete', ORCH],
  ['POST', '/v1/credentials', AGENT],
  ['POST', `/v1/approvals/${'0'.repeat(32)}`, ADMIN],
  ['POST', '/v1/admin/rotate', ADMIN],
  ['POST', '/v1/admin/policy/reload', ADMIN],
  ['POST', '/v1/admin/revoke', ADMIN],
  ['POST', '/v1/admin/quarantine', ADMIN],
  ['DELETE', `/v1/leases/${'0'.repeat(32)}`, AGENT],
] as const;
const NOT_OBJECTS = ['null', '"x"', '1', '-0.5', 'true', 'false', '[]', '[{}]', ' null ', '"\\u00e9"'];

test('well-formed JSON that is not an object is 400 invalid_request on every JSON endpoint (found by black-box red team)', async () => {
  for (const [method, path, who] of ENDPOINTS) {
    for (const body of NOT_OBJECTS) {
      const r = await send(method, path, who, body);
      // Before: malformed_json for all of them but [] and [{}], which answered invalid_request (DELETE, which reads no body: 404).
      expect([path, body, r.status, r.body?.code, r.body?.field]).toEqual([path, body, 400, 'invalid_request', '(body)']);
    }
    // What is not JSON at all stays malformed_json.
    for (const body of ['nul', '{', "{'a':1}", '  ']) {
      const r = await send(method, path, who, body);
      expect([path, body, r.status, r.body?.code]).toEqual([path, body, 400, 'malformed_json']);
    }
  }
  // An object still reaches the route's schema, and no body at all is still no body.
  expect((await send('POST', '/v1/admin/revoke', ADMIN, '{}')).body.code).toBe('invalid_request');
  const none = await fetch(`${t.url}/v1/tasks?limit=1`, { headers: t.as(ORCH) });
  expect(none.status).toBe(200);
});

test('the OAuth endpoints are form-encoded and answer RFC 6749 errors, unaffected', async () => {
  for (const path of ['/v1/token', '/v1/introspect']) {
    // Form-encoded, `null` is a parameter name: the endpoint's own invalid_request, never a problem.
    const form = await send('POST', path, AGENT, 'null');
    const asJson = await send('POST', path, AGENT, 'null', 'application/x-www-form-urlencoded');
    for (const r of [form, asJson]) {
      expect(r.type).toMatch(/^application\/json/);
      expect(r.body).toEqual({ error: 'invalid_request', error_description: expect.any(String) });
    }
  }
});
