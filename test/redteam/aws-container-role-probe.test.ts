import type { AwsEmulator } from '../emulators/aws/index.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';
import { AGENT, ORCH, auditRecords, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: the AWS container-credentials endpoint checked the role in its URL before the caller's token. Anyone
 * (any `Authorization` value, no identity at all) learned from 400 `unknown_role` / `not_an_aws_role` / 401 which
 * role names the broker has and which of them issue AWS keys, with no audit record and without spending the
 * address's authentication-failure budget (a 400 is not a failed authentication). Every other route says which
 * roles exist only to a verified caller, and records the attempt (POST /v1/credentials: 403 role_not_granted;
 * /v1/token: invalid_target, audited). Now the token is verified first and the role judged as POST
 * /v1/credentials judges it: the task's agent, a granted role, then the role's kind, each refusal audited.
 */
let emu: AwsEmulator;
let t: TestBroker;
const A = `spiffe://dev.local${AGENT}`;
const path = (taskId: string, role: string) => `/v1/aws/container-credentials/${taskId}/${role}`;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  t = await startTestBroker('rt-aws-container-probe', {
    config: {
      server: { port: 0, publicUrl: 'http://127.0.0.1:8080' },
      providers: aws.providers,
      roles: {
        'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 },
        'tickets-api': { provider: 'jwt', audience: 'https://tickets.internal', maxTtlSeconds: 900, scopes: ['tickets:read'] },
        'payroll-db': { provider: 'jwt', audience: 'https://payroll.internal', maxTtlSeconds: 300 },
      },
    },
  });
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-probe',
    agent: A,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 3600,
    grants: [
      { role: 'reports-bucket', scopes: ['s3:GetObject'] },
      { role: 'tickets-api', scopes: ['tickets:read'] },
    ],
  });
  expect(r.status).toBe(201);
});
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

test('without a valid identity every role name answers the same 401: nothing tells which roles exist or what they issue', async () => {
  const answers = [];
  for (const role of ['reports-bucket', 'tickets-api', 'payroll-db', 'no-such-role']) {
    const r = await call(t.url, 'GET', path('t-probe', role), { authorization: 'not-a-jwt' });
    answers.push([role, r.status, r.body.Code]);
  }
  expect(answers).toEqual([
    ['reports-bucket', 401, 'identity_invalid'],
    ['tickets-api', 401, 'identity_invalid'],
    ['payroll-db', 401, 'identity_invalid'],
    ['no-such-role', 401, 'identity_invalid'],
  ]);
});

test("a verified caller learns of a role only as its task's agent, and every refusal is an audited denial", async () => {
  const sessions = emu.sessions().length;
  const agent = { authorization: t.issuer.svid(AGENT, { ttl: 600 }) };
  // Another agent: refused as not the task's agent whatever the role, as POST /v1/credentials refuses it.
  const stranger = { authorization: t.issuer.svid('/agent/stranger', { ttl: 600 }) };
  for (const role of ['tickets-api', 'payroll-db', 'no-such-role']) {
    const r = await call(t.url, 'GET', path('t-probe', role), stranger);
    expect([role, r.status, r.body.Code]).toEqual([role, 403, 'not_task_agent']);
  }
  // The task's agent: a role not granted to its task (configured or not) is role_not_granted; a granted role of
  // another kind is not_an_aws_role, refused before anything is issued.
  const unknown = await call(t.url, 'GET', path('t-probe', 'no-such-role'), agent);
  expect([unknown.status, unknown.body.Code]).toEqual([403, 'role_not_granted']);
  const ungranted = await call(t.url, 'GET', path('t-probe', 'payroll-db'), agent);
  expect([ungranted.status, ungranted.body.Code]).toEqual([403, 'role_not_granted']);
  const otherKind = await call(t.url, 'GET', path('t-probe', 'tickets-api'), agent);
  expect([otherKind.status, otherKind.body.Code]).toEqual([400, 'not_an_aws_role']);
  expect(emu.sessions().length).toBe(sessions);
  const task = await call(t.url, 'GET', '/v1/tasks/t-probe', t.as(ORCH));
  expect(task.body.leases).toEqual([]); // no JWT was minted and thrown away

  // Repeats of one (caller, code, task) in a minute fold into one record naming every role (docs/audit.md).
  await t.broker.deps.audit.flushFolds(true);
  const denials = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (x) => x.action === 'credential.deny' && x.taskId === 't-probe',
  );
  const roles = (actor: string, reason: string) =>
    new Set(denials.filter((x) => x.actor === actor && x.reason === reason).flatMap((x) => [x.role, ...(x.detail?.roles ?? [])]));
  expect(roles('spiffe://dev.local/agent/stranger', 'not_task_agent')).toEqual(new Set(['tickets-api', 'payroll-db', 'no-such-role']));
  expect(roles(A, 'role_not_granted')).toEqual(new Set(['no-such-role', 'payroll-db']));
  expect(roles(A, 'not_an_aws_role')).toEqual(new Set(['tickets-api']));
});

/**
 * The same route took its scopes from the query without the schema POST /v1/credentials holds them to: one granted
 * scope repeated a thousand times made a lease and a credential.issue record naming it a thousand times (15 KB).
 */
test('scopes in the query are held to the schema of POST /v1/credentials', async () => {
  const agent = { authorization: t.issuer.svid(AGENT, { ttl: 600 }) };
  const sessions = emu.sessions().length;
  for (const q of [
    `scope=${Array(1000).fill('s3:GetObject').join('+')}`,
    'scope=s3:GetObject+s3:GetObject',
    `scope=${'s3:Get'.repeat(100)}`,
  ]) {
    const r = await call(t.url, 'GET', `${path('t-probe', 'reports-bucket')}?${q}`, agent);
    expect([r.status, r.body.Code]).toEqual([400, 'invalid_request']);
    expect(r.body.field).toMatch(/^scopes/);
  }
  expect(emu.sessions().length).toBe(sessions);
});

test('the granted aws role still issues', async () => {
  const r = await call(t.url, 'GET', path('t-probe', 'reports-bucket'), { authorization: t.issuer.svid(AGENT, { ttl: 600 }) });
  expect(r.status).toBe(200);
  expect(r.body.AccessKeyId).toMatch(/^ASIA/);
});
