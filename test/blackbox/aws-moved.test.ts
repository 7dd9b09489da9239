import { join } from 'node:path';
import { validateConfig } from '../../src/config/load.ts';
import { startAwsEmulator, type AwsEmulator, type EmulatedUser } from '../emulators/aws/index.ts';
import { AGENT, ORCH, call, startTestBroker, testRawConfig, uniquePrefix, waitFor, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/**
 * Red team: an operator changes `providers.aws` (or a role) and restarts while STS sessions are out. An
 * AWS lease's handle names the role ARN it was issued for, but IAM takes a role *name*, in the account of
 * the broker's credentials. Moved to another account (new credentials, the roles re-created there under the
 * same names), the worker wrote the deny on the new account's role of that name, or was told NoSuchEntity
 * (taken for "the role was deleted, its sessions are refused"): either way the lease ended `revoked` while
 * the session issued in the old account went on working until its Expiration. Switching `revocation` to
 * `none` likewise ended leases issued `revocable: true` as `revoked` without any deny. What held is
 * asserted too: a role whose ARN changed or that was removed from config, and a renamed deny policy.
 */
const agentId = `spiffe://dev.local${AGENT}`;
const CONFIG_PATH = join(process.cwd(), 'config/test.yaml');
const issuer = new TestIssuer();

interface Acct {
  emu: AwsEmulator;
  user: EmulatedUser;
  arn: string;
}
let a: Acct;
/** Another account with a role of the same name. */
let b: Acct;
/** Another account without it. */
let c: { emu: AwsEmulator; user: EmulatedUser };
const open: TestBroker[] = [];

async function account(accountId: string, withRole = true) {
  const emu = await startAwsEmulator({ accountId });
  const user = emu.createUser('jit-broker');
  const arn = withRole ? emu.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] }).arn : '';
  return { emu, user, arn };
}

beforeAll(async () => {
  a = await account('111111111111');
  b = await account('222222222222');
  c = await account('333333333333', false);
});
afterAll(async () => {
  for (const t of open) await t.close().catch(() => undefined);
  for (const x of [a, b, c]) await x?.emu.stop();
});

const settings = (x: { emu: AwsEmulator; user: EmulatedUser }, more: Record<string, unknown> = {}) => ({
  region: 'us-east-1',
  endpoint: x.emu.url,
  userName: x.user.userName,
  credentials: { accessKeyId: x.user.accessKeyId, secretAccessKey: x.user.secretAccessKey },
  revocation: 'iam-deny',
  retryBaseDelayMs: 5,
  requestTimeoutMs: 2000,
  ...more,
});
const roles = (arn: string) => ({ 'reports-bucket': { provider: 'aws', roleArn: arn, maxTtlSeconds: 3600 } });

/** A broker's config from the raw test config `raw` (one KEK and prefix for every restart) with `aws` and `roles`. */
const load = (raw: Record<string, unknown>, aws: Record<string, unknown> | undefined, r: Record<string, unknown>) =>
  validateConfig({ ...raw, providers: aws ? { aws } : {}, roles: r }, {}, CONFIG_PATH);

/**
 * Issues a session in account A with the first broker, stops it, starts another on the same Redis data with
 * `after` (the operator's change and restart), and completes the task there.
 */
async function issueThenChange(name: string, after: { aws: Record<string, unknown> | undefined; roles: Record<string, unknown> }) {
  const prefix = uniquePrefix(`rt-aws-moved-${name}`);
  const raw = testRawConfig(issuer, prefix);
  const first = await startTestBroker('aws-moved', { prefix, issuer, loaded: load(raw, settings(a), roles(a.arn)) });
  open.push(first);
  const taskId = `t-aws-moved-${name}`;
  const opened = await call(first.url, 'POST', '/v1/tasks', first.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 3600,
    grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
  });
  expect(opened.status).toBe(201);
  const cred = await call(first.url, 'POST', '/v1/credentials', first.as(AGENT), { taskId, role: 'reports-bucket' });
  expect(cred.status).toBe(201);
  expect(cred.body.revocable).toBe(true);
  const leaseId = cred.body.leaseId as string;
  const keyId = cred.body.credentials.AccessKeyId as string;
  expect(a.emu.evaluate(keyId, 's3:GetObject', 'arn:aws:s3:::reports/x')).toBe('allow');
  await first.broker.close();
  const restart = (aws: Record<string, unknown> | undefined, r: Record<string, unknown>) =>
    startTestBroker('aws-moved', { prefix, issuer, loaded: load(raw, aws, r) }).then((t) => {
      open.push(t);
      return t;
    });
  const t = await restart(after.aws, after.roles);
  expect((await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH))).status).toBe(202);
  const lease = async (via: TestBroker = t) => (await call(via.url, 'GET', `/v1/leases/${leaseId}`, via.as(AGENT))).body;
  return {
    t,
    restart,
    lease,
    /** How account A's IAM judges the session now. */
    session: () => a.emu.evaluate(keyId, 's3:GetObject', 'arn:aws:s3:::reports/x'),
    settled: () =>
      waitFor(
        async () => {
          const l = await lease();
          return ['revoked', 'revoke_failed', 'expired'].includes(l.status) && l;
        },
        10_000,
        100,
      ),
  };
}

