import type { AwsEmulator } from '../emulators/aws/index.ts';
import {
  AGENT,
  ADMIN,
  ORCH,
  REDIS_URL,
  TEST_REVOCATION,
  call,
  startSibling,
  startTestBroker,
  uniquePrefix,
  waitFor,
  type TestBroker,
} from '../helpers/broker.ts';
import { LeaseStore } from '../../src/leases/lease-store.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';

/**
 * Red team: AWS sessions (which live at least 900 s whatever the task) issued on two instances while the task
 * completes or its agent is quarantined. Afterwards every session STS made for the task must be denied in IAM,
 * and no lease may be left live.
 */
const AGENT_ID = `spiffe://dev.local${AGENT}`;
let emu: AwsEmulator;
let a: TestBroker;
let b: TestBroker;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  const prefix = uniquePrefix('rt-races-aws');
  a = await startTestBroker('rt-races-aws', {
    prefix,
    config: {
      redis: { url: REDIS_URL, prefix },
      server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } },
      providers: { aws: { ...aws.providers.aws, revocation: 'iam-deny', requestTimeoutMs: 10_000 } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
      revocation: { ...TEST_REVOCATION },
    },
  });
  b = await startSibling(a);
});
afterAll(async () => {
  await b?.close();
  await a?.close();
  await emu?.stop();
});

const either = (i: number) => (i % 2 === 0 ? a : b);

async function open(id: string, agent = AGENT_ID) {
  const r = await call(a.url, 'POST', '/v1/tasks', a.as(ORCH), {
    taskId: id,
    agent,
    tenant: 'acme',
    purpose: 'race',
    ttlSeconds: 3600,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(r.status).toBe(201);
}

const usable = (keys: string[]) => keys.filter((k) => emu.evaluate(k, 's3:GetObject', 'arn:aws:s3:::reports/x') === 'allow');

async function expectNothingOutlives(taskIds: string[], keys: string[]): Promise<void> {
  const live = async () => {
    const out: string[] = [];
    for (const id of taskIds) {
      for (const l of await a.broker.deps.leases.getMany(await a.broker.deps.tasks.leaseIds(id)))
        if (!LeaseStore.isEnded(l.status)) out.push(`${l.leaseId}:${l.status}`);
    }
    return out;
  };
  await waitFor(async () => usable(keys).length === 0 && (await live()).length === 0, 12_000).catch(async () => {
    throw new Error(`left: sessions ${usable(keys).join(', ')}; leases ${(await live()).join(', ')}`);
  });
  // Each task's live-lease count (what tasks.maxLeases is checked on) came back to exactly none.
  for (const t of await a.broker.deps.tasks.getMany(taskIds)) expect([t.taskId, t.liveLeases]).toEqual([t.taskId, 0]);
}

test('issuance racing complete (answers held, then free): every session STS made is denied', async () => {
  for (let round = 0; round < 2; round++) {
    const id = `rt-arace-${round}`;
    await open(id);
    const before = emu.sessions().length;
    const N = 10;
    if (round === 0) for (let i = 0; i < N; i++) emu.holdAnswer('AssumeRole', 1500);
    const asks = Array.from({ length: N }, (_, i) =>
      call(either(i).url, 'POST', '/v1/credentials', either(i).as(AGENT), { taskId: id, role: 'reports-bucket' }),
    );
    if (round === 0) {
      await waitFor(async () => emu.sessions().length - before === N, 10_000);
      expect(
        usable(
          emu
            .sessions()
            .slice(before)
            .map((s) => s.accessKeyId),
        ),
      ).toHaveLength(N);
    } else await Promise.race(asks);
    expect((await call(either(round + 1).url, 'POST', `/v1/tasks/${id}/complete`, either(round + 1).as(ORCH))).status).toBe(202);
    const got = await Promise.all(asks);
    for (const r of got) expect([201, 409]).toContain(r.status);
    if (round === 0) expect(got.filter((r) => r.status === 201)).toEqual([]);
    await expectNothingOutlives(
      [id],
      emu
        .sessions()
        .slice(before)
        .map((s) => s.accessKeyId),
    );
  }
});

test('issuance racing a quarantine of the agent: every session STS made is denied', async () => {
  const rogue = '/agent/rt-arace-rogue';
  const rogueId = `spiffe://dev.local${rogue}`;
  const ids = ['rt-arace-q-0', 'rt-arace-q-1'];
  for (const id of ids) await open(id, rogueId);
  const before = emu.sessions().length;
  const asks = Array.from({ length: 12 }, (_, i) =>
    call(either(i).url, 'POST', '/v1/credentials', either(i).as(rogue), { taskId: ids[i % 2], role: 'reports-bucket' }),
  );
  await Promise.race(asks);
  expect((await call(b.url, 'POST', '/v1/admin/quarantine', b.as(ADMIN), { agent: rogueId, reason: 'race' })).status).toBeLessThan(300);
  const got = await Promise.all(asks);
  for (const r of got) expect([201, 403, 409]).toContain(r.status);
  await expectNothingOutlives(
    ids,
    emu
      .sessions()
      .slice(before)
      .map((s) => s.accessKeyId),
  );
});

test.each([
  ['the kill switch', 'kill', (id: string) => call(b.url, 'POST', '/v1/admin/revoke', b.as(ADMIN), { agent: id })],
  ['a quarantine', 'quarantine', (id: string) => call(b.url, 'POST', '/v1/admin/quarantine', b.as(ADMIN), { agent: id, reason: 'race' })],
])('%s while AssumeRole is on its way to STS: the session STS makes after it is denied too', async (_, slug, stop) => {
  const rogue = `/agent/rt-arace-late-${slug}`;
  const rogueId = `spiffe://dev.local${rogue}`;
  const id = `rt-arace-late-${slug}`;
  await open(id, rogueId);
  const before = emu.sessions().length;
  const held = emu.holdRequest('AssumeRole');
  const ask = call(a.url, 'POST', '/v1/credentials', a.as(rogue), { taskId: id, role: 'reports-bucket' });
  await held.arrived;
  expect((await stop(rogueId)).status).toBeLessThan(300);
  // STS makes the session in a later second than the stop: its TokenIssueTime is after it.
  await new Promise((r) => setTimeout(r, 1100));
  held.release();
  await held.landed;
  const r = await ask;
  expect(r.status).toBe(409);
  const made = emu.sessions().slice(before);
  expect(made).toHaveLength(1);
  await expectNothingOutlives(
    [id],
    made.map((s) => s.accessKeyId),
  );
});
