import type { IncomingMessage } from 'node:http';
import { ERRORS } from '../../src/errors.ts';
import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { AGENT, ORCH, TEST_REVOCATION, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { type MisbehavingUpstream, type Misbehaviour, misbehavingUpstream, stallBody } from '../helpers/misbehaving-upstream.ts';
import { BROKER_POLICY } from './vault/helpers.ts';

/**
 * The real broker (HTTP API, worker, Redis) with Vault and STS behind fronts that send an answer's head and
 * then drip (Vault) or stall (STS) its body, after the upstream did the work: POST /v1/credentials answers a contract 5xx within
 * requestTimeoutMs × attempts (never a hang, never a 500), the lease ends `failed`, and what the upstream
 * made is dealt with as any unanswered create (Vault: a token living issueTtlSeconds; AWS: its session denied).
 */
const TIMEOUT_MS = 700;
const AWS_ATTEMPTS = 2;
/** Slack for a busy 2-core machine: Redis round trips, the backoff between attempts (retryBaseDelayMs 5). */
const SLACK_MS = 1500;

let vault: VaultEmulator;
let aws: AwsEmulator;
let vaultFront: MisbehavingUpstream;
let awsFront: MisbehavingUpstream;
let t: TestBroker;
const agentId = `spiffe://dev.local${AGENT}`;

beforeAll(async () => {
  vault = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  const { token } = vault.createToken({ policies: ['jit-broker', 'ops-read'] });
  aws = await startAwsEmulator();
  const user = aws.createUser('jit-broker');
  const role = aws.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
  vaultFront = await misbehavingUpstream(vault.url);
  awsFront = await misbehavingUpstream(aws.url);
  t = await startTestBroker('upstream-hang', {
    config: {
      providers: {
        vault: { address: vaultFront.url, auth: { token }, requestTimeoutMs: TIMEOUT_MS, issueTtlSeconds: 30 },
        aws: {
          region: 'us-east-1',
          endpoint: awsFront.url,
          userName: user.userName,
          credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
          requestTimeoutMs: TIMEOUT_MS,
          maxAttempts: AWS_ATTEMPTS,
          retryBaseDelayMs: 5,
        },
      },
      roles: {
        'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } },
        reports: { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 },
      },
      revocation: { ...TEST_REVOCATION, orphanMs: 1000 },
    },
  });
});
afterAll(async () => {
  await t?.close();
  await vaultFront?.close();
  await awsFront?.close();
  await vault?.stop();
  await aws?.stop();
});

let n = 0;
async function openTask(grants: unknown[]): Promise<string> {
  const taskId = `t-hang-${++n}`;
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'hang',
    ttlSeconds: 600,
    grants,
  });
  expect(r.status).toBe(201);
  return taskId;
}
const leasesOf = async (taskId: string) =>
  (await call(t.url, 'GET', `/v1/tasks/${taskId}`, t.as(ORCH))).body.leases as { status: string }[];

async function timedIssue(body: Record<string, unknown>) {
  const t0 = performance.now();
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), body);
  return { r, ms: performance.now() - t0 };
}

function expectContract5xx(r: { status: number; body: { code?: string; credentials?: unknown } }) {
  expect([502, 503, 504]).toContain(r.status);
  expect(Object.keys(ERRORS)).toContain(r.body.code);
  expect(r.body.credentials).toBeUndefined();
}

test('Vault drips the body of a token it made: a contract 5xx within the deadline, the lease failed, the token short-lived', async () => {
  const taskId = await openTask([{ role: 'vault-ops', scopes: ['ops-read'] }]);
  const before = new Set(vault.state.tokens.keys());
  // A byte every 100 ms: an idle timeout (axios's) never trips on it, only a deadline for the whole answer does.
  const drip: Misbehaviour = (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.write('{');
    const timer = vaultFront.every(100, () => res.write(' '));
    res.on('close', () => clearInterval(timer));
  };
  vaultFront.on((req: IncomingMessage) => req.url!.startsWith('/v1/auth/token/create-orphan'), drip, { forwardFirst: true });
  const { r, ms } = await timedIssue({ taskId, role: 'vault-ops', scopes: ['ops-read'] });
  vaultFront.clear();
  expectContract5xx(r);
  expect(ms).toBeLessThan(TIMEOUT_MS + SLACK_MS);
  await waitFor(async () => (await leasesOf(taskId)).every((l) => l.status === 'failed') || undefined, 8000);
  const made = [...vault.state.tokens.entries()].filter(([k]) => !before.has(k)).map(([, tok]) => tok);
  expect(made).toHaveLength(1);
  // Created with issueTtlSeconds and never extended: it dies by itself (or the worker revoked it already).
  expect(made[0]!.creationTtl).toBe(30);
});

test('STS stalls the body of a session it made: a contract 5xx within the attempts, the lease failed, the session denied', async () => {
  const taskId = await openTask([{ role: 'reports', scopes: ['s3:GetObject'] }]);
  const sessionsBefore = aws.sessions().length;
  awsFront.on((_req, body) => new URLSearchParams(body).get('Action') === 'AssumeRole', stallBody('text/xml', '<AssumeRoleResponse>'), {
    forwardFirst: true,
  });
  const { r, ms } = await timedIssue({ taskId, role: 'reports', scopes: ['s3:GetObject'] });
  awsFront.clear();
  expectContract5xx(r);
  expect(ms).toBeLessThan(AWS_ATTEMPTS * TIMEOUT_MS + SLACK_MS);
  // Unanswered: the worker gives it up at the orphan deadline, denies its session name, and ends it `failed`.
  await waitFor(async () => (await leasesOf(taskId)).every((l) => l.status === 'failed') || undefined, 15000);
  // STS made a session per attempt (each answer stalled after it was made): every one is denied now.
  const made = aws.sessions().slice(sessionsBefore);
  expect(made).toHaveLength(AWS_ATTEMPTS);
  for (const s of made) expect(aws.evaluate(s.accessKeyId, 's3:GetObject', 'arn:aws:s3:::reports/x')).toBe('explicit-deny');
});
