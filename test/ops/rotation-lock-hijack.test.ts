import { ADMIN, auditRecords, call, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

/**
 * The rotation lock shares src/redis/lock.ts with the audit export: a `SET <prefix>:…:lock:rotate:signing-key x`
 * without an expiry by anyone with Redis write access used to answer every rotation 409
 * `rotation_in_progress` for good (a compromised signing key could no longer be rotated). Now such a key is
 * taken over, and the takeover is audited.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rotate-hijack');
}, 30_000);
afterAll(async () => {
  await t?.close();
});

test('a rotation lock key without an expiry does not block rotating the signing key; the takeover is audited', async () => {
  const { redis, keys } = t.broker.deps;
  const lock = keys.lock('rotate:signing-key');
  await redis.set(lock, 'held-forever');
  const r = await call(t.url, 'POST', '/v1/admin/rotate', t.as(ADMIN), { target: 'signing-key' });
  expect(r.status).toBe(202);
  expect(await redis.exists(lock)).toBe(0);
  const takeover = await waitFor(async () => (await auditRecords(redis, keys)).find((x) => x.action === 'lock.takeover'));
  expect(takeover).toMatchObject({ actor: 'broker', reason: 'lock_without_expiry', detail: { lock, pttlMs: -1 }, chain: 'ops' });

  // A lock held the way a broker holds it (another rotation running) is still respected.
  await redis.set(lock, 'another-instance', 'PX', 20_000);
  const busy = await call(t.url, 'POST', '/v1/admin/rotate', t.as(ADMIN), { target: 'signing-key' });
  expect([busy.status, busy.body.code]).toEqual([409, 'rotation_in_progress']);
  await redis.del(lock);
});
