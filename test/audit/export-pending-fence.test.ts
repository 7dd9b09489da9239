import { Redis } from 'ioredis';
import { REDIS_URL } from '../helpers/broker.ts';
import { type AuditFixture, auditFixture, recordsOf } from './fixture.ts';

/**
 * Red team: before each page's append an export pass notes how far it is about to write (Keys.auditExportPending)
 * with the lock's fenced write, which counts a key already holding exactly that value as written (a resend after a
 * dropped answer). An exporter whose lock lapsed while it built its page, and whose successor exported exactly
 * that page, found the note already holding its value: the fence let it through, and it appended the page (and
 * its older seal) a second time behind the successor's.
 */
let f: AuditFixture;
beforeEach(async () => {
  f = await auditFixture('export-pending-fence');
});
afterEach(async () => {
  await f.close();
});

test('an exporter that lost the lock while building its page appends nothing, though its successor noted the same page (found by red team)', async () => {
  await f.append(5);
  const slow = new Redis(REDIS_URL);
  const xrange = slow.xrange.bind(slow) as (...a: unknown[]) => Promise<[string, string[]][]>;
  let calls = 0;
  const b = f.exporter({ pageSize: 10, waitMs: 5000 });
  (slow as unknown as { xrange: (...a: unknown[]) => Promise<unknown> }).xrange = async (...args: unknown[]) => {
    const page = await xrange(...args);
    calls += 1;
    if (calls === 1) {
      // A stalls past its hold with its page read: its lock lapses, B takes it and exports the same records.
      await f.redis.del(f.keys.lock('audit-export'));
      const res = await b.exportNow('ops');
      expect(res.exported.get('ops')).toBe(5);
    }
    return page;
  };
  const a = f.exporter({ redis: slow, pageSize: 10 });
  try {
    await a.exportNow('ops').catch((err: Error) => err);
    expect(calls).toBeGreaterThanOrEqual(1);
    const lines = (await f.lines()).filter((l) => l.chain === 'ops');
    // Before: [1..5, 1..5] and seals [5, 5] (A's page and its older seal behind B's).
    expect(recordsOf(lines, 'ops').map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(lines.filter((l) => l.seal).length).toBe(1);
  } finally {
    slow.disconnect();
  }
});
