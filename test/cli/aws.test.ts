import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { fromProcess } from '@aws-sdk/credential-providers';
import type { AwsEmulator } from '../emulators/aws/index.ts';
import { awsForBroker } from '../providers/aws/helpers.ts';
import { AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { JIT, NODE20, NODE24, ensureBuilt, jit, node20Version } from '../helpers/cli.ts';

// Every step spawns a Node process; on a busy 2-core machine a test of ten steps needs more than jest's 20 s.
jest.setTimeout(90_000);

/**
 * The CLI with aws roles: the real broker's AWS provider against the strict
 * STS/IAM emulator, the agent's side through an unmodified AWS SDK.
 * `credential_process` runs `jit cred get --format aws-process` on Node 20,
 * the way AWS SDKs exec it with whatever node is on PATH.
 */
let emu: AwsEmulator;
let role: { roleName: string; roleId: string; arn: string };
let t: TestBroker;
let dir: string;
const agentId = 'spiffe://dev.local/agent/support';

beforeAll(async () => {
  expect(node20Version()).toMatch(/^v20\./);
  await ensureBuilt();
  const aws = await awsForBroker();
  emu = aws.emu;
  role = aws.role;
  dir = mkdtempSync(join(tmpdir(), 'jit-cli-aws-'));
  t = await startTestBroker('cli-aws', {
    config: {
      providers: aws.providers,
      roles: {
        'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 },
        'tickets-api': { provider: 'jwt', audience: 'https://tickets.internal', maxTtlSeconds: 900 },
      },
    },
  });
}, 120_000);
afterAll(async () => {
  await t?.close();
  await emu?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

let n = 0;
async function openTask(): Promise<string> {
  const taskId = `t-cli-aws-${++n}`;
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'cli aws',
    ttlSeconds: 7200,
    grants: [
      { role: 'reports-bucket', scopes: ['s3:GetObject', 's3:ListBucket'] },
      { role: 'tickets-api', scopes: [] },
    ],
  });
  expect(r.status).toBe(201);
  return taskId;
}
function file(name: string, content: string): string {
  const path = join(dir, name);
  writeFileSync(path, content);
  return path;
}
async function whoAmI(credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string }) {
  const sts = new STSClient({ region: 'us-east-1', endpoint: emu.url, maxAttempts: 1, credentials });
  try {
    return await sts.send(new GetCallerIdentityCommand({}));
  } finally {
    sts.destroy();
  }
}

describe('credential_process = jit cred get --format aws-process', () => {
  it('prints Version 1 JSON on one line', async () => {
    const taskId = await openTask();
    const r = await jit(['cred', 'get', '--task', taskId, '--role', 'reports-bucket', '--format', 'aws-process'], {
      JIT_BROKER_URL: t.url,
      JIT_TOKEN: t.issuer.svid(AGENT),
    });
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split('\n')).toHaveLength(1);
    const out = JSON.parse(r.stdout);
    expect(Object.keys(out)).toEqual(['Version', 'AccessKeyId', 'SecretAccessKey', 'SessionToken', 'Expiration']);
    expect(out).toMatchObject({ Version: 1, AccessKeyId: expect.stringMatching(/^ASIA/) });
    expect(Date.parse(out.Expiration)).toBeGreaterThan(Date.now() + 3_500_000);
  });

  it('the AWS SDK (fromProcess) runs it on Node 20 and gets working, scoped credentials; refusals reach the SDK', async () => {
    const taskId = await openTask();
    const tokenFile = file('process-svid', `${t.issuer.svid(AGENT, { ttl: 600 })}\n`);
    const line = (r: string, extra = '') =>
      `"${NODE20}" "${JIT}" cred get --broker ${t.url} --token-file ${tokenFile} --task ${taskId} --role ${r} --format aws-process${extra}`;
    const config = file(
      'aws-config',
      `[profile agent]\ncredential_process = ${line('reports-bucket', ' --scopes s3:GetObject --ttl 1h')}\n`,
    );
    const creds = await fromProcess({ profile: 'agent', configFilepath: config, filepath: file('aws-credentials', '') })();
    expect(creds.accessKeyId).toMatch(/^ASIA/);
    expect(creds.expiration!.getTime()).toBeGreaterThan(Date.now() + 3_500_000);
    const who = await whoAmI(creds);
    expect(who.Arn).toMatch(/:assumed-role\/agent-reports\/jit-[a-z2-7]{10}-[a-z2-7]{8}-[0-9a-f]{32}$/);
    // --scopes reached the session policy: one action allowed, the other not.
    expect(emu.evaluate(creds.accessKeyId, 's3:GetObject', '*')).toBe('allow');
    expect(emu.evaluate(creds.accessKeyId, 's3:ListBucket', '*')).not.toBe('allow');

    const denied = file('aws-config-denied', `[profile agent]\ncredential_process = ${line('nope-bucket')}\n`);
    await expect(fromProcess({ profile: 'agent', configFilepath: denied, filepath: file('aws-credentials', '') })()).rejects.toThrow(
      /403 role_not_granted/,
    );
  });
});

