import { cpSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { ADMIN, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/** POST /v1/admin/policy/reload of a broken policy file answers the admin with file, line and Cedar's message. */

let t: TestBroker;
let dir: string;
beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'jit-policies-'));
  cpSync(resolve('config/policies'), dir, { recursive: true });
  t = await startTestBroker('admin-reload', { config: { policies: dir } });
});
afterAll(async () => {
  await t.close();
});

test('a broken policy file: 409 policy_invalid naming file and line; the old set stays in force', async () => {
  writeFileSync(join(dir, 'zz-broken.cedar'), 'permit (principal, action, resource)\nwhen { context.ttlSeconds <= };\n');
  const r = await call(t.url, 'POST', '/v1/admin/policy/reload', t.as(ADMIN));
  expect(r.status).toBe(409);
  expect(r.headers.get('content-type')).toContain('application/problem+json');
  expect(r.body.code).toBe('policy_invalid');
  expect(r.body.issues[0]).toMatchObject({ file: expect.stringContaining('zz-broken.cedar'), line: 2 });
  expect(typeof r.body.issues[0].message).toBe('string');
  expect(r.body.detail).toContain('zz-broken.cedar:2');
  // Fixed file: reload works again.
  writeFileSync(join(dir, 'zz-broken.cedar'), 'forbid (principal, action, resource) when { false };\n');
  const ok = await call(t.url, 'POST', '/v1/admin/policy/reload', t.as(ADMIN));
  expect(ok.status).toBe(202);
});

test('a body that is not an object is refused with 400, as docs/openapi.yaml says (found by the route fuzzer)', async () => {
  // It used to be ignored (202): the document's request body is an optional JSON object.
  const r = await call(t.url, 'POST', '/v1/admin/policy/reload', t.as(ADMIN), [1, 2]);
  expect(r.status).toBe(400);
  expect(r.headers.get('content-type')).toContain('application/problem+json');
  expect((await call(t.url, 'POST', '/v1/admin/policy/reload', t.as(ADMIN), {})).status).toBe(202);
  expect((await call(t.url, 'POST', '/v1/admin/policy/reload', t.as(ADMIN))).status).toBe(202);
});
