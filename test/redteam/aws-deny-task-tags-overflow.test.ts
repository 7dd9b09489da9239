import { afterAll, beforeAll, expect, test } from '@jest/globals';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { awsAttack } from './aws-attack.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';
import { AGENT, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team (after the fix-aws merge): one agent, with nothing but its own
 * identity and one ordinary task, still makes the broker fall back to the
 * role-wide `aws:TokenIssueTime` cut-off, which cuts off every other agent's
 * live sessions on the role.
 *
 * How: revoking the leases of an ended task denies the task's `task` session
 * tag (`aws:PrincipalTag/task`, one entry per task, up to 255 characters for a
 * long sub-task id). Those entries are never folded (deny-fold.ts folds only
 * `aws:userid` session entries), so when they fill the role's 10,240-char
 * inline policy, folding cannot help and `fit()` collapses everything into the
 * role-wide cut-off. Any agent can produce them: base.cedar lets an agent open
 * sub-tasks (depth <= 2, to itself), take a credential on each and complete
 * them (it is their `openedBy`). Ids of 128-char names at depth 2 are over 256
 * chars, so each tag is the 255-char hashed form; 45 sub-tasks (within the
 * default tasks.maxSubtasks of 50) are enough. Default settings everywhere.
 *
 * Impact: a denial of service on every agent using the role (their unrevoked
 * sessions are denied), triggered at will by any agent with one AWS grant;
 * exactly what the fold fix meant to stop, through the other kind of entry.
 * Expected: the bystander's session keeps working (e.g. task-tag entries fold
 * too, into their sessions' `*:jit-<agent>-<task>-*`/agent wildcards, or are
 * replaced by them once the task's sessions are all known).
 */
let emu: AwsEmulator;
let t: TestBroker;
const ATTACKER = `spiffe://dev.local${AGENT}`;
const BYSTANDER_PATH = '/agent/bystander';
const POLICY = 'jit-broker-revoked-sessions';
const SUBTASKS = 45;

beforeAll(async () => {
  const aws = await awsForBroker();
  emu = aws.emu;
  t = await startTestBroker('rt-aws-task-tags', {
    config: {
      providers: { aws: { ...aws.providers.aws, revocation: 'iam-deny' } },
      roles: { 'reports-bucket': { provider: 'aws', roleArn: aws.role.arn, maxTtlSeconds: 3600 } },
    },
  });
}, 60_000);
afterAll(async () => {
  await t?.close();
  await emu?.stop();
});

const { paced, whoAmI, openRoot } = awsAttack(() => ({ t, emu }));

test('an agent fills the deny list with task-tag entries (unfoldable) and cuts off every other agent on the role', async () => {
  // A bystander agent with a live session, which it never revoked.
  expect((await openRoot('t-rt-bystander', `spiffe://dev.local${BYSTANDER_PATH}`)).status).toBe(201);
  const b = await paced('POST', '/v1/credentials', BYSTANDER_PATH, { taskId: 't-rt-bystander', role: 'reports-bucket' });
  expect(b.status).toBe(201);
  expect(await whoAmI(b.body.credentials)).toBe('ok');

  // The attacker's one ordinary task.
  expect((await openRoot('t-rt-tags', ATTACKER)).status).toBe(201);
  const sub = { agent: ATTACKER, ttlSeconds: 3600, grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }] };
  const mid = await paced('POST', '/v1/tasks', AGENT, { ...sub, parentTaskId: 't-rt-tags', taskId: 'm'.repeat(128) });
  expect(mid.status).toBe(201);
  const leaseIds: string[] = [];
  for (let i = 0; i < SUBTASKS; i++) {
    const name = `${'x'.repeat(120)}${String(i).padStart(8, '0')}`;
    const s = await paced('POST', '/v1/tasks', AGENT, { ...sub, ttlSeconds: 3000, parentTaskId: mid.body.taskId, taskId: name });
    expect(s.status).toBe(201);
    const c = await paced('POST', '/v1/credentials', AGENT, { taskId: s.body.taskId, role: 'reports-bucket' });
    expect(c.status).toBe(201);
    leaseIds.push(c.body.leaseId);
  }
  // The attacker ends its own sub-tree: every lease is revoked as `task_completed`, one task-tag entry per sub-task.
  expect((await paced('POST', `/v1/tasks/${encodeURIComponent(mid.body.taskId)}/complete`, AGENT)).status).toBe(202);
  await waitFor(
    async () => {
      for (const id of leaseIds) if ((await paced('GET', `/v1/leases/${id}`, AGENT)).body.status !== 'revoked') return false;
      return true;
    },
    60_000,
    200,
  );

  // The bystander's unrevoked session still works (on main: AccessDenied), and nothing role-wide was written.
  expect(await whoAmI(b.body.credentials)).toBe('ok');
  expect(JSON.stringify(emu.rolePolicy('agent-reports', POLICY) ?? {})).not.toContain('JitCutoffUntil');
}, 180_000);
