/**
 * Broker overhead on top of the upstream call (issues 4 and 5): sequential
 * issuances through the broker (HTTP → identity → policy → lease → provider →
 * audit) against the emulator, versus the same upstream call made directly
 * with the same SDK from this process. Overhead = broker quantile − direct
 * quantile. One request at a time, so no queueing is counted.
 */
import { AssumeRoleCommand, STSClient } from '@aws-sdk/client-sts';
import nodeVault from 'node-vault';
import { startAwsEmulator } from '../../test/emulators/aws/index.ts';
import { startVaultEmulator } from '../../test/emulators/vault/index.ts';
import { BenchIssuer, openBenchTask, startBrokerProcess, writeBenchConfig, writePolicies } from './setup.ts';

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! * 100) / 100;
};
const summary = (broker: number[], direct: number[]) => ({
  brokerP50Ms: pct(broker, 50),
  brokerP99Ms: pct(broker, 99),
  upstreamP50Ms: pct(direct, 50),
  upstreamP99Ms: pct(direct, 99),
  overheadP50Ms: Math.round((pct(broker, 50) - pct(direct, 50)) * 100) / 100,
  overheadP99Ms: Math.round((pct(broker, 99) - pct(direct, 99)) * 100) / 100,
  samples: broker.length,
});

async function timed(n: number, fn: (i: number) => Promise<void>): Promise<number[]> {
  for (let i = 0; i < 20; i++) await fn(-1 - i); // warm-up
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn(i);
    out.push(performance.now() - t0);
  }
  return out;
}

async function withBroker(
  redisUrl: string,
  prefix: string,
  port: number,
  extra: Record<string, unknown>,
  roles: Record<string, unknown>,
  grants: unknown[],
  run: (url: string, agent: string) => Promise<number[]>,
) {
  const issuer = new BenchIssuer();
  const config = writeBenchConfig({ redisUrl, prefix, port, issuer, policiesDir: writePolicies('permit-all'), extra, roles });
  const broker = await startBrokerProcess(config, port);
  try {
    await openBenchTask(broker.url, issuer.svid('/orchestrator/b'), 't-up', { grants });
    return await run(broker.url, issuer.svid('/agent/bench'));
  } finally {
    await broker.stop();
  }
}

async function issueOnce(url: string, agent: string, role: string, ttlSeconds: number): Promise<void> {
  const r = await fetch(`${url}/v1/credentials`, {
    method: 'POST',
    headers: { authorization: `Bearer ${agent}`, 'content-type': 'application/json' },
    body: JSON.stringify({ taskId: 't-up', role, ttlSeconds }),
  });
  if (r.status !== 201) throw new Error(`issue ${role}: ${r.status} ${await r.text()}`);
  await r.arrayBuffer();
}

export async function benchAwsOverhead(redisUrl: string, n = 300) {
  const emu = await startAwsEmulator();
  const user = emu.createUser('jit-broker');
  const role = emu.createRole('agent-reports', { maxSessionDuration: 7200, trust: [user.arn] });
  try {
    const broker = await withBroker(
      redisUrl,
      'bench-aws',
      18_082,
      {
        providers: {
          aws: {
            region: 'us-east-1',
            endpoint: emu.url,
            credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
          },
        },
      },
      { reports: { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 } },
      [{ role: 'reports', scopes: ['s3:GetObject'] }],
      (url, agent) => timed(n, () => issueOnce(url, agent, 'reports', 900)),
    );
    const sts = new STSClient({
      region: 'us-east-1',
      endpoint: emu.url,
      credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
      maxAttempts: 1,
    });
    const policy = JSON.stringify({ Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: ['s3:GetObject'], Resource: ['*'] }] });
    const direct = await timed(n, (i) =>
      sts
        .send(
          new AssumeRoleCommand({
            RoleArn: role.arn,
            RoleSessionName: `direct-${i + 100}`,
            DurationSeconds: 900,
            Policy: policy,
            Tags: [
              { Key: 'task', Value: 't-up' },
              { Key: 'tenant', Value: 'acme' },
            ],
            TransitiveTagKeys: ['task', 'tenant'],
          }),
        )
        .then(() => undefined),
    );
    sts.destroy();
    return summary(broker, direct);
  } finally {
    await emu.stop();
  }
}

export async function benchVaultOverhead(redisUrl: string, n = 300) {
  const emu = await startVaultEmulator({
    policies: {
      'jit-broker': [
        'auth/token/create-orphan',
        'auth/token/revoke-accessor',
        'auth/token/renew-accessor',
        'sys/leases/revoke',
        'database/creds/*',
      ],
      'ops-read': ['secret/ops/*'],
    },
  });
  const { roleId, secretId } = emu.createAppRole({ name: 'jit-broker', policies: ['jit-broker', 'ops-read'] });
  try {
    const broker = await withBroker(
      redisUrl,
      'bench-vault',
      18_083,
      { providers: { vault: { address: emu.url, auth: { approle: { roleId, secretId, roleName: 'jit-broker' } } } } },
      { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] }, maxTtlSeconds: 3600 } },
      [{ role: 'vault-ops', scopes: ['ops-read'] }],
      (url, agent) => timed(n, () => issueOnce(url, agent, 'vault-ops', 300)),
    );
    const vault = nodeVault({ endpoint: emu.url, token: emu.rootToken });
    const direct = await timed(n, () =>
      vault
        .write('auth/token/create-orphan', {
          policies: ['ops-read'],
          ttl: '300s',
          explicit_max_ttl: '300s',
          renewable: false,
          no_default_policy: true,
          meta: { task_id: 't-up' },
        })
        .then(() => undefined),
    );
    return summary(broker, direct);
  } finally {
    await emu.stop();
  }
}
