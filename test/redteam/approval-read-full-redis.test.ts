import type { Redis } from 'ioredis';
import { approvedDeploy, permitAllPolicies } from '../helpers/approvals.ts';
import { call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { type RedisStandalone, startStandalone } from '../helpers/redis-topology.ts';

/**
 * A read or list that finds an approval its approver no longer stands behind voids it in Redis (a write), so that
 * no read shows `approved` for an approval that can hand nothing out. With Redis refusing writes (full under
 * `noeviction`, a failed RDB save) that write failed and so did the read: 503 for `GET /v1/approvals/{id}` and for
 * every list page holding such an approval, while reads are what operators need on such a day. The read now shows
 * it `expired` all the same; the first call that can write voids it (and audits that).
 */
let redis: RedisStandalone;
let admin: Redis;
let t: TestBroker;
const AGENT = '/agent/deployer';
const BOB = '/ops/bob';
const ALICE = '/ops/alice';
const id = (p: string) => `spiffe://dev.local${p}`;

beforeAll(async () => {
  redis = await startStandalone();
  admin = redis.client();
  await admin.connect();
  const policies = permitAllPolicies('rt-approval-full');
  const prefix = `afull-${process.pid}`;
  t = await startTestBroker('rt-approval-full', { prefix, config: { policies, redis: { url: redis.url, prefix } } });
}, 60_000);
afterAll(async () => {
  await admin?.config('SET', 'maxmemory', '0').catch(() => {});
  await t?.broker.close();
  admin?.disconnect();
  await redis?.stop();
});

test('with Redis refusing writes, an approval whose approver was quarantined reads `expired`, alone and in lists', async () => {
  const { approvalId, ask } = await approvedDeploy(t, 'af-1', AGENT, BOB);
  expect((await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ALICE), { agent: id(BOB), reason: 'key leaked' })).status).toBe(201);

  await admin.config('SET', 'maxmemory', '1');
  try {
    const one = await call(t.url, 'GET', `/v1/approvals/${approvalId}`, t.as(ALICE));
    // Before: 503 not_ready.
    expect([one.status, one.body.status]).toEqual([200, 'expired']);
    const list = await call(t.url, 'GET', '/v1/approvals?limit=500', t.as(ALICE));
    expect(list.status).toBe(200);
    const mine = (list.body.items as { approvalId: string; status: string }[]).find((a) => a.approvalId === approvalId);
    expect(mine?.status).toBe('expired');
    const approved = await call(t.url, 'GET', '/v1/approvals?status=approved&limit=500', t.as(ALICE));
    expect(approved.status).toBe(200);
    expect((approved.body.items as { approvalId: string }[]).map((a) => a.approvalId)).not.toContain(approvalId);
    // Issuing needs writes: still a 503, never a credential on the quarantined approver's word.
    const again = await ask();
    expect([again.status, again.body.code]).toEqual([503, 'not_ready']);
  } finally {
    await admin.config('SET', 'maxmemory', '0');
  }
  // Writes back: the agent's request voids it (once) and asks again.
  const after = await ask();
  expect(after.status).toBe(202);
  expect(after.body.approvalId).not.toBe(approvalId);
});
