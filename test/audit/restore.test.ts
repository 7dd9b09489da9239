import { Redis } from 'ioredis';
import { AuditLog } from '../../src/audit/audit-log.ts';
import { continueChains, readArchive } from '../../src/audit/restore.ts';
import { verifyAuditChain } from '../../src/audit/verify.ts';
import { silentLogger } from '../../src/logger.ts';
import { dropPrefix, REDIS_URL } from '../helpers/broker.ts';
import { type AuditFixture, auditFixture } from './fixture.ts';

let f: AuditFixture;
beforeEach(async () => {
  f = await auditFixture('audit-restore');
});
afterEach(async () => {
  await f.close();
});

const ADMIN = 'spiffe://dev.local/ops/alice';

async function quarantine(action: 'quarantine.add' | 'quarantine.remove', pattern: string, reason?: string) {
  await f.log.append({
    action,
    actor: ADMIN,
    decision: 'ok',
    ...(reason ? { reason } : {}),
    detail: action === 'quarantine.add' ? { pattern, at: '2030-01-01T00:00:00.000Z' } : { pattern },
  });
}

/** Everything under the prefix gone, as after a Redis restart without persistence. */
async function loseRedis(): Promise<void> {
  await dropPrefix(f.prefix);
}

test('the export replays to the quarantine list in force and where each chain ends', async () => {
  await quarantine('quarantine.add', 'spiffe://dev.local/agent/a', 'leaked a key');
  await f.append(3);
  await quarantine('quarantine.add', 'spiffe://dev.local/agent/b*', 'looping');
  await quarantine('quarantine.remove', 'spiffe://dev.local/agent/a');
  await quarantine('quarantine.add', 'spiffe://dev.local/agent/c', 'test');
  await quarantine('quarantine.remove', 'spiffe://dev.local/agent/c');
  await f.append(2, 'task-x');
  const e = f.exporter();
  await e.exportNow();
  // A crash re-appended the last lines: replaying them again must not resurrect anything.
  const ops = await f.redis.get(f.keys.auditExported('ops'));
  await f.redis.set(f.keys.auditExported('ops'), `1:${(await f.lines()).find((l) => l.record?.seq === 1)!.record.hash}`);
  await f.exporter().exportNow();
  expect(await f.redis.get(f.keys.auditExported('ops'))).toBe(ops);

  const archive = await readArchive(f.file, f.prefix);
  expect(archive.quarantines).toEqual([
    { pattern: 'spiffe://dev.local/agent/b*', reason: 'looping', by: ADMIN, at: '2030-01-01T00:00:00.000Z' },
  ]);
  expect(archive.chains.get('ops')).toMatchObject({ seq: 8, sealedSeq: 8 });
  expect(archive.chains.get(f.log.chainOf({ taskId: 'task-x' }))).toMatchObject({ seq: 2 });
  await expect(readArchive(f.file, 'another-prefix')).rejects.toThrow(/belongs to redis.prefix/);
});

test('after a data loss the chain continues from the export, and verify reads it as one chain', async () => {
  await f.append(10);
  await f.exporter().exportNow();
  await f.append(4); // never exported: lost with Redis's data
  const known = f.log.knownHeads();
  expect(known.get('ops')).toMatch(/^14:/);
  await loseRedis();

  // An append racing the recovery waits for it instead of starting a second chain at seq 1.
  f.log.resetHeads();
  let raced = false;
  const racing = f.log.append({ action: 'access.deny', actor: 'x', decision: 'deny', reason: 'task_not_found' }).then(() => {
    raced = true;
  });
  await new Promise((r) => setTimeout(r, 150));
  expect(raced).toBe(false);

  const continued = await continueChains(f.redis, f.keys, await readArchive(f.file, f.prefix), known);
  expect(continued).toEqual([{ chain: 'ops', continuedFromSeq: 10, knownToSeq: 14, orphans: [] }]);
  expect(await f.redis.get(f.keys.auditHead('ops'))).toMatch(/^10:/);
  await f.redis.set(f.keys.epoch(), 'after');
  await f.log.appendTo('ops', {
    action: 'broker.data_loss',
    actor: 'broker',
    decision: 'ok',
    reason: 'redis_data_lost',
    detail: { continuedFromSeq: 10, lostFromSeq: 11, lostToSeq: 14 },
  });
  await racing;
  await f.exporter().exportNow();
  await f.append(2);

  const res = await verifyAuditChain(f.redis, f.keys, 'ops', { exportFile: f.file, sealKey: f.sealKey });
  expect(res).toMatchObject({ ok: true, records: 14, firstSeq: 1, lastSeq: 14, unsealed: 2 });
  expect(res.losses).toEqual([expect.objectContaining({ continuedFromSeq: 10, lostFromSeq: 11, lostToSeq: 14 })]);
});

test('records written on a fresh chain after the loss are moved behind the export', async () => {
  await f.append(6);
  await f.exporter().exportNow();
  await loseRedis();
  // An instance without the epoch guard (or one that checked just before the loss) writes seq 1 again.
  const conn = new Redis(REDIS_URL);
  const careless = new AuditLog({ redis: conn, keys: f.keys, logger: silentLogger, taskIndexMs: 60_000 });
  await careless.append({ action: 'access.deny', actor: 'late', decision: 'deny', reason: 'task_not_found' });
  await careless.append({ action: 'access.deny', actor: 'later', decision: 'deny', reason: 'task_not_found' });
  await conn.quit();

  const [c] = await continueChains(f.redis, f.keys, await readArchive(f.file, f.prefix), new Map());
  expect(c).toMatchObject({ chain: 'ops', continuedFromSeq: 6 });
  expect(c!.orphans.map((o) => o.record.actor)).toEqual(['late', 'later']);
  await f.redis.set(f.keys.epoch(), 'after');
  f.log.resetHeads();
  for (const o of c!.orphans) {
    const { seq: _s, time: _t, prev: _p, hash: _h, ...event } = o.record;
    await f.log.appendTo('ops', event, o.time);
  }
  const res = await verifyAuditChain(f.redis, f.keys, 'ops', { exportFile: f.file, sealKey: f.sealKey });
  expect(res).toMatchObject({ ok: true, records: 8, lastSeq: 8 });
});

test('a chain whose data survived is left alone', async () => {
  await f.append(5);
  await f.exporter().exportNow();
  const head = await f.redis.get(f.keys.auditHead('ops'));
  expect(await continueChains(f.redis, f.keys, await readArchive(f.file, f.prefix), f.log.knownHeads())).toEqual([]);
  expect(await f.redis.get(f.keys.auditHead('ops'))).toBe(head);
  expect(await f.redis.xlen(f.keys.auditStream('ops'))).toBe(5);
});
