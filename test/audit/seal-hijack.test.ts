import { AuditLog } from '../../src/audit/audit-log.ts';
import { sealStatus } from '../../src/audit/seal-status.ts';
import { verifyAuditChain } from '../../src/audit/verify.ts';
import { silentLogger } from '../../src/logger.ts';
import { Metrics } from '../../src/metrics.ts';
import { waitFor } from '../helpers/broker.ts';
import { capturingLogger } from '../helpers/log-capture.ts';
import { type AuditFixture, auditFixture } from './fixture.ts';

/**
 * Red-team finding: a process that can write Redis `SET` the audit export lock WITHOUT an expiry. From then
 * on every worker skipped export, sealing and retention, silently; records in Redis could be rewritten and
 * `audit:verify` still said the chain was intact (a warning after 120 s about an old seal). Contract section
 * 7: the chain head is sealed at least every minute.
 */

let f: AuditFixture;
beforeEach(async () => {
  f = await auditFixture('seal-hijack');
});
afterEach(async () => {
  await f.close();
});

const sealOf = async (chain: 'ops' | number = 'ops') => JSON.parse((await f.redis.get(f.keys.auditSeal(chain))) ?? 'null');
const lockKey = () => f.keys.lock('audit-export');
const opsActions = async () => (await f.redis.xrange(f.keys.auditStream('ops'), '-', '+')).map(([, x]) => JSON.parse(x[1]!).action);

test('a lock key SET without an expiry no longer stops the worker: its pass takes it over, seals the head, warns and audits', async () => {
  const { logger, lines } = capturingLogger();
  const worker = f.exporter({ logger });
  await f.append(5);
  await worker.exportNow();
  expect(await sealOf()).toMatchObject({ seq: 5 });

  await f.append(3);
  await f.redis.set(lockKey(), 'mine-forever'); // no PX: PTTL -1
  expect(await f.redis.pttl(lockKey())).toBe(-1);
  // The worker's periodic pass, as its timer runs it.
  const res = await worker.pass({ waitMs: 0, trim: true, paced: true });
  // Before: undefined (the lock "busy" for good) and the seal stuck at 5.
  expect(res).toBeDefined();
  expect((await sealOf()).seq).toBeGreaterThanOrEqual(8);
  // Released after the pass like any lock of ours: the next pass takes it normally.
  expect(await f.redis.exists(lockKey())).toBe(0);
  expect(lines).toContainEqual(expect.objectContaining({ level: 40, lock: lockKey(), pttlMs: -1, reason: 'lock_without_expiry' }));
  // The takeover is evidence: a record on the ops chain (appended without holding the pass up).
  await waitFor(async () => (await opsActions()).includes('lock.takeover'));
  const [, fields] = (await f.redis.xrange(f.keys.auditStream('ops'), '-', '+')).find(([, x]) => x[1]!.includes('lock.takeover'))!;
  expect(JSON.parse(fields[1]!)).toMatchObject({
    action: 'lock.takeover',
    actor: 'broker',
    reason: 'lock_without_expiry',
    detail: { lock: lockKey(), pttlMs: -1 },
  });
  // ...and it gets sealed too.
  await worker.exportNow();
  expect(await verifyAuditChain(f.redis, f.keys, 'ops', { exportFile: f.file, sealKey: f.sealKey })).toMatchObject({
    ok: true,
    unsealed: 0,
  });
});

test('a lock key with a longer TTL than the broker ever sets is taken over too; one with a plausible TTL is waited for', async () => {
  const worker = f.exporter();
  await f.append(2);
  await f.redis.set(lockKey(), 'an-hour', 'PX', 3_600_000);
  expect(await worker.pass({ waitMs: 0, trim: false })).toBeDefined();
  expect((await sealOf()).seq).toBeGreaterThanOrEqual(2);
  await waitFor(async () => (await opsActions()).includes('lock.takeover'));

  // A holder within the TTL the broker uses (30 s) may be another instance: not taken over.
  await f.append(1);
  await f.redis.set(lockKey(), 'another-instance', 'PX', 25_000);
  expect(await worker.pass({ waitMs: 0, trim: false })).toBeUndefined();
  expect(await f.redis.get(lockKey())).toBe('another-instance');
});

test('every pass re-seals chains with nothing new, so a seal older than a few intervals means sealing stopped', async () => {
  const worker = f.exporter();
  await f.append(4);
  await worker.exportNow();
  const first = await sealOf();
  await new Promise((r) => setTimeout(r, 20));
  const res = await worker.pass({ waitMs: 0, trim: false });
  expect(res?.resealed).toEqual(['ops']);
  const again = await sealOf();
  // The same head, sealed again later (Redis only: the file does not grow a line per idle chain and pass).
  expect(again).toMatchObject({ seq: 4, hash: first.hash });
  expect(again.time > first.time).toBe(true);
  expect((await f.lines()).filter((l) => l.seal).length).toBe(1);
  expect(await verifyAuditChain(f.redis, f.keys, 'ops', { exportFile: f.file, sealKey: f.sealKey })).toMatchObject({ ok: true });
});

