import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { AssumeRoleCommand, STSClient } from '@aws-sdk/client-sts';
import type { AwsProvider } from '../../../src/providers/aws/provider.ts';
import type { RevokeContext } from '../../../src/providers/types.ts';
import { awsWorld, issueRequest, leaseFor, roleConfig, stsAs, task, type AwsWorld, sessionCode as code } from './helpers.ts';

/**
 * The kill switch's agent-wide cut-off (`aws:TokenIssueTime` before the kill, by SourceIdentity) is compared by
 * IAM on AWS's clock, so it is put on AWS's clock, as AWS's answers' `Date` bounds it (aws-clock.ts), and not
 * taken from the broker's (Redis's) clock as it is. The broker's clock is skewed here by injecting it into the
 * provider; the emulator's own clock is not moved (its `Date` header is its time only while it is not).
 */
let w: AwsWorld;
const SKEW_MS = 300_000; // clockSkewSeconds default
const AGENT = 'spiffe://example.org/agent/a';
const AGENT_SI = 'example.org@agent@a';
const admin: RevokeContext = { reason: 'revoked_by_admin', adminScope: 'agent' };

beforeAll(async () => {
  w = await awsWorld('agent-cutoff-clock');
});
afterAll(async () => {
  await w.close();
});

function freshRole(name: string) {
  const r = w.emu.createRole(name, { maxSessionDuration: 3600 });
  return { ...r, config: roleConfig(r.arn) };
}
type TestRole = ReturnType<typeof freshRole>;

/** A provider whose clock (the broker's Redis-time estimate) is `skewMs` off AWS's. */
const skewed = (skewMs: number) => w.makeProvider({}, {}, { clock: () => w.emu.now() + skewMs });

async function issue(p: AwsProvider, role: TestRole, taskId: string, agent = AGENT) {
  const req = issueRequest(role.config, { ttlSeconds: 900, task: task({ taskId, agent }) });
  const out = await p.issue(req);
  return { lease: leaseFor(req, out.handle, out.expiresAt), client: stsAs(w.emu, out.credentials) };
}

/** A session of the agent the broker never recorded (role chaining keeps the SourceIdentity), made with the broker user's keys. */
async function unrecorded(role: TestRole, sourceIdentity = AGENT_SI) {
  const sts = new STSClient({
    region: 'us-east-1',
    endpoint: w.emu.url,
    maxAttempts: 1,
    credentials: { accessKeyId: w.user.accessKeyId, secretAccessKey: w.user.secretAccessKey },
  });
  const { Credentials: c } = await sts.send(
    new AssumeRoleCommand({ RoleArn: role.arn, RoleSessionName: 'chained', DurationSeconds: 900, SourceIdentity: sourceIdentity }),
  );
  sts.destroy();
  return stsAs(w.emu, { AccessKeyId: c!.AccessKeyId, SecretAccessKey: c!.SecretAccessKey, SessionToken: c!.SessionToken });
}

const cutoffOf = (role: TestRole): number => {
  const doc = w.emu.rolePolicy(role.roleName, 'jit-broker-revoked-sessions') as {
    Statement: { Condition: { DateLessThan: Record<string, string> } }[];
  };
  return Date.parse(doc.Statement[0]!.Condition.DateLessThan['aws:TokenIssueTime']!);
};

it("with the broker's clock 4 s behind AWS's, a session the agent made just before the kill is denied", async () => {
  // Before: the cut-off was the kill's time by the broker's clock, 4 s early by AWS's: the session the agent
  // chained 2.5 s after its recorded one (whose own issue time + 2 s the cut-off covers anyway) kept working.
  const role = freshRole('r-behind');
  const p = skewed(-4000);
  const a1 = await issue(p, role, 't-behind');
  await new Promise((r) => setTimeout(r, 2500));
  const chained = await unrecorded(role);
  expect(await code(chained)).toBe('ok');
  await p.revoke(a1.lease, role.config, admin);
  expect(await code(a1.client)).toBe('AccessDenied');
  expect(await code(chained)).toBe('AccessDenied');
});

it("with the broker's clock 4 s ahead of AWS's, a session issued 3 s after the kill keeps working", async () => {
  // Before: the cut-off fell 4 s late by AWS's clock and denied it while its lease stayed active (the failure
  // test/revocation/kill-lost-job.test.ts once had in CI, from a clock skew between its emulator and Redis).
  const role = freshRole('r-ahead');
  const p = skewed(4000);
  const a1 = await issue(p, role, 't-ahead-1');
  const killedAt = w.emu.now() + 4000;
  await new Promise((r) => setTimeout(r, 3000));
  const a2 = await issue(p, role, 't-ahead-2');
  await p.revoke(a1.lease, role.config, { ...admin, requestedAt: killedAt });
  expect(await code(a1.client)).toBe('AccessDenied');
  expect(await code(a2.client)).toBe('ok');
});

it("trusts AWS's Date no further than clockSkewSeconds: a broker clock 10 min ahead moves the cut-off back 300 s, no more", async () => {
  // (10 min, not more: the 15-minute session must not look expired to the broker, or nothing is written.)
  const role = freshRole('r-far');
  const p = skewed(600_000);
  const a1 = await issue(p, role, 't-far');
  const at = w.emu.now() + 600_000;
  await p.revoke(a1.lease, role.config, { ...admin, requestedAt: at });
  // A skew of 10 min is more than the operator allows (`clockSkewSeconds`): the cut-off moves by that much at most.
  const cutoff = cutoffOf(role);
  expect(cutoff).toBeGreaterThanOrEqual(at - SKEW_MS);
  expect(cutoff).toBeLessThanOrEqual(Math.ceil((at - SKEW_MS) / 1000) * 1000);
  expect(await code(a1.client)).toBe('AccessDenied');
});

it("an agent killed seconds after another gets a cut-off of its own kill, not the other's earlier one (found in review)", async () => {
  // Before: a cut-off of another agent up to 60 s before this one's kill was reused when it covered the recorded
  // session being revoked ("agents revoked together share a statement"), so the sessions the second agent made
  // (chained, unrecorded) between the two kills kept working: in an incident, agents are killed one after another.
  const role = freshRole('r-shared');
  const p = w.makeProvider();
  const b1 = await issue(p, role, 't-shared-b', 'spiffe://example.org/agent/b');
  const a1 = await issue(p, role, 't-shared-a');
  await new Promise((r) => setTimeout(r, 2500)); // b1 (its issue time + 2 s) is covered by the cut-off of a's kill
  await p.revoke(a1.lease, role.config, admin);
  await new Promise((r) => setTimeout(r, 4000));
  const chained = await unrecorded(role, 'example.org@agent@b');
  await new Promise((r) => setTimeout(r, 1500));
  expect(await code(chained)).toBe('ok');
  await p.revoke(b1.lease, role.config, admin);
  expect(await code(b1.client)).toBe('AccessDenied');
  expect(await code(chained)).toBe('AccessDenied');
});
