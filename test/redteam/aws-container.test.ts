import type { AwsEmulator } from '../emulators/aws/index.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';
import { ADMIN, AGENT, ORCH, auditRecords, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: the AWS container-credentials endpoint is a credential route like
 * POST /v1/credentials, so a quarantined identity must be refused there too,
 * before STS is asked for anything (it issued fresh AWS keys to a quarantined agent).
 */
let emu: AwsEmulator;
let t: TestBroker;
beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  t = await startTestBroker('rt-aws-container', {
    config: {
      server: { port: 0, publicUrl: 'http://127.0.0.1:8080' },
      providers: aws.providers,
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
    },
  });
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-rt-container',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 3600,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(r.status).toBe(201);
});
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

test('a quarantined agent gets no AWS keys from the container endpoint', async () => {
  const path = '/v1/aws/container-credentials/t-rt-container/reports-bucket';
  const token = t.issuer.svid(AGENT, { ttl: 600 });
  expect((await call(t.url, 'GET', path, { authorization: token })).status).toBe(200);
  const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: `spiffe://dev.local${AGENT}`, reason: 'red team' });
  expect(q.status).toBe(201);
  // Quarantine ended the task; a task for the same agent is refused now, and the container endpoint hands it nothing.
  const again = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-rt-container-2',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 3600,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(again.status).toBe(403);
  expect(again.body.code).toBe('identity_quarantined');
  const before = emu.sessions().length;
  const refused = await call(t.url, 'GET', path, { authorization: token });
  expect(refused.status).toBe(403);
  expect(refused.body.Code).toBe('identity_quarantined');
  expect(emu.sessions().length).toBe(before);
  const denials = (await auditRecords(t.broker.deps.redis, t.broker.deps.keys)).filter(
    (r) => r.action === 'access.deny' && r.actor === `spiffe://dev.local${AGENT}` && r.reason === 'identity_quarantined',
  );
  expect(denials.length).toBeGreaterThanOrEqual(1);
});
