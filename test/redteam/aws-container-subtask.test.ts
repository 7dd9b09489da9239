import type { AwsEmulator } from '../emulators/aws/index.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';
import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: the AWS container-credentials endpoint refused every sub-task id
 * (its own task-id pattern lacked `~`), so a sub-task's agent could not use it
 * at all. It now takes the task ids the broker makes, as POST /v1/credentials
 * does, and answers each caller as that route does.
 */
const ROOT_AGENT = `spiffe://dev.local${AGENT}`;
const SUB = '/agent/researcher';
let emu: AwsEmulator;
let t: TestBroker;
beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  t = await startTestBroker('rt-aws-container-sub', {
    config: {
      server: { port: 0, publicUrl: 'http://127.0.0.1:8080' },
      providers: aws.providers,
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
    },
  });
  const root = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-rt-sub-root',
    agent: ROOT_AGENT,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 3600,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(root.status).toBe(201);
  const sub = await call(t.url, 'POST', '/v1/tasks', t.as(AGENT), {
    taskId: 'child',
    parentTaskId: 't-rt-sub-root',
    agent: `spiffe://dev.local${SUB}`,
    ttlSeconds: 600,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(sub.status).toBe(201);
  expect(sub.body.taskId).toBe('t-rt-sub-root~child');
});
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

const path = '/v1/aws/container-credentials/t-rt-sub-root~child/reports-bucket';

test("a sub-task's agent gets AWS keys from the container endpoint, as a root task's agent does", async () => {
  const before = emu.sessions().length;
  const r = await call(t.url, 'GET', path, { authorization: t.issuer.svid(SUB, { ttl: 600 }) });
  expect(r.status).toBe(200);
  expect(typeof r.body.AccessKeyId).toBe('string');
  expect(typeof r.body.Token).toBe('string');
  expect(emu.sessions().length).toBe(before + 1);
});

test('another agent is answered as POST /v1/credentials answers it for the sub-task', async () => {
  const viaApi = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 't-rt-sub-root~child', role: 'reports-bucket' });
  const viaContainer = await call(t.url, 'GET', path, { authorization: t.issuer.svid(AGENT, { ttl: 600 }) });
  expect(viaApi.status).toBe(403);
  expect(viaContainer.status).toBe(viaApi.status);
  expect(viaContainer.body.Code).toBe(viaApi.body.code);
});

test.each(['~child', 't-rt-sub-root~', 't-rt-sub-root~~child', 'a b'])('a malformed task id %j is a 400', async (id) => {
  const r = await call(t.url, 'GET', `/v1/aws/container-credentials/${encodeURIComponent(id)}/reports-bucket`, {
    authorization: t.issuer.svid(SUB, { ttl: 600 }),
  });
  expect(r.status).toBe(400);
  expect(r.body.Code).toBe('invalid_request');
});
