import { afterAll, beforeAll, expect, jest, test } from '@jest/globals';
import { Redis } from 'ioredis';
import { AuditLog } from '../../src/audit/audit-log.ts';
import { silentLogger } from '../../src/logger.ts';
import { Keys } from '../../src/redis/keys.ts';
import { dropPrefix, REDIS_URL, uniquePrefix } from '../helpers/broker.ts';

/**
 * src/audit/chain-writer.ts: with `guardEpoch`, a record that would start a chain at seq 1 waits up to 15 s
 * for the data-loss marker (after Redis lost its data, chains continue from the export first). That wait was
 * timed with Date.now(): the process's wall clock stepped forward an hour (NTP setting a slow clock right)
 * while it waited failed the record at once, and the call that wrote it (an issuance, a task ending) with
 * it, though the marker came a moment later; stepped back, the wait went on for the hour. It is a monotonic
 * duration now.
 */
const prefix = uniquePrefix('epoch-step');
let redis: Redis;

beforeAll(() => {
  redis = new Redis(REDIS_URL);
});
afterAll(async () => {
  jest.restoreAllMocks();
  await dropPrefix(prefix);
  await redis.quit();
});

test('a record waiting for the data-loss marker is written once it comes, the wall clock stepped forward an hour meanwhile', async () => {
  const keys = new Keys(prefix);
  const log = new AuditLog({ redis, keys, logger: silentLogger, taskIndexMs: 60_000, guardEpoch: true });
  const appended = log.append({ action: 'admin.revoke', actor: 'test', decision: 'allow' });
  const outcome = appended.then(
    () => 'written',
    (err: Error) => err.message,
  );
  await new Promise((r) => setTimeout(r, 200)); // waiting for the marker
  const realNow = Date.now.bind(Date);
  jest.spyOn(Date, 'now').mockImplementation(() => realNow() + 3_600_000);
  try {
    await new Promise((r) => setTimeout(r, 200)); // a few polls on the stepped clock
    await redis.set(keys.epoch(), '1');
    expect(await outcome).toBe('written');
  } finally {
    jest.restoreAllMocks();
  }
  expect(await redis.xlen(keys.auditStream('ops'))).toBe(1);
});
