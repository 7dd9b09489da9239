import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { awsAttack } from './aws-attack.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';
import { AGENT, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team (after the fix-aws merge): one agent makes the broker FOLD ANOTHER
 * agent, cutting off that agent's live, unrevoked sessions.
 *
 * The fold fix promises that "a busy agent pays for its own revocations":
 * folding starts with the agent taking the most room and goes on, agent after
 * agent, until the policy is under 80% of its budget (deny-fold.ts). But the
 * room is only counted over `aws:userid` session entries; the `task` tag
 * entries an agent causes (one per ended task, up to 255 chars; see
 * aws-deny-task-tags-overflow.test.ts) are neither counted nor foldable. An
 * agent that first fills the policy past 80% with task-tag entries (its own
 * sub-tasks, completed) and then revokes a few of its own leases to cross the
 * budget makes the broker fold itself, find the policy still above the
 * target, and fold the next agent with any revoked entry:
 * `*:jit-<bystander key>-*` before now + clockSkewSeconds, which denies every
 * session the bystander holds (and any it gets in the next clockSkewSeconds).
 *
 * Impact: any agent can cut off the live AWS sessions of every other agent on
 * the role that ever had one session revoked (a `jit exec` that ended, a
 * DELETE /v1/leases), repeatably. Expected: the bystander's live session
 * keeps working; only the agent whose entries overflow the list is folded.
 *
 * Since ended tasks are denied by the wildcard on their session names
 * (`*:jit-<agent key>-<task key>-*`, some 28 chars, counted to their agent
 * and foldable from the policy text), the attacker's sub-tasks no longer
 * fill 80% of a 10,240-char budget; the budget is lowered to 3,000 chars so
 * that the same steps still overflow the list within the test.
 */
let emu: AwsEmulator;
let t: TestBroker;
const ATTACKER = `spiffe://dev.local${AGENT}`;
const BYSTANDER_PATH = '/agent/bystander';
const POLICY = 'jit-broker-revoked-sessions';
/** 34 ended sub-tasks (before the wildcards: 255-char task tags, about 8,800 of the 10,240 chars). */
const SUBTASKS = 34;
const BUDGET = 3000;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  t = await startTestBroker('rt-aws-fold-bystander', {
    config: {
      providers: { aws: { ...aws.providers.aws, revocation: 'iam-deny', revocationPolicyMaxChars: BUDGET } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
    },
  });
}, 60_000);
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

const { paced, whoAmI, openRoot } = awsAttack(() => ({ t, emu }));
const revoked = (who: string, leaseId: string) =>
  waitFor(async () => (await paced('GET', `/v1/leases/${leaseId}`, who)).body.status === 'revoked', 30_000, 100);
const policyText = () => JSON.stringify(emu.rolePolicy('agent-reports', POLICY) ?? {});

test('an agent makes the broker fold another agent and cut off its live sessions', async () => {
  // The bystander: one session it revoked itself, one live.
  expect((await openRoot('t-rt-bystander', `spiffe://dev.local${BYSTANDER_PATH}`)).status).toBe(201);
  const done = await paced('POST', '/v1/credentials', BYSTANDER_PATH, { taskId: 't-rt-bystander', role: 'reports-bucket' });
  expect(done.status).toBe(201);
  expect((await paced('DELETE', `/v1/leases/${done.body.leaseId}`, BYSTANDER_PATH)).status).toBe(202);
  await revoked(BYSTANDER_PATH, done.body.leaseId);
  const live = await paced('POST', '/v1/credentials', BYSTANDER_PATH, { taskId: 't-rt-bystander', role: 'reports-bucket' });
  expect(live.status).toBe(201);
  expect(await whoAmI(live.body.credentials)).toBe('ok');

  // The attacker: task-tag entries up to ~85% of the budget (its own sub-tasks, completed).
  expect((await openRoot('t-rt-folder', ATTACKER)).status).toBe(201);
  const sub = { agent: ATTACKER, ttlSeconds: 3600, grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }] };
  const mid = await paced('POST', '/v1/tasks', AGENT, { ...sub, parentTaskId: 't-rt-folder', taskId: 'm'.repeat(128) });
  expect(mid.status).toBe(201);
  const tagged: string[] = [];
  for (let i = 0; i < SUBTASKS; i++) {
    const name = `${'x'.repeat(120)}${String(i).padStart(8, '0')}`;
    const s = await paced('POST', '/v1/tasks', AGENT, { ...sub, ttlSeconds: 3000, parentTaskId: mid.body.taskId, taskId: name });
    expect(s.status).toBe(201);
    const c = await paced('POST', '/v1/credentials', AGENT, { taskId: s.body.taskId, role: 'reports-bucket' });
    expect(c.status).toBe(201);
    tagged.push(c.body.leaseId);
  }
  expect((await paced('POST', `/v1/tasks/${encodeURIComponent(mid.body.taskId)}/complete`, AGENT)).status).toBe(202);
  for (const id of tagged) await revoked(AGENT, id);
  expect(policyText()).not.toContain('JitFoldsUntil');
  expect(await whoAmI(live.body.credentials)).toBe('ok');

  // Then its own leases, revoked one by one, until the list overflows and folds.
  const own = await paced('POST', '/v1/tasks', AGENT, { ...sub, parentTaskId: 't-rt-folder', taskId: 'own' });
  expect(own.status).toBe(201);
  for (let i = 0; i < 60 && !policyText().includes('JitFoldsUntil'); i++) {
    const c = await paced('POST', '/v1/credentials', AGENT, { taskId: own.body.taskId, role: 'reports-bucket' });
    expect(c.status).toBe(201);
    expect((await paced('DELETE', `/v1/leases/${c.body.leaseId}`, AGENT)).status).toBe(202);
    await revoked(AGENT, c.body.leaseId);
  }
  expect(policyText()).toContain('JitFoldsUntil');
  expect(policyText()).not.toContain('JitCutoffUntil');

  // The bystander did nothing since; its live session must still work (on main: AccessDenied, folded by the attacker).
  expect(await whoAmI(live.body.credentials)).toBe('ok');
}, 240_000);
