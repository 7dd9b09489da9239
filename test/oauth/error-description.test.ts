import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * RFC 6749 section 5.2: `error_description` "MUST NOT include characters outside the set %x20-21 /
 * %x23-5B / %x5D-7E" (printable ASCII without `"` and `\`). Found from outside: the broker's texts quote
 * names (`"nope" is not a jwt role.`, `Role "demo-api" is not granted to this task.`) and echoed what the
 * caller sent (non-ASCII, control characters) into error_description on /v1/token and /v1/introspect.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('oauth-error-description');
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-ed',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(r.status).toBe(201);
});
afterAll(async () => {
  await t.close();
});

const ALLOWED = /^[\x20\x21\x23-\x5B\x5D-\x7E]*$/;

const form = async (path: string, fields: Record<string, string>, headers: Record<string, string> = {}) => {
  const res = await fetch(`${t.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: new URLSearchParams(fields),
  });
  return { status: res.status, body: (await res.json()) as { error: string; error_description: string } };
};
const exchange = (over: Record<string, string>) =>
  form('/v1/token', {
    grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
    subject_token: t.issuer.svid(AGENT),
    subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    audience: 'tickets-api',
    task_id: 't-ed',
    ...over,
  });

test.each([
  ['an unknown audience (quoted back)', { audience: 'nope' }, 'invalid_target'],
  ['a non-ASCII audience', { audience: 'tickéts-äpi' }, 'invalid_target'],
  ['an audience with a quote, a backslash and a newline', { audience: 'a"b\\c\nd' }, 'invalid_target'],
  ['a configured role not granted to the task (quoted)', { audience: 'demo-api' }, 'invalid_target'],
  ['a scope not granted', { scope: 'tickets:write' }, 'invalid_scope'],
  ['an unknown task', { task_id: 'no-such-task' }, 'invalid_request'],
])('/v1/token: %s has an RFC 6749 error_description', async (_name, over, error) => {
  const r = await exchange(over);
  expect(r.status).toBe(400);
  expect(r.body.error).toBe(error);
  expect(r.body.error_description).toMatch(ALLOWED);
  expect(r.body.error_description.length).toBeGreaterThan(0);
});

test('a quoted name keeps its meaning: the quotes become apostrophes', async () => {
  const r = await exchange({ audience: 'nope' });
  expect(r.body.error_description).toBe("'nope' is not a jwt role.");
});

test('/v1/introspect: a 401 and a 400 have RFC 6749 error_descriptions', async () => {
  const unauthenticated = await form('/v1/introspect', { token: 'x' }, { authorization: 'Bearer not-a-jwt' });
  expect(unauthenticated.status).toBe(401);
  expect(unauthenticated.body.error_description).toMatch(ALLOWED);
  const noToken = await form('/v1/introspect', {}, t.as('/rs/tickets'));
  expect(noToken.status).toBe(400);
  expect(noToken.body.error_description).toMatch(ALLOWED);
});
