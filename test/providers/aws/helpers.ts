import { randomBytes, randomUUID } from 'node:crypto';
import { CreateAccessKeyCommand, IAMClient } from '@aws-sdk/client-iam';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { Redis } from 'ioredis';
import { readSecret } from '../../../src/config/load.ts';
import { silentLogger } from '../../../src/logger.ts';
import { SealedSecrets } from '../../../src/ops/sealed-secrets.ts';
import { Kek } from '../../../src/signing/kek.ts';
import { awsRoleSchema, awsSettingsSchema, type AwsRoleConfig, type AwsSettings } from '../../../src/providers/aws/config.ts';
import { createAwsProvider, type AwsProvider, type AwsProviderOptions } from '../../../src/providers/aws/provider.ts';
import type { IssueRequest, ProviderContext } from '../../../src/providers/types.ts';
import { sessionNameFor } from '../../../src/providers/aws/session-name.ts';
import type { LeaseRecord } from '../../../src/leases/types.ts';
import type { TaskRecord } from '../../../src/tasks/types.ts';
import { startAwsEmulator, type AwsEmulator, type EmulatedUser } from '../../emulators/aws/index.ts';
import type { TestBroker } from '../../helpers/broker.ts';

export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';

/** One emulator, broker user, role, Redis prefix and provider for a test file. */
export interface AwsWorld {
  emu: AwsEmulator;
  user: EmulatedUser;
  role: { roleName: string; roleId: string; arn: string };
  redis: Redis;
  prefix: string;
  provider: AwsProvider;
  settings: AwsSettings;
  /** Another provider on the same emulator and Redis prefix (another worker); `ctx` replaces parts of its ProviderContext. */
  makeProvider(overrides?: Record<string, unknown>, opts?: AwsProviderOptions, ctx?: Partial<ProviderContext>): AwsProvider;
  close(): Promise<void>;
}

/**
 * An AWS emulator with the broker's IAM user and an `agent-reports` role it may
 * assume, and the `providers.aws` settings of a broker that uses them.
 */
export async function awsForBroker(): Promise<{
  emu: AwsEmulator;
  user: EmulatedUser;
  role: { roleName: string; roleId: string; arn: string };
  providers: { aws: Record<string, unknown> };
}> {
  const emu = await startAwsEmulator();
  const user = emu.createUser('jit-broker');
  const role = emu.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
  return { emu, user, role, providers: { aws: brokerAwsSettings(emu.url, user, { requestTimeoutMs: 2000 }) } };
}

/** A broker's `providers.aws` signing as an emulator user; `more` adds what a test varies. */
export function brokerAwsSettings(endpoint: string, user: EmulatedUser, more: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    region: 'us-east-1',
    endpoint,
    userName: user.userName,
    credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
    retryBaseDelayMs: 5,
    ...more,
  };
}

/** What the rotation tests add: denials to revoke with, and a quick check of the new key. */
export const ROTATABLE = { revocation: 'iam-deny', rotationVerifyAttempts: 3, rotationVerifyDelayMs: 5 };

export async function awsWorld(name: string, overrides: Record<string, unknown> = {}, opts: AwsProviderOptions = {}): Promise<AwsWorld> {
  const emu = await startAwsEmulator();
  const user = emu.createUser('jit-broker');
  const role = emu.createRole('agent-reports', { maxSessionDuration: 7200, trust: [user.arn] });
  const redis = new Redis(REDIS_URL);
  const prefix = `test-aws-${name}-${randomUUID().slice(0, 8)}`;
  const providers: AwsProvider[] = [];
  const makeProvider = (more: Record<string, unknown> = {}, o: AwsProviderOptions = {}, c: Partial<ProviderContext> = {}) => {
    const settings = awsSettingsSchema.parse({
      region: 'us-east-1',
      endpoint: emu.url,
      userName: user.userName,
      credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
      retryBaseDelayMs: 5,
      rotationVerifyDelayMs: 5,
      requestTimeoutMs: 2000,
      ...overrides,
      ...more,
    });
    const p = createAwsProvider(settings, { logger: silentLogger, redis, keyPrefix: prefix, clock: emu.now, ...c }, { ...opts, ...o });
    providers.push(p);
    return p;
  };
  const provider = makeProvider();
  return {
    emu,
    user,
    role,
    redis,
    prefix,
    provider,
    makeProvider,
    settings: awsSettingsSchema.parse({ endpoint: emu.url, ...overrides }),
    async close() {
      await Promise.all(providers.map((p) => p.close()));
      const keys = await redis.keys(`${prefix}:*`);
      if (keys.length) await redis.del(...keys);
      await redis.quit();
      await emu.stop();
    },
  };
}

export function roleConfig(arn: string, extra: Record<string, unknown> = {}): AwsRoleConfig {
  return awsRoleSchema.parse({ provider: 'aws', roleArn: arn, maxTtlSeconds: 3600, ...extra });
}

