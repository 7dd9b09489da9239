import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, beforeAll, expect, jest, test } from '@jest/globals';
import { awsWorld, issueRequest, roleConfig, type AwsWorld } from './helpers.ts';

/**
 * The AWS provider keeps two answers for a while: a role's IAM facts (RoleId, MaxSessionDuration; 5 min,
 * src/providers/aws/role-info.ts) and a good GetCallerIdentity (ready(), 30 s). Both were dated with
 * Date.now(): the process's wall clock stepped back an hour (NTP setting a fast clock right) kept them for
 * that hour more: a lowered MaxSessionDuration went unseen, and /readyz said the broker's credentials worked
 * an hour after AWS refused them. They are monotonic durations now. Here the monotonic clock is moved on
 * by hand past the cache (a loaded machine must not decide), while the wall clock steps back an hour.
 */
const HOUR = 3_600_000;
let w: AwsWorld;

beforeAll(async () => {
  w = await awsWorld('caches-step');
});
afterEach(() => {
  jest.restoreAllMocks();
});
afterAll(async () => {
  await w.close();
});

/** The wall clock steps by `wallMs`; the monotonic clock (and the emulator's, which runs on it) moves on by `passMs`. */
function step(wallMs: number, passMs: number): void {
  const realNow = Date.now.bind(Date);
  const realPerf = performance.now.bind(performance);
  jest.spyOn(Date, 'now').mockImplementation(() => realNow() + wallMs + passMs);
  jest.spyOn(performance, 'now').mockImplementation(() => realPerf() + passMs);
}

test("a role's IAM facts are looked up again once the cache is stale, the wall clock stepped back an hour", async () => {
  const role = roleConfig(w.role.arn);
  const first = issueRequest(role);
  const second = issueRequest(role);
  await w.provider.issue(first);
  expect(w.emu.requests('GetRole')).toHaveLength(1);
  step(-HOUR, 5 * 60_000 + 1000);
  await w.provider.issue(second);
  expect(w.emu.requests('GetRole')).toHaveLength(2);
});

test('ready() asks AWS again once its answer is stale, the wall clock stepped back an hour', async () => {
  expect(await w.provider.ready?.()).toBe(true);
  const asked = w.emu.requests('GetCallerIdentity').length;
  step(-HOUR, 31_000);
  // AWS now refuses the broker's key (deactivated, deleted): an unready instance, not one that says it works.
  w.emu.failNext(1, { action: 'GetCallerIdentity', status: 403, code: 'InvalidClientTokenId' });
  expect(await w.provider.ready?.()).toBe(false);
  expect(w.provider.credentialsRefused?.()).toBe(true);
  expect(w.emu.requests('GetCallerIdentity').length).toBe(asked + 1);
});
