import { startAwsEmulator, type AwsEmulator } from '../emulators/aws/index.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { brokerAwsSettings } from '../providers/aws/helpers.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';
import type { ProcessFixture } from './process.ts';

/**
 * The strict Vault and AWS emulators as the upgrade tests with upstream credentials (test/ops/upgrade-upstream,
 * upgrade-rolling-upstream) start them: Vault with the broker's policy, `ops-read` and a database role `orders`;
 * AWS with the broker's IAM user and a role `agent-reports` that trusts it. Stopped by `fx` after its brokers.
 * `providers` is the broker's config for both; a deny write the emulator holds must not time out (and be sent
 * again) before the test kills the process that sent it, hence the long AWS request timeout.
 */
export async function startUpstreams(fx: ProcessFixture) {
  const v: VaultEmulator = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  fx.onCleanup(() => v.stop());
  v.createDatabaseRole('orders', { defaultTtl: 3600, maxTtl: 7200 });
  const brokerToken = v.createToken({ policies: ['jit-broker', 'ops-read'] });
  const a: AwsEmulator = await startAwsEmulator();
  fx.onCleanup(() => a.stop());
  const user = a.createUser('jit-broker');
  const awsRole = a.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
  const providers = {
    vault: { address: v.url, auth: { token: brokerToken.token }, requestTimeoutMs: 2000 },
    aws: brokerAwsSettings(a.url, user, { requestTimeoutMs: 30_000, revocationVerifySeconds: 1 }),
  };
  return { v, a, user, awsRole, providers };
}