export function task(extra: Partial<TaskRecord> = {}): TaskRecord {
  const now = Date.now();
  return {
    taskId: 't-4711',
    agent: 'spiffe://example.org/agent/support',
    tenant: 'acme',
    purpose: 'triage',
    grants: [],
    labels: {},
    status: 'open',
    openedBy: 'spiffe://example.org/orchestrator/o',
    createdAt: now,
    expiresAt: now + 3_600_000,
    depth: 0,
    delegators: [],
    requestHash: 'x',
    ttlSeconds: 3600,
    liveLeases: 0,
    ...extra,
  };
}

export function issueRequest(role: AwsRoleConfig, extra: Partial<IssueRequest<AwsRoleConfig>> = {}): IssueRequest<AwsRoleConfig> {
  const t = extra.task ?? task();
  return {
    leaseId: randomBytes(16).toString('hex'),
    roleName: 'reports-bucket',
    role,
    task: t,
    agent: t.agent,
    scopes: ['s3:GetObject'],
    ttlSeconds: 900,
    ...extra,
  };
}

/** The session name the provider gives a request's session. */
export const nameOf = (req: IssueRequest<AwsRoleConfig>) => sessionNameFor(req.leaseId, req.agent, req.task.taskId);

/** The lease the core would store for an issued credential. */
export function leaseFor(req: IssueRequest<AwsRoleConfig>, handle: LeaseRecord['handle'], expiresAt: number): LeaseRecord {
  return {
    leaseId: req.leaseId,
    taskId: req.task.taskId,
    role: req.roleName,
    ttlSeconds: req.ttlSeconds,
    provider: 'aws',
    agent: req.agent,
    scopes: req.scopes,
    status: 'active',
    issuedAt: Date.now(),
    expiresAt,
    revocable: true,
    handle,
  };
}

/** An STS client using issued session credentials (what the agent would run). */
export function stsAs(emu: AwsEmulator, c: Record<string, unknown>): STSClient {
  return new STSClient({
    region: 'us-east-1',
    endpoint: emu.url,
    maxAttempts: 1,
    credentials: { accessKeyId: String(c.AccessKeyId), secretAccessKey: String(c.SecretAccessKey), sessionToken: String(c.SessionToken) },
  });
}

/** GetCallerIdentity as the client's session: 'ok', or the AWS error code (AccessDenied once a deny covers it). */
export async function sessionCode(client: STSClient): Promise<string> {
  try {
    await client.send(new GetCallerIdentityCommand({}));
    return 'ok';
  } catch (err) {
    return (err as { Code?: string; name: string }).Code ?? (err as Error).name;
  }
}

/** GetCallerIdentity with a long-term key or a session's keys against `endpoint`: 'ok', or the AWS error code. */
export async function callerIdentityAs(
  endpoint: string,
  keys: { accessKeyId: string; secretAccessKey: string; sessionToken?: string },
): Promise<string> {
  const sts = new STSClient({ region: 'us-east-1', endpoint, maxAttempts: 1, credentials: keys });
  try {
    await sts.send(new GetCallerIdentityCommand({}));
    return 'ok';
  } catch (err) {
    return (err as { Code?: string }).Code ?? (err as Error).name;
  } finally {
    sts.destroy();
  }
}

/** A second access key of `user`, made straight in IAM (as another instance's rotation would). */
export async function createAccessKey(emu: AwsEmulator, user: EmulatedUser): Promise<{ accessKeyId: string; secretAccessKey: string }> {
  const iam = new IAMClient({
    region: 'us-east-1',
    endpoint: emu.url,
    credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
  });
  try {
    const k = (await iam.send(new CreateAccessKeyCommand({ UserName: user.userName }))).AccessKey!;
    return { accessKeyId: k.AccessKeyId!, secretAccessKey: k.SecretAccessKey! };
  } finally {
    iam.destroy();
  }
}

/** Seals `keys` into the Redis of broker `t` as the distributed AWS secret, as a rotation does, without announcing it. */
export async function sealAwsSecret(t: TestBroker, keys: { accessKeyId: string; secretAccessKey: string }): Promise<void> {
  const kek = new Kek(readSecret((t.config as unknown as { secrets: { kek: string } }).secrets.kek, 'secrets.kek'));
  await new SealedSecrets(t.broker.deps.redis, t.broker.deps.keys, kek).write('aws', keys);
}

/** An STS session for `t` on `roleArn` by `provider`: the lease to revoke it by, and its access key id (for `evaluate`). */
export async function issueSession(provider: AwsProvider, roleArn: string, t: TaskRecord) {
  const req = issueRequest(roleConfig(roleArn), { task: t });
  const out = await provider.issue(req);
  return { lease: leaseFor(req, out.handle, out.expiresAt), accessKeyId: String(out.credentials.AccessKeyId) };
}
