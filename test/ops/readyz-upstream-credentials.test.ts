import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { CreateAccessKeyCommand, IAMClient, UpdateAccessKeyCommand } from '@aws-sdk/client-iam';
import type { AwsEmulator, EmulatedUser } from '../emulators/aws/index.ts';
import { call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';

/**
 * `/readyz`'s `checks.upstreamCredentials`: an upstream that is down is only reported (JWT traffic goes on),
 * but one that refuses this instance's own key (a key a rotation retired, one deactivated by hand) makes the
 * instance unready: it can neither issue nor revoke there, and traffic belongs on instances that can.
 */
let emu: AwsEmulator;
let user: EmulatedUser;
let t: TestBroker;
let iam: IAMClient;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  user = aws.user;
  t = await startTestBroker('readyz-upstream-credentials', { config: { providers: aws.providers } });
  // An operator's second key of the same user: it can switch the broker's key off and on again.
  const own = new IAMClient({ region: 'us-east-1', endpoint: emu.url, maxAttempts: 1, credentials: user });
  const k2 = (await own.send(new CreateAccessKeyCommand({ UserName: user.userName }))).AccessKey!;
  own.destroy();
  iam = new IAMClient({
    region: 'us-east-1',
    endpoint: emu.url,
    maxAttempts: 1,
    credentials: { accessKeyId: k2.AccessKeyId!, secretAccessKey: k2.SecretAccessKey! },
  });
});
afterAll(async () => {
  iam?.destroy();
  await t?.close();
  await emu?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** /readyz once the shared upstream check (at most one round a second) has looked again. */
async function readyzUntil(want: number): Promise<{ status: number; body: Record<string, any> }> {
  let r = await call(t.url, 'GET', '/readyz', {});
  for (let i = 0; i < 50 && r.status !== want; i++) {
    await sleep(100);
    r = await call(t.url, 'GET', '/readyz', {});
  }
  return r;
}
const setKey = (Status: 'Active' | 'Inactive') =>
  iam.send(new UpdateAccessKeyCommand({ UserName: user.userName, AccessKeyId: user.accessKeyId, Status }));

test('AWS down: reported under upstreams, still ready (upstreamCredentials true)', async () => {
  emu.setDown(true);
  try {
    await sleep(1100);
    const r = await call(t.url, 'GET', '/readyz', {});
    expect(r.status).toBe(200);
    expect(r.body.checks.upstreamCredentials).toBe(true);
    expect(r.body.upstreams.aws).toBe(false);
  } finally {
    emu.setDown(false);
  }
});

test("AWS refuses the instance's own key: 503 with checks.upstreamCredentials false, ready again once it is accepted", async () => {
  await setKey('Inactive');
  const refused = await readyzUntil(503);
  expect(refused.status).toBe(503);
  expect(refused.body).toMatchObject({ status: 'not_ready', upstreams: { aws: false } });
  // Only this check fails: the rest of the instance is fine.
  expect(Object.entries(refused.body.checks).filter(([, ok]) => !ok)).toEqual([['upstreamCredentials', false]]);

  await setKey('Active');
  const back = await readyzUntil(200);
  expect(back.status).toBe(200);
  expect(back.body.checks.upstreamCredentials).toBe(true);
}, 30_000);
