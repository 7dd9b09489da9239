import { randomUUID } from 'node:crypto';
import nodeVault from 'node-vault';
import type { LeaseRecord } from '../../../src/leases/types.ts';
import { silentLogger } from '../../../src/logger.ts';
import type { IssueRequest, IssueResult, ProviderContext } from '../../../src/providers/types.ts';
import type { VaultRoleConfig, VaultSettings } from '../../../src/providers/vault/config.ts';
import { createVaultProvider, type VaultProvider } from '../../../src/providers/vault/index.ts';
import type { TaskRecord } from '../../../src/tasks/types.ts';
import { startVaultEmulator, type AppRoleOptions, type VaultEmulator } from '../../emulators/vault/index.ts';

/** The broker's policy in these tests: what docs/providers/vault.md tells operators to grant. */
export const BROKER_POLICY = [
  'auth/token/create-orphan',
  'auth/token/revoke-accessor',
  'auth/token/renew-accessor',
  'sys/leases/revoke',
  'database/creds/*',
  'auth/approle/role/jit-broker/secret-id*',
  'auth/approle/role/jit-broker/custom-secret-id',
];

/** An emulator with the broker's AppRole, an `orders` database role and the ops policies. */
export async function vaultWithBroker(
  approle: Partial<AppRoleOptions> = {},
): Promise<{ emu: VaultEmulator; roleId: string; secretId: string }> {
  const emu = await startVaultEmulator({
    policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'], 'ops-write': ['secret/ops/*'], 'db-admin': ['database/*'] },
  });
  emu.createDatabaseRole('orders', { defaultTtl: 3600, maxTtl: 7200 });
  const { roleId, secretId } = emu.createAppRole({ name: 'jit-broker', policies: ['jit-broker', 'ops-read', 'ops-write'], ...approle });
  return { emu, roleId, secretId };
}

export function approleSettings(emu: VaultEmulator, roleId: string, secretId: string, extra: Partial<VaultSettings> = {}): VaultSettings {
  return {
    address: emu.url,
    requestTimeoutMs: 2000,
    auth: { approle: { roleId, secretId, mount: 'approle', roleName: 'jit-broker' } },
    ...extra,
  } as VaultSettings;
}

export const ctx: ProviderContext = { logger: silentLogger, redis: undefined as never, keyPrefix: 'test-vault' };

export const provider = (settings: VaultSettings): Promise<VaultProvider> => createVaultProvider(settings, ctx);

/** A real node-vault client, for checking from the outside what the provider did. */
export function vaultClient(emu: VaultEmulator, token: string) {
  const c = nodeVault({ endpoint: emu.url, token });
  return c;
}

export const tokenRole = (policies: string[], extra: Partial<NonNullable<VaultRoleConfig['token']>> = {}): VaultRoleConfig => ({
  provider: 'vault',
  token: { policies, defaultPolicy: false, ...extra },
  maxTtlSeconds: 3600,
  approval: 'none',
});

export const pathRole = (path: string): VaultRoleConfig => ({ provider: 'vault', path, maxTtlSeconds: 3600, approval: 'none' });

const task: TaskRecord = {
  taskId: 't-vault',
  agent: 'spiffe://dev.local/agent/support',
  tenant: 'acme',
  purpose: 'test',
  grants: [],
  labels: {},
  status: 'open',
  openedBy: 'spiffe://dev.local/orchestrator/o',
  createdAt: Date.now(),
  expiresAt: Date.now() + 3_600_000,
  depth: 0,
  delegators: [],
  requestHash: 'x',
  ttlSeconds: 3600,
  liveLeases: 0,
};

export function request(role: VaultRoleConfig, over: Partial<IssueRequest<VaultRoleConfig>> = {}): IssueRequest<VaultRoleConfig> {
  return {
    leaseId: randomUUID().replace(/-/g, ''),
    roleName: 'vault-ops',
    role,
    task,
    agent: task.agent,
    // What the core passes for a grant without scopes: the role's configured set (contract section 3).
    scopes: role.token ? [...role.token.policies] : [],
    ttlSeconds: 120,
    ...over,
  };
}

/** The lease the core would store for an issue result. */
export function leaseOf(req: IssueRequest<VaultRoleConfig>, res: IssueResult): LeaseRecord {
  return {
    leaseId: req.leaseId,
    taskId: req.task.taskId,
    role: req.roleName,
    ttlSeconds: req.ttlSeconds,
    provider: 'vault',
    agent: req.agent,
    scopes: req.scopes,
    status: 'active',
    issuedAt: Date.now(),
    expiresAt: res.expiresAt,
    revocable: true,
    handle: res.handle,
  };
}

/** The status and errors a node-vault call rejected with. */
export async function vaultFailure(p: Promise<unknown>): Promise<{ status?: number; errors?: string[] }> {
  try {
    await p;
  } catch (err) {
    const e = err as { response?: { statusCode: number; body: { errors?: string[] } } };
    return { status: e.response?.statusCode, errors: e.response?.body?.errors };
  }
  throw new Error('expected the Vault call to fail');
}

/** What a promise rejected with. */
export async function rejection(p: Promise<unknown>): Promise<Error & { code?: string; status?: number }> {
  try {
    await p;
  } catch (err) {
    return err as Error & { code?: string; status?: number };
  }
  throw new Error('expected a rejection');
}

export async function waitFor(check: () => boolean | Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}
