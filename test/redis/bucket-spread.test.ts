import { Keys } from '../../src/redis/keys.ts';

/**
 * Tasks spread over every master of a Cluster, also when orchestrators number
 * them (`task-1`, `task-2`, ...): the bench put 15,914 of 15,921 keys on one
 * of 3 masters with ids differing in their last character (CRC16 is linear,
 * so such ids landed in neighbouring buckets, which share a master).
 */
test.each([
  ['task-', (i: number) => `task-${i}`],
  ['t-mem-', (i: number) => `t-bench-mem-${i}`],
  ['uuid-like', (i: number) => `0f8fad5b-d9cb-469f-a165-70867728${String(i).padStart(4, '0')}`],
])('sequential ids (%s) fall in every third of the buckets', (_name, id) => {
  const keys = new Keys('jit', 16);
  const thirds = [0, 0, 0];
  const seen = new Set<number>();
  for (let i = 0; i < 30; i++) {
    const b = keys.bucketOfTask(id(i));
    seen.add(b);
    thirds[Math.floor((b * 3) / 16)]! += 1;
  }
  expect(seen.size).toBeGreaterThanOrEqual(10);
  for (const n of thirds) expect(n).toBeGreaterThanOrEqual(4);
});

test('a sub-task lives in its root task bucket', () => {
  const keys = new Keys('jit', 16);
  for (let i = 0; i < 50; i++) expect(keys.bucketOfTask(`r-${i}~child~grandchild`)).toBe(keys.bucketOfTask(`r-${i}`));
});
