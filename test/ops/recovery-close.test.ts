import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { resolvePath } from '../../src/config/load.ts';
import { ADMIN, call } from '../helpers/broker.ts';
import { brokerOnOwnRedis } from '../helpers/own-redis-broker.ts';

/**
 * A graceful shutdown during a recovery. DataLossMonitor.stop() only cleared its timer: the recovery went on
 * after close() had closed the Redis connections, failed, and could not release the recovery lock, which
 * stayed held for its 10-s hold: every other instance answered 503 that long after a mere restart.
 */
const own = brokerOnOwnRedis('recovery-close', { broker: { dataLossCheckMs: 600_000 } });

test('close() during a recovery waits for it: the recovery lock is released, not left held for its TTL', async () => {
  const { t, redis } = own;
  const { keys } = t.broker.deps;
  // Something in the export, so that an empty Redis reads as a data loss.
  const q = await call(t.url, 'POST', '/v1/admin/quarantine', t.as(ADMIN), { agent: 'spiffe://dev.local/agent/rc-q', reason: 'x' });
  expect(q.status).toBe(201);
  // A large export (read whole by the recovery, under its lock), stood in for by empty lines behind the header:
  // read and skipped like any line, they make the read take about a second.
  const file = resolvePath(t.config.audit.export.file);
  const [header, ...rest] = readFileSync(file, 'utf8').split('\n');
  writeFileSync(`${file}.tmp`, `${header}\n${'\n'.repeat(3_000_000)}${rest.join('\n')}`);
  renameSync(`${file}.tmp`, file);

  const admin = redis.client();
  await admin.connect();
  await admin.flushall();
  const recovering = t.broker.recovery.check().catch((err: Error) => err);
  const lockKey = keys.lock('recovery');
  while ((await admin.exists(lockKey)) === 0) await sleep(5);

  const t0 = performance.now();
  await t.broker.close();
  const closeMs = performance.now() - t0;
  // Before: ~9900 (the lock left to its TTL); close() returned at once.
  const pttl = await admin.pttl(lockKey);
  // The recovery finished before the connections closed: the marker is written.
  const epoch = await admin.get(keys.epoch());
  console.log(`close took ${Math.round(closeMs)} ms; the recovery lock's PTTL after it: ${pttl}`);
  expect(pttl).toBe(-2);
  expect(epoch).not.toBeNull();
  expect(await recovering).toBeUndefined();
  // No check starts after stop(): one would fail on the closed connections.
  await expect(t.broker.recovery.check()).resolves.toBeUndefined();
  admin.disconnect();
}, 60_000);
