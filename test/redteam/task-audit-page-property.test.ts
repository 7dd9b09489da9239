import { afterAll, expect, test } from '@jest/globals';
import { Redis } from 'ioredis';
import { script } from '../../src/redis/scripts.ts';

/**
 * task-audit-page.lua (the heap merge of b784a3e) against a plain model, on random trees of audit indexes:
 * following the cursor (the last id of each page) page after page gives every id of every index once, in
 * stream-id order, whatever the page size, the overlaps between indexes (a record of a task and its
 * sub-task, in both indexes) and the ids that share a millisecond.
 */
const redis = new Redis('redis://127.0.0.1:6379');
const prefix = `rv-audit-page-${process.pid}`;
const page = script('task-audit-page');
afterAll(async () => {
  const found = await redis.keys(`${prefix}*`);
  if (found.length > 0) await redis.del(...found);
  redis.disconnect();
});

/** Mulberry32: the same cases on every run. */
function rng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const cmp = (a: string, b: string) => {
  const [am, as] = a.split('-').map(Number) as [number, number];
  const [bm, bs] = b.split('-').map(Number) as [number, number];
  return am - bm || as - bs;
};

test('random trees: every id once, in order, across pages of any size', async () => {
  const r = rng(20261202);
  for (let c = 0; c < 150; c++) {
    const n = 1 + Math.floor(r() * 8);
    // A universe with shared milliseconds (seq 0..3) and ms values of different digit counts (9 < 10 < 100).
    const universe: string[] = [];
    for (const ms of [7, 9, 10, 11, 99, 100, 1000, 1001]) for (let s = 0; s < 4; s++) universe.push(`${ms}-${s}`);
    const keys: string[] = [];
    const all = new Set<string>();
    for (let i = 0; i < n; i++) {
      const key = `${prefix}:{t${c}}:task-audit:${i}`;
      keys.push(key);
      const ids = universe.filter(() => r() < 0.3);
      for (const id of ids) all.add(id);
      if (ids.length > 0) await redis.rpush(key, ...ids);
    }
    const want = [...all].sort(cmp);
    const size = 1 + Math.floor(r() * 9);
    const got: string[] = [];
    let after = '';
    for (let guard = 0; guard < 200; guard++) {
      const [ids, more] = (await page.run(redis, keys, [after, size])) as [string[], number];
      expect(ids.length).toBeLessThanOrEqual(size);
      got.push(...ids);
      if (more === 0) break;
      if (ids.length === 0) throw new Error(`case ${c}: an empty page that says more follows`);
      after = ids.at(-1)!;
    }
    expect({ c, got }).toEqual({ c, got: want });
  }
});
