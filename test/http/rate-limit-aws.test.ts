import type { AwsEmulator } from '../emulators/aws/index.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';
import { AGENT, ORCH, call, openRateWindows, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/** The AWS SDK container-credentials endpoint spends the caller identity's budget like every authenticated route. */

let emu: AwsEmulator;
let t: TestBroker;
beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  const role = aws.role;
  t = await startTestBroker('rl-aws', {
    config: {
      server: {
        port: 0,
        publicUrl: 'http://127.0.0.1:8080',
        rateLimit: { perSecond: 1, burst: 2, unauthenticated: { perSecond: 1, burst: 2 } },
      },
      providers: aws.providers,
      roles: { 'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 } },
    },
  });
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-rl-aws',
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

const path = '/v1/aws/container-credentials/t-rl-aws/reports-bucket';

test('a third poll within the burst is 429 with Retry-After', async () => {
  const token = t.issuer.svid(AGENT, { ttl: 600 });
  // The first poll assumes a role at the emulator: on a loaded machine the three can span two 1-s windows.
  await openRateWindows(t, 'id', `spiffe://dev.local${AGENT}`);
  const out = [];
  for (let i = 0; i < 3; i++) out.push(await call(t.url, 'GET', path, { authorization: token }));
  expect(out.map((r) => r.status)).toEqual([200, 200, 429]);
  expect(out[2]!.body.Code).toBe('rate_limited');
  expect(Number(out[2]!.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
});

test('bad tokens count as authentication failures of the address', async () => {
  await openRateWindows(t, 'unauth', '127.0.0.1');
  const statuses = [];
  for (let i = 0; i < 6; i++) {
    statuses.push((await call(t.url, 'GET', path, { authorization: 'not-a-jwt' })).status);
    // The endpoint answers its own 401s; they are counted as the response finishes.
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(statuses.slice(0, 2)).toEqual([401, 401]);
  expect(statuses.slice(3)).toEqual([429, 429, 429]);
});