test('while someone keeps the lock (a plausible TTL, refreshed), the seal ages: the gauge shows it, the worker logs an error', async () => {
  // The last seal was made 10 minutes ago (the exporter's clock says so), then records followed.
  await f.exporter({ now: () => Date.now() - 600_000 }).exportNow();
  await f.append(3);
  await f.exporter({ now: () => Date.now() - 600_000 }).exportNow();
  await f.append(2);
  await f.redis.set(lockKey(), 'refreshed-by-someone', 'PX', 25_000);

  const { logger, lines } = capturingLogger('error');
  const worker = f.exporter({ logger, sealMaxAgeMs: 180_000 });
  expect(await worker.pass({ waitMs: 0, trim: true, paced: true })).toBeUndefined();
  await worker.watchSeals();
  expect(lines).toContainEqual(
    expect.objectContaining({
      level: 50,
      chains: [expect.objectContaining({ chain: 'ops', unsealed: 2 })],
      maxAgeSeconds: 180,
      msg: expect.stringMatching(/unsealed for longer than audit.sealMaxAgeSeconds/),
    }),
  );
  expect((lines[0]!.chains as { ageSeconds: number }[])[0]!.ageSeconds).toBeGreaterThanOrEqual(599);

  const status = await sealStatus(f.redis, f.keys, f.sealKey, Date.now(), 180_000);
  expect(status.find((s) => s.chain === 'ops')).toMatchObject({ headSeq: 5, sealed: { seq: 3 }, unsealed: 2, stale: true });

  const metrics = new Metrics();
  metrics.sealStatusSource = () => sealStatus(f.redis, f.keys, f.sealKey, Date.now(), 180_000);
  const text = await metrics.registry.metrics();
  const age = Number(/^jit_audit_seal_age_seconds\{chain="ops"\} (\S+)$/m.exec(text)?.[1]);
  expect(age).toBeGreaterThanOrEqual(599);
  expect(age).toBeLessThan(700);
  // Chains without records have no sample.
  expect(text).not.toMatch(/jit_audit_seal_age_seconds\{chain="0"\}/);
});

test('a forged fresh seal in Redis (no KEK) does not count: not in the status, logged, and verify names it', async () => {
  await f.append(2);
  await f.exporter({ now: () => Date.now() - 600_000 }).exportNow();
  await f.append(1);
  const forged = { chain: 'ops', seq: 3, hash: 'a'.repeat(64), time: new Date().toISOString(), mac: 'b'.repeat(64) };
  await f.redis.set(f.keys.auditSeal('ops'), JSON.stringify(forged));
  const [ops] = (await sealStatus(f.redis, f.keys, f.sealKey, Date.now(), 180_000)).filter((s) => s.chain === 'ops');
  expect(ops).toMatchObject({ invalidSeal: true, unsealed: 3 });
  expect(ops!.sealed).toBeUndefined();
  const { logger, lines } = capturingLogger('error');
  await f.exporter({ logger }).watchSeals();
  expect(lines).toContainEqual(expect.objectContaining({ level: 50, invalidSeals: ['ops'] }));
  const res = await verifyAuditChain(f.redis, f.keys, 'ops', { exportFile: f.file, sealKey: f.sealKey });
  expect(res.ok).toBe(false);
  expect(res.problems.map((p) => p.problem)).toEqual(
    expect.arrayContaining([
      expect.stringMatching(/MAC that does not verify/),
      expect.stringMatching(/the newest seal \(seq 2, .*\) is 6\d\d s old/),
    ]),
  );
});

describe('verify: records unsealed for longer than the bound are a failure, not "intact"', () => {
  test('a stale seal with records after it', async () => {
    await f.append(6);
    await f.exporter({ now: () => Date.now() - 600_000 }).exportNow();
    // Sealing stops (the lock hijacked); records follow, and can now be rewritten undetected.
    await f.append(4);
    const res = await verifyAuditChain(f.redis, f.keys, 'ops', { exportFile: f.file, sealKey: f.sealKey });
    expect(res).toMatchObject({ ok: false, unsealed: 4, brokenAt: { seq: 7 } });
    expect(res.problem).toMatch(/the newest seal \(seq 6, .*\) is 6\d\d s old, more than the bound of 180 s, and 4 record\(s\) follow it/);
    expect(res.sealAgeSeconds).toBeGreaterThanOrEqual(599);
    // A bound that covers it (a flag of audit:verify): within it, reported unsealed, not broken.
    expect(
      await verifyAuditChain(f.redis, f.keys, 'ops', { exportFile: f.file, sealKey: f.sealKey, maxSealAgeMs: 3_600_000 }),
    ).toMatchObject({ ok: true, unsealed: 4 });
  });

  test('an old seal with nothing after it is fine (an idle chain of a stopped broker)', async () => {
    await f.append(3);
    await f.exporter({ now: () => Date.now() - 600_000 }).exportNow();
    expect(await verifyAuditChain(f.redis, f.keys, 'ops', { exportFile: f.file, sealKey: f.sealKey })).toMatchObject({
      ok: true,
      unsealed: 0,
    });
  });

  test('a fresh chain never sealed yet: intact within the bound, a failure past it', async () => {
    await f.append(3);
    expect(await verifyAuditChain(f.redis, f.keys, 'ops', { exportFile: f.file, sealKey: f.sealKey })).toMatchObject({
      ok: true,
      unsealed: 3,
    });
    const bucket = f.log.chainOf({ taskId: 'old-task' });
    const old = new AuditLog({ redis: f.redis, keys: f.keys, logger: silentLogger, taskIndexMs: 60_000, now: () => Date.now() - 600_000 });
    await old.append({ action: 'task.open', actor: 'spiffe://dev.local/orch', decision: 'allow', taskId: 'old-task' });
    await old.flush();
    const res = await verifyAuditChain(f.redis, f.keys, bucket, { exportFile: f.file, sealKey: f.sealKey });
    expect(res).toMatchObject({ ok: false, unsealed: 1 });
    expect(res.problem).toMatch(/1 record\(s\) were never sealed, the first written 6\d\d s ago, more than the bound of 180 s/);
  });
});
