import { expect, test } from '@jest/globals';
import { benchPolicy } from '../../scripts/bench/policy.ts';

// Timing depends on the machine; this only checks the benchmark runs and reports sane figures.
test('benchPolicy measures a generated set of 20+ policies', async () => {
  const r = await benchPolicy({ policies: 24, requests: 200, rounds: 1 });
  expect(r.policies).toBe(24);
  expect(r.p50us).toBeGreaterThan(0);
  expect(r.p99us).toBeGreaterThanOrEqual(r.p50us);
  expect(r.perSecond).toBeGreaterThan(0);
  expect(r.cached.p50us).toBeLessThan(r.p50us);
});
