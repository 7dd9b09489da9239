import { connect } from 'node:net';
import { decodeJwt } from 'jose';
import { AGENT, ORCH, auditRecords, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/** Token endpoint details: caching headers (RFC 6749 5.1), malformed forms, RFC 8707 `resource`. */

let t: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;
beforeAll(async () => {
  t = await startTestBroker('token-endpoint', {
    config: {
      roles: {
        'tickets-api': { provider: 'jwt', audience: 'https://tickets.internal', maxTtlSeconds: 900, scopes: ['tickets:read'] },
        'demo-api': { provider: 'jwt', audience: 'https://demo.internal', maxTtlSeconds: 300 },
        // Two roles sharing one audience: a resource naming it is ambiguous.
        'shared-a': { provider: 'jwt', audience: 'https://shared.internal', maxTtlSeconds: 300 },
        'shared-b': { provider: 'jwt', audience: 'https://shared.internal', maxTtlSeconds: 300 },
      },
    },
  });
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-te',
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }, { role: 'shared-a' }],
  });
  expect(r.status).toBe(201);
  const d = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-te-deny',
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(d.status).toBe(201);
});
afterAll(async () => {
  await t.close();
});

const post = async (body: string | URLSearchParams) => {
  const res = await fetch(`${t.url}/v1/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body });
  return { status: res.status, headers: res.headers, body: (await res.json().catch(() => undefined)) as any };
};
const base = (over: Record<string, string | undefined> = {}) => {
  const p: Record<string, string> = {};
  const all = {
    grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
    subject_token: t.issuer.svid(AGENT),
    subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    audience: 'tickets-api',
    task_id: 't-te',
    ...over,
  };
  for (const [k, v] of Object.entries(all)) if (v !== undefined) p[k] = v;
  return new URLSearchParams(p);
};

test('success and error responses carry Cache-Control: no-store and Pragma: no-cache', async () => {
  const ok = await post(base());
  expect(ok.status).toBe(200);
  expect(ok.headers.get('cache-control')).toBe('no-store');
  expect(ok.headers.get('pragma')).toBe('no-cache');
  const bad = await post(base({ audience: 'nope' }));
  expect(bad.status).toBe(400);
  expect(bad.headers.get('cache-control')).toBe('no-store');
  expect(bad.headers.get('pragma')).toBe('no-cache');
});

test("an agent's refused audience or resource is audited as a credential denial under its task, like POST /v1/credentials", async () => {
  // Found from outside: invalid_target left no record, so an agent could probe role names and audiences unseen.
  const refused = [{ audience: 'no-such-role' }, { audience: '__proto__' }, { audience: undefined, resource: 'https://evil.example' }];
  for (const over of refused) {
    const r = await post(base({ ...over, task_id: 't-te-deny' }));
    expect(r.body.error).toBe('invalid_target');
  }
  const denials = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (a) => a.taskId === 't-te-deny' && a.action === 'credential.deny',
  );
  expect(denials).toEqual([
    expect.objectContaining({
      action: 'credential.deny',
      actor: agentId,
      decision: 'deny',
      reason: 'role_not_granted',
      role: 'no-such-role',
    }),
  ]);
  // The three refusals share (actor, code, minute): one record now, their count at the minute's end.
  await t.broker.deps.audit.flushFolds(true);
  const folded = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (a) => a.taskId === 't-te-deny' && a.action === 'credential.deny',
  );
  expect(folded.map((a) => a.count ?? 1).reduce((x, y) => x + y)).toBe(3);
  // Not the task's agent: recorded, but not under a task the caller has no part in.
  const other = await post(base({ audience: 'no-such-role', task_id: 't-te-deny', subject_token: t.issuer.svid('/agent/other') }));
  expect(other.body.error).toBe('invalid_target');
  const stranger = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (a) => a.actor === 'spiffe://dev.local/agent/other',
  );
  expect(stranger).toEqual([expect.objectContaining({ action: 'credential.deny', reason: 'role_not_granted' })]);
  expect(stranger[0]!.taskId).toBeUndefined();
});

/** One request written as is (no Content-Length, no Transfer-Encoding: no body); the status line and body. */
const rawRequest = (head: string) =>
  new Promise<{ status: number; body: any }>((resolve, reject) => {
    const { port, hostname } = new URL(t.url);
    const s = connect(Number(port), hostname);
    const chunks: Buffer[] = [];
    s.on('data', (d) => chunks.push(d));
    s.on('error', reject);
    s.on('end', () => {
      const text = Buffer.concat(chunks).toString();
      const body = text.slice(text.indexOf('\r\n\r\n') + 4);
      let parsed: unknown = body;
      try {
        parsed = JSON.parse(body);
      } catch {
        // not JSON: compared as text
      }
      resolve({ status: Number(text.split(' ')[1]), body: parsed });
    });
    // Written, not ended: a client that half-closes first may get no answer at all.
    s.write(`${head}\r\nHost: x\r\nConnection: close\r\n\r\n`);
  });

test.each([
  ['/v1/token', 'grant_type is required.'],
  ['/v1/introspect', 'token is required.'],
])('%s: a body-less POST that declares the form type is invalid_request, not 415 "send it as a form"', async (path, description) => {
  // Found with HTTP/1.0 and `curl -X POST -H "Content-Type: application/x-www-form-urlencoded"`: no body means
  // req.is() answers null, and the broker told a client that had declared the form type to send one.
  const auth = path === '/v1/introspect' ? `\r\nAuthorization: Bearer ${t.issuer.svid('/rs/tickets')}` : '';
  for (const version of ['HTTP/1.0', 'HTTP/1.1']) {
    const r = await rawRequest(`POST ${path} ${version}\r\nContent-Type: application/x-www-form-urlencoded${auth}`);
    expect(r).toEqual({ status: 400, body: { error: 'invalid_request', error_description: description } });
  }
  // Declaring nothing (or another type) is still 415.
  const none = await rawRequest(`POST ${path} HTTP/1.1${auth}`);
  expect(none.status).toBe(415);
});

test('more than 50 form fields is invalid_request, not a 500', async () => {
  const body = base();
  for (let i = 0; i < 60; i++) body.append(`x${i}`, 'y');
  const r = await post(body);
  expect(r.status).toBe(400);
  expect(r.body.error).toBe('invalid_request');
});

test.each([
  ['%', 'a lone percent sign'],
  ['grant_type=%E0%A4%A', 'a truncated escape'],
  ['a=b&&&=&==', 'empty names'],
])('odd form body %s (%s) is a 400, not a 500', async (raw) => {
  const r = await post(raw);
  expect(r.status).toBe(400);
  expect(typeof r.body.error).toBe('string');
});

describe('RFC 8707 resource', () => {
  test('a resource equal to exactly one jwt role audience selects that role', async () => {
    const r = await post(base({ audience: undefined, resource: 'https://tickets.internal' }));
    expect(r.status).toBe(200);
    expect(decodeJwt(r.body.access_token)).toMatchObject({ aud: 'https://tickets.internal', task_id: 't-te' });
  });

  test('resource and audience together must agree', async () => {
    expect((await post(base({ resource: 'https://tickets.internal' }))).status).toBe(200);
    const r = await post(base({ resource: 'https://demo.internal' }));
    expect(r.status).toBe(400);
    expect(r.body.error).toBe('invalid_target');
  });

  test.each([
    ['an unknown resource', 'https://nowhere.internal'],
    ['a resource shared by two roles', 'https://shared.internal'],
    ['a role name instead of a URI', 'tickets-api'],
    ['a prefix of an audience', 'https://tickets.internal/'],
  ])('%s is invalid_target', async (_n, resource) => {
    const r = await post(base({ audience: undefined, resource }));
    expect(r.status).toBe(400);
    expect(r.body.error).toBe('invalid_target');
  });

  test('more than one resource is invalid_target', async () => {
    const body = base({ audience: undefined, resource: 'https://tickets.internal' });
    body.append('resource', 'https://demo.internal');
    const r = await post(body);
    expect(r.status).toBe(400);
    expect(r.body.error).toBe('invalid_target');
  });
});

test('more than one audience or resource is invalid_target (RFC 8693 2.2.2), audited like any refused target', async () => {
  // Found from outside: a repeated audience was invalid_request, and either repetition was refused before the
  // subject token was looked at, so an agent's multi-target request left no record (unlike one unknown target).
  const twoAudiences = base({ task_id: 't-te-multi' });
  twoAudiences.append('audience', 'shared-a');
  const twoResources = base({ audience: undefined, resource: 'https://tickets.internal', task_id: 't-te-multi' });
  twoResources.append('resource', 'https://tickets.internal');
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-te-multi',
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }, { role: 'shared-a' }],
  });
  expect(open.status).toBe(201);
  for (const body of [twoAudiences, twoResources]) {
    const r = await post(body);
    expect(r.status).toBe(400);
    expect(r.body.error).toBe('invalid_target');
  }
  await t.broker.deps.audit.flushFolds(true);
  const denials = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (a) => a.taskId === 't-te-multi' && a.action === 'credential.deny',
  );
  expect(denials.map((a) => a.count ?? 1).reduce((x, y) => x + y, 0)).toBe(2);
  expect(denials[0]).toMatchObject({ actor: agentId, reason: 'role_not_granted', detail: { oauthError: 'invalid_target' } });
});
