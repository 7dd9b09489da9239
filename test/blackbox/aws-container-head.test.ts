import type { AwsEmulator } from '../emulators/aws/index.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';
import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: Express answers HEAD with a route's GET handler, body dropped. On the AWS container-credentials
 * endpoint that GET is no read: it issues. A HEAD by the task's agent made an STS session and an `active`
 * lease, recorded `credential.issue`, and threw the keys away: a credential made upstream that nobody
 * received, counted against `tasks.maxLeases` and left to live its TTL. No SDK sends HEAD there; it now
 * answers 404 `route_not_found` (as any method the API does not have) before anything is verified or issued.
 */
let emu: AwsEmulator;
let t: TestBroker;
const path = '/v1/aws/container-credentials/t-head/reports-bucket';

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  t = await startTestBroker('rt-aws-container-head', {
    config: {
      server: { port: 0, publicUrl: 'http://127.0.0.1:8080' },
      providers: aws.providers,
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
    },
  });
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-head',
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

test('HEAD on the container endpoint issues nothing: no STS call, no lease', async () => {
  const token = t.issuer.svid(AGENT, { ttl: 600 });
  const before = emu.requests('AssumeRole').length;
  const head = await fetch(`${t.url}${path}`, { method: 'HEAD', headers: { authorization: token } });
  expect(head.status).toBe(404);
  expect(emu.requests('AssumeRole').length).toBe(before);
  const task = await call(t.url, 'GET', '/v1/tasks/t-head', t.as(ORCH));
  expect(task.body.leases).toEqual([]);
  // GET still issues.
  expect((await call(t.url, 'GET', path, { authorization: token })).status).toBe(200);
  expect(emu.requests('AssumeRole').length).toBe(before + 1);
});
