import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import { OutboxRecovery } from '../../src/audit/outbox.ts';
import { outboxMember } from '../../src/audit/outbox-member.ts';
import { readArchive } from '../../src/audit/restore.ts';
import { silentLogger } from '../../src/logger.ts';
import { acquireLock, keepLock } from '../../src/redis/lock.ts';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { auditFixture, type AuditFixture } from '../audit/fixture.ts';
import { ADMIN, call, REDIS_URL, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { exportFile, recoveryMonitor } from '../helpers/recovery-harness.ts';
import { ROTATABLE, awsForBroker } from '../providers/aws/helpers.ts';

/**
 * Every broker lock is set for a short hold (10 s) and kept extended while its work runs, so a holder killed
 * mid-work (SIGKILL, a lost machine) holds it for that long. Before, the recovery, audit export, audit outbox
 * recovery and rotation locks were set, and extended, for 30 s: the other instances waited up to 30 s (not
 * ready, exports and quarantine changes failing, a chain's lost records unappended, rotations refused). Each
 * test reads the lock's PTTL while its holder works, from another connection. 30 s stays the takeover bound
 * (a previous release's lock of 30 s is waited for: test/redis/lua-scripts.test.ts).
 */
const HOLD = 10_000;
let t: TestBroker;
let emu: AwsEmulator;
let audit: AuditFixture;
let observer: Redis;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  t = await startTestBroker('lock-holds', {
    config: {
      providers: { aws: { ...aws.providers.aws, ...ROTATABLE } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
      // The rotation waits this long with its lock, past the keeper's first extension (a third of the hold).
      rotation: { switchGraceMs: 4000 },
    },
    // The data-loss checks below are the test's own.
    broker: { dataLossCheckMs: 600_000 },
  });
  audit = await auditFixture('lock-holds');
  observer = new Redis(REDIS_URL);
}, 60_000);
afterAll(async () => {
  observer?.disconnect();
  await audit?.close();
  await t?.close();
  await emu?.stop();
});

/** The PTTLs of `key` seen while `work` runs, polled from another connection (those of a set key only). */
async function pttlsWhile<T>(key: string, work: () => Promise<T>): Promise<{ value: T; pttls: number[] }> {
  const pttls: number[] = [];
  let done = false;
  const poll = (async () => {
    while (!done) {
      const p = await observer.pttl(key);
      if (p > 0) pttls.push(p);
      await sleep(2);
    }
  })();
  try {
    return { value: await work(), pttls };
  } finally {
    done = true;
    await poll;
  }
}

test('a lock with a hold: set for the hold, and extended to it, never beyond it, while its work runs', async () => {
  const key = t.broker.deps.keys.lock('holds-generic');
  const lock = await acquireLock(observer, key, { ttlMs: 5000, holdMs: 600, onTakeover: () => {} });
  expect(lock?.holdMs).toBe(600);
  expect(await observer.pttl(key)).toBeLessThanOrEqual(600);
  // Before: extend's bound was the takeover bound, so a keeper at 5000 kept a killed holder's lock 5 s.
  await expect(lock!.extend(5000)).rejects.toThrow(RangeError);
  const keep = keepLock(lock!, 'test');
  // Three holds on: kept, and never above the hold.
  const { pttls } = await pttlsWhile(key, () => sleep(1800));
  keep.stop();
  expect(keep.signal.aborted).toBe(false);
  expect(Math.min(...pttls)).toBeGreaterThan(0);
  expect(Math.max(...pttls)).toBeLessThanOrEqual(600);
  await lock!.release();
});

test('the recovery lock is set for 10 s, right after it is taken (before: 30 s)', async () => {
  const { deps } = t.broker;
  const key = deps.keys.lock('recovery');
  const seen: number[] = [];
  const monitor = recoveryMonitor(t, {
    // Recovery's first long step, under the lock.
    readArchive: async () => {
      seen.push(await observer.pttl(key));
      return readArchive(exportFile(t), deps.keys.prefix);
    },
  });
  // The marker gone: a data loss, as this monitor sees it.
  await deps.redis.del(deps.keys.epoch());
  await monitor.init();
  expect(monitor.ready).toBe(true);
  expect(seen).toHaveLength(1);
  expect(seen[0]).toBeGreaterThan(HOLD - 2000);
  expect(seen[0]).toBeLessThanOrEqual(HOLD);
});

test('the audit export lock is set for 10 s while a pass runs (before: 30 s)', async () => {
  await audit.append(300);
  await audit.log.flush();
  // Small pages, paced: the pass takes a while, and the lock is read throughout.
  const exporter = audit.exporter({ pageSize: 5 });
  const { value, pttls } = await pttlsWhile(audit.keys.lock('audit-export'), () => exporter.pass({ waitMs: 0, trim: false, paced: true }));
  expect(value?.exported.get('ops')).toBe(300);
  expect(pttls.length).toBeGreaterThan(0);
  expect(Math.max(...pttls)).toBeLessThanOrEqual(HOLD);
  expect(Math.max(...pttls)).toBeGreaterThan(HOLD - 2000);
  await exporter.close();
});

test("a chain's audit outbox recovery lock is set for 10 s while it recovers the chain (before: 30 s)", async () => {
  const { deps } = t.broker;
  const key = deps.keys.lock('audit-outbox:ops');
  // What a process that died between its decision and its audit append leaves: a record in the outbox, aged.
  const member = outboxMember({ action: 'policy.reload', actor: `spiffe://dev.local${ADMIN}`, decision: 'ok', reason: 'lock-holds' });
  await deps.redis.zadd(deps.keys.auditOutbox('ops'), Date.now() - 60_000, member);
  const seen: number[] = [];
  const recovery = new OutboxRecovery(
    {
      redis: deps.redis,
      keys: deps.keys,
      audit: deps.audit,
      logger: silentLogger,
      clock: deps.clock,
      // Runs under the lock, before the record is appended.
      before: async () => {
        seen.push(await observer.pttl(key));
      },
    },
    60_000,
  );
  expect(await recovery.pass()).toBe(1);
  expect(seen).toHaveLength(1);
  expect(seen[0]).toBeGreaterThan(HOLD - 2000);
  expect(seen[0]).toBeLessThanOrEqual(HOLD);
});

test('the rotation lock is set for 10 s and kept at most that while the rotation runs (before: 30 s)', async () => {
  const { deps } = t.broker;
  const started = performance.now();
  const { value, pttls } = await pttlsWhile(deps.keys.lock('rotate:aws'), () =>
    call(t.url, 'POST', '/v1/admin/rotate', t.as(ADMIN), { target: 'aws' }),
  );
  expect(value.status).toBe(202);
  // Past the first extension (the switch grace alone is 4 s): still held, never above the hold.
  expect(performance.now() - started).toBeGreaterThan(HOLD / 3);
  expect(pttls.length).toBeGreaterThan(0);
  expect(Math.max(...pttls)).toBeLessThanOrEqual(HOLD);
  expect(Math.max(...pttls)).toBeGreaterThan(HOLD - 2000);
  expect(Math.min(...pttls)).toBeGreaterThan(0);
});
