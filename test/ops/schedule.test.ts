import { auditRecords, startSibling, startTestBroker, type TestBroker, waitFor } from '../helpers/broker.ts';

/**
 * Scheduled rotation runs as a BullMQ job scheduler: with two instances on
 * one Redis, each firing is handled by exactly one of them.
 */
test('a scheduled signing-key rotation fires once per period across two instances', async () => {
  const began = Date.now();
  const a: TestBroker = await startTestBroker('schedule', {
    config: {
      rotation: { schedule: { 'signing-key': 1 } },
      providers: { jwt: { alg: 'ES256', retireGraceSeconds: 0, publishLeadSeconds: 0 } },
    },
  });
  const b = await startSibling(a);
  // Both instances run a scheduler; wait until it has fired a few times (a loaded machine may be slow to start).
  await waitFor(
    async () => (await auditRecords(a.broker.deps.redis, a.broker.deps.keys)).filter((r) => r.action === 'rotate').length >= 3,
    15_000,
    200,
  );
  await b.broker.close();
  const elapsed = Date.now() - began;
  const records = (await auditRecords(a.broker.deps.redis, a.broker.deps.keys)).filter((r) => r.action === 'rotate');
  await a.close();
  // Every 1 s: each firing done once (a double would show as a second record within
  // moments of the first, or as a rotation_in_progress error).
  expect(records.length).toBeGreaterThanOrEqual(2);
  // At most one firing per elapsed second (plus the one at the start), never one per instance.
  expect(records.length).toBeLessThanOrEqual(Math.floor(elapsed / 1000) + 1);
  expect(records.every((r) => r.decision === 'ok' && r.actor === 'broker')).toBe(true);
  // Each record names the period it ran for. A double firing is one period run twice (the same slot twice, or
  // two schedulers' slots less than a period apart); a firing a loaded machine ran late keeps its own slot, so
  // this holds whatever the load (wall-clock gaps between records do not: 94 ms was seen on a busy CI host).
  const slots = records.map((r) => Date.parse(String(r.detail?.scheduledFor)));
  expect(slots.every((s) => Number.isFinite(s))).toBe(true);
  for (let i = 1; i < slots.length; i++) expect(slots[i]! - slots[i - 1]!).toBeGreaterThanOrEqual(1000);
  expect(slots.every((s) => (s - slots[0]!) % 1000 === 0)).toBe(true);
}, 30_000);
