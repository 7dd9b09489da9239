import { LeaseStore } from '../../src/leases/lease-store.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';
import { REDIS_URL, TEST_REVOCATION, startSibling, startTestBroker, type TestBroker, uniquePrefix, waitFor } from './broker.ts';

/**
 * The Vault race tests' world (test/redteam/races-vault*.test.ts): a Vault emulator (policies `jit-broker` and
 * `ops-read`, a database role `orders`) and two broker instances (API + worker each) on one Redis prefix, rate
 * limits off, with roles `vault-ops` (a token role), `orders-db` (a dynamic secret) and `vault-approved` (a token
 * role that needs approval); `either(i)` spreads requests over both. Started in beforeAll, stopped in afterAll.
 */
export function twoVaultBrokers(name: string) {
  let emu: VaultEmulator;
  let brokerToken: string;
  let a: TestBroker;
  let b: TestBroker;
  beforeAll(async () => {
    emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
    emu.createDatabaseRole('orders', { defaultTtl: 3600, maxTtl: 7200 });
    brokerToken = emu.createToken({ policies: ['jit-broker', 'ops-read'] }).token;
    const prefix = uniquePrefix(name);
    a = await startTestBroker(name, {
      prefix,
      config: {
        redis: { url: REDIS_URL, prefix },
        server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } },
        providers: { vault: { address: emu.url, auth: { token: brokerToken }, requestTimeoutMs: 5000 } },
        roles: {
          'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] }, maxTtlSeconds: 600 },
          'orders-db': { provider: 'vault', path: 'database/creds/orders', maxTtlSeconds: 600 },
          'vault-approved': { provider: 'vault', token: { policies: ['ops-read'] }, maxTtlSeconds: 600, approval: 'required' },
        },
        revocation: { ...TEST_REVOCATION },
      },
    });
    b = await startSibling(a);
  });
  afterAll(async () => {
    await b?.close();
    await a?.close();
    await emu?.stop();
  });

  const either = (i: number) => (i % 2 === 0 ? a : b);

  /**
   * What the broker made in Vault that is still valid: tokens (agents' and secret readers', not the broker's own,
   * each with the lease it was made for) and database users.
   */
  function validInVault(): string[] {
    emu.state.sweep();
    const tokens = [...emu.state.tokens.entries()]
      .filter(([id]) => id !== brokerToken && id !== emu.rootToken)
      .map(([id, t]) => `token:${id.slice(0, 8)}:${(t as { meta?: Record<string, string> }).meta?.lease_id ?? '?'}`);
    const users = [...emu.state.dbUsers.entries()].filter(([, u]) => u.valid).map(([name]) => `db:${name}`);
    return [...tokens, ...users];
  }

  /** The leases of these tasks not ended yet, as `id:status`. */
  async function liveLeases(taskIds: string[]): Promise<string[]> {
    const live: string[] = [];
    for (const id of taskIds) {
      for (const leaseId of await a.broker.deps.tasks.leaseIds(id)) {
        const l = await a.broker.deps.leases.get(leaseId);
        if (l && !LeaseStore.isEnded(l.status)) live.push(`${leaseId}:${l.status}`);
      }
    }
    return live;
  }

  /** Within 12 s, nothing the broker made is valid in Vault and every lease of the tasks has ended. */
  async function expectNothingOutlives(taskIds: string[]): Promise<void> {
    await waitFor(async () => validInVault().length === 0 && (await liveLeases(taskIds)).length === 0, 12_000).catch(async () => {
      throw new Error(`left: vault ${validInVault().join(', ')}; leases ${(await liveLeases(taskIds)).join(', ')}`);
    });
  }

  return { a: () => a, b: () => b, emu: () => emu, either, validInVault, expectNothingOutlives };
}