describe('jit cred get --format env with an aws role', () => {
  it('prints lines a shell evals into working AWS_* variables, a named profile cleared', async () => {
    const taskId = await openTask();
    const r = await jit(['cred', 'get', '--task', taskId, '--role', 'reports-bucket', '--format', 'env'], {
      JIT_BROKER_URL: t.url,
      JIT_TOKEN: t.issuer.svid(AGENT),
    });
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n')[0]).toBe(
      'unset AWS_PROFILE AWS_DEFAULT_PROFILE AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_CREDENTIAL_EXPIRATION',
    );
    const { execFileSync } = await import('node:child_process');
    const env = JSON.parse(
      execFileSync('sh', ['-c', 'eval "$CRED"; node -e "process.stdout.write(JSON.stringify(process.env))"'], {
        env: { PATH: process.env.PATH, CRED: r.stdout, AWS_PROFILE: 'someone-else' },
        encoding: 'utf8',
      }),
    );
    expect(env.AWS_PROFILE).toBeUndefined();
    const who = await whoAmI({
      accessKeyId: env.AWS_ACCESS_KEY_ID,
      secretAccessKey: env.AWS_SECRET_ACCESS_KEY,
      sessionToken: env.AWS_SESSION_TOKEN,
    });
    expect(who.Arn!.endsWith(env.JIT_LEASE_ID)).toBe(true);
  });
});

describe('jit exec with an aws role', () => {
  it('hands the command AWS_* variables an unmodified SDK uses (AWS_PROFILE dropped), then revokes the session', async () => {
    const taskId = await openTask();
    // A program using the SDK's default chain, as an agent's tool would (jit runs on Node 20, the tool on any node).
    const sdk = createRequire(import.meta.url).resolve('@aws-sdk/client-sts');
    const probe = file(
      'whoami.cjs',
      `const { STSClient, GetCallerIdentityCommand } = require(${JSON.stringify(sdk)});
const sts = new STSClient({ region: 'us-east-1', endpoint: process.env.EMU, maxAttempts: 1 });
sts.send(new GetCallerIdentityCommand({})).then(
  (r) => { process.stdout.write(JSON.stringify({ arn: r.Arn, profile: process.env.AWS_PROFILE ?? null, token: process.env.JIT_TOKEN ?? null, lease: process.env.JIT_LEASE_ID, exp: process.env.AWS_CREDENTIAL_EXPIRATION })); },
  (e) => { process.stdout.write(JSON.stringify({ error: e.Code ?? e.name })); process.exitCode = 5; },
);
`,
    );
    const r = await jit(['exec', '--task', taskId, '--role', 'reports-bucket', '--', NODE24, probe], {
      JIT_BROKER_URL: t.url,
      JIT_TOKEN: t.issuer.svid(AGENT),
      EMU: emu.url,
      AWS_PROFILE: 'someone-else',
      HOME: dir,
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const seen = JSON.parse(r.stdout);
    expect(seen).toMatchObject({
      arn: expect.stringMatching(/:assumed-role\/agent-reports\/jit-[a-z2-7]{10}-[a-z2-7]{8}-[0-9a-f]{32}$/),
      profile: null,
      token: null,
    });
    expect(seen.arn.endsWith(seen.lease)).toBe(true);
    expect(Date.parse(seen.exp)).toBeGreaterThan(Date.now());
    // jit revoked the lease when the command exited: the worker denies the session at IAM.
    await waitFor(async () => (await call(t.url, 'GET', `/v1/leases/${seen.lease}`, t.as(ORCH))).body.status === 'revoked', 10_000, 50);
    expect(emu.rolePolicyNames(role.roleName)).toContain('jit-broker-revoked-sessions');
  });
});
