import { Redis } from 'ioredis';
import { REDIS_URL } from '../helpers/broker.ts';
import { type AuditFixture, auditFixture, recordsOf } from './fixture.ts';

/**
 * Red team (locks at a 10-s hold): every write of an export pass checks that the export lock is still the
 * pass's, except the seal of a backlog that ended exactly on a page boundary. An exporter stalled there (the
 * lock lapsed, another instance took it and exported and sealed newer records) went on to append its older
 * seal behind the newer records and set Redis's seal back to it.
 */
let f: AuditFixture;
beforeEach(async () => {
  f = await auditFixture('export-boundary-seal');
});
afterEach(async () => {
  await f.close();
});

test('an exporter that lost the lock before its page-boundary seal writes no seal (found by red team)', async () => {
  const PAGE = 10;
  await f.append(PAGE);
  // Exporter A's connection: after its page-boundary XRANGE (the empty one that ends the backlog) has
  // answered, A stalls past its hold; meanwhile its lock lapses and exporter B takes it, exporting and
  // sealing records written since.
  const slow = new Redis(REDIS_URL);
  const xrange = slow.xrange.bind(slow) as (...a: unknown[]) => Promise<[string, string[]][]>;
  let calls = 0;
  const b = f.exporter({ pageSize: PAGE, waitMs: 5000 });
  (slow as unknown as { xrange: (...a: unknown[]) => Promise<unknown> }).xrange = async (...args: unknown[]) => {
    const page = await xrange(...args);
    calls += 1;
    if (calls === 2) {
      await f.redis.del(f.keys.lock('audit-export'));
      await f.append(5);
      const res = await b.exportNow('ops');
      expect(res.sealed).toEqual(['ops']);
    }
    return page;
  };
  const a = f.exporter({ redis: slow, pageSize: PAGE });
  try {
    const res = await a.exportNow('ops').catch((err: Error) => err);
    expect(calls).toBeGreaterThanOrEqual(2);
    const lines = (await f.lines()).filter((l) => l.chain === 'ops');
    expect(recordsOf(lines, 'ops').map((r) => r.seq)).toEqual(Array.from({ length: 15 }, (_, i) => i + 1));
    const seals = lines.filter((l) => l.seal).map((l) => l.seal.seq);
    // Before: [15, 10] (A's seal of 10 behind B's records 11-15 and B's seal), and Redis's seal back at 10.
    expect(seals).toEqual([15]);
    expect(JSON.parse((await f.redis.get(f.keys.auditSeal('ops')))!)).toMatchObject({ seq: 15 });
    // A says it lost the lock rather than that it sealed the chain.
    if (!(res instanceof Error)) expect(res.sealed).not.toContain('ops');
  } finally {
    slow.disconnect();
  }
});
