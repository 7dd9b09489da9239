import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { Pending } from '../../src/audit/chain-writer.ts';
import type { AuditChain } from '../../src/redis/keys.ts';
import { auditRecords, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Parking a poison member puts its `audit.outbox_poison` record in the same chain's outbox
 * (audit-outbox-park.lua), then appends it. That record has no task id, so it belongs to no bucket by
 * chainOf: when its append did not happen (the process died, Redis failed), recovery of the bucket found it
 * "not a record of this chain" and parked it as poison in turn: the record of the parking was lost (only
 * a record of parking it remained).
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('poison-note-recovery');
});
afterAll(async () => {
  await t?.close();
});

test('the record of a parked member is appended by recovery, not parked in turn', async () => {
  const { keys, redis } = t.broker.deps;
  const b = keys.bucketOfTask('t-note');
  await redis.zadd(keys.auditOutbox(b), Date.now() - 120_000, 'not a record');
  // The pass parks it, but the append of its record fails, as on a crash right after the park script.
  const writer = (t.broker.deps.audit as unknown as { writer: { write(chain: AuditChain, p: Pending): void } }).writer;
  const real = writer.write.bind(writer);
  writer.write = (_chain, p) => p.reject(new Error('the process died before appending'));
  await t.broker.outbox.pass().catch(() => {});
  writer.write = real;
  expect(await redis.zrange(keys.auditOutboxParked(b), '0', '-1')).toEqual(['not a record']);
  // The record of the parking waits in the outbox; once past the grace period, recovery appends it.
  const outbox = keys.auditOutbox(b);
  const flat = await redis.zrange(outbox, '0', '-1', 'WITHSCORES');
  expect(flat).toHaveLength(2);
  await redis.zadd(outbox, 'XX', Number(flat[1]) - 60_000, flat[0]!);
  await t.broker.outbox.pass();
  expect(await redis.zcard(outbox)).toBe(0);
  // Before: parked as poison too, with a record of that instead.
  expect(await redis.zrange(keys.auditOutboxParked(b), '0', '-1')).toEqual(['not a record']);
  const notes = (await auditRecords(redis, keys)).filter((r) => r.action === 'audit.outbox_poison');
  expect(notes).toHaveLength(1);
  expect(notes[0]).toMatchObject({ chain: b, reason: 'not_a_record', detail: { bytes: 12 } });
});