const changed = (aws: Record<string, unknown> | undefined, r: Record<string, unknown>) => ({ aws, roles: r });

/** Not `revoked` while the session works: `revoke_failed` with `lastError`, and still so a moment later. */
async function expectHonest(r: Awaited<ReturnType<typeof issueThenChange>>, lastError: string) {
  const l = await r.settled();
  expect(r.session()).toBe('allow');
  expect({ status: l.status, lastError: l.lastError }).toEqual({ status: 'revoke_failed', lastError });
  await new Promise((res) => setTimeout(res, 500));
  expect((await r.lease()).status).toBe('revoke_failed');
  expect(r.session()).toBe('allow');
}

describe('providers.aws moved to another account while sessions are out', () => {
  test('a role of the same name there: its deny is not this session’s, the lease is not `revoked`', async () => {
    const r = await issueThenChange('same-name', changed(settings(b), roles(b.arn)));
    await expectHonest(r, 'upstream_wrong_account');
    // Nothing was written on the other account's role of that name.
    expect(b.emu.rolePolicyNames('agent-reports')).toEqual([]);
  }, 30_000);

  test('no such role there: NoSuchEntity is not taken for a deleted role', async () => {
    const r = await issueThenChange('no-role', changed(settings(c), roles(a.arn)));
    await expectHonest(r, 'upstream_wrong_account');
  }, 30_000);

  test('moved back: the session is denied in its own account and the lease ends `revoked`', async () => {
    const r = await issueThenChange('back', changed(settings(c), roles(a.arn)));
    await expectHonest(r, 'upstream_wrong_account');
    await r.t.broker.close();
    const back = await r.restart(settings(a), roles(a.arn));
    await waitFor(async () => r.session() === 'explicit-deny', 15_000, 100);
    const l = await waitFor(async () => {
      const x = await r.lease(back);
      return x.status === 'revoked' && x;
    }, 15_000);
    expect(l.reason).toBe('task_completed');
  }, 60_000);
});

describe('revocation switched to none while sessions are out', () => {
  test('a lease issued revocable is still denied, not marked `revoked` with nothing done', async () => {
    const r = await issueThenChange('none', changed(settings(a, { revocation: 'none' }), roles(a.arn)));
    const l = await r.settled();
    expect(r.session()).toBe('explicit-deny');
    expect(l.status).toBe('revoked');
  }, 30_000);
});

describe('what held', () => {
  test('the role’s ARN changed in config: the deny goes to the role the session was issued for', async () => {
    const other = a.emu.createRole('agent-reports-v2', { maxSessionDuration: 3600, trust: [a.user.arn] });
    const r = await issueThenChange('arn-changed', changed(settings(a), roles(other.arn)));
    const l = await r.settled();
    expect(r.session()).toBe('explicit-deny');
    expect(l.status).toBe('revoked');
    expect(a.emu.rolePolicyNames('agent-reports-v2')).toEqual([]);
  }, 30_000);

  test('the role removed from config: revoked by its handle all the same', async () => {
    const r = await issueThenChange(
      'role-removed',
      changed(settings(a), { 'tickets-api': { provider: 'jwt', audience: 'https://tickets.internal' } }),
    );
    const l = await r.settled();
    expect(r.session()).toBe('explicit-deny');
    expect(l.status).toBe('revoked');
  }, 30_000);

  test('the deny policy renamed: the new one denies, the old one is left as it was', async () => {
    const r = await issueThenChange('policy-renamed', changed(settings(a, { revocationPolicyName: 'jit-deny-v2' }), roles(a.arn)));
    const l = await r.settled();
    expect(r.session()).toBe('explicit-deny');
    expect(l.status).toBe('revoked');
    expect(a.emu.rolePolicyNames('agent-reports')).toContain('jit-deny-v2');
  }, 30_000);
});
