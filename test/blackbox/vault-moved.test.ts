import type { LoadedConfig } from '../../src/config/load.ts';
import { startVaultEmulator, type VaultEmulator } from '../emulators/vault/index.ts';
import { AGENT, ORCH, call, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';
import { tcpProxy, type TcpProxy } from '../helpers/tcp-proxy.ts';
import { BROKER_POLICY } from '../providers/vault/helpers.ts';

/**
 * Red team: a Vault lease's handle named the token accessor (and the Vault lease id) but not the Vault
 * namespace (`providers.vault.namespace`, sent as X-Vault-Namespace) nor the address it was issued at. An
 * operator who changed either and restarted while credentials were out had the worker ask the new
 * namespace or cluster to revoke them; it answered 400 "invalid accessor" (unknown there), which counted as
 * "already revoked": the leases ended `revoked` while the tokens and database users went on working in
 * Vault until their TTL. Now the handle records both: revocation goes to the recorded namespace, and an
 * "unknown" from another address than the one the credential was issued at confirms nothing (a failed
 * attempt, retried until Vault confirms or the credential expires).
 */
const agentId = `spiffe://dev.local${AGENT}`;
const TTL = 8;
let emu: VaultEmulator;
/** Another Vault cluster. */
let other: VaultEmulator;
let proxy: TcpProxy;
const open: TestBroker[] = [];

beforeAll(async () => {
  emu = await startVaultEmulator({
    namespaces: ['team-a', 'team-b'],
    policies: {
      'jit-broker': BROKER_POLICY,
      'ops-read': ['secret/ops/*'],
      // The broker's policy in the root namespace, reaching into team-a (a parent's policy names the child's path).
      'jit-parent': [...BROKER_POLICY, ...BROKER_POLICY.map((p) => `team-a/${p}`)],
    },
  });
  emu.createDatabaseRole('orders', { namespace: 'team-a' });
  emu.createDatabaseRole('orders');
  other = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  // The same cluster under another address (a load balancer, a DNS name moved).
  proxy = await tcpProxy(emu.url, (c, u) => {
    c.pipe(u);
    u.pipe(c);
  });
});
afterAll(async () => {
  for (const t of open) await t.close().catch(() => undefined);
  await proxy?.close();
  await emu?.stop();
  await other?.stop();
});

type VaultCfg = { address: string; namespace?: string; token: string };
const vaultSettings = (v: VaultCfg) => ({
  address: v.address,
  ...(v.namespace ? { namespace: v.namespace } : {}),
  auth: { token: v.token },
  requestTimeoutMs: 2000,
});
const ROLES = {
  'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } },
  'orders-db': { provider: 'vault', path: 'database/creds/orders' },
};

/**
 * Issues a token and a database secret with `before`, stops that broker, starts another on the same Redis
 * data with `after` (the operator's change and restart), and completes the task there.
 */
async function issueThenMove(name: string, before: VaultCfg, after: VaultCfg, edit?: (t: TestBroker, leaseIds: string[]) => Promise<void>) {
  const first = await startTestBroker(`rt-vault-moved-${name}`, { config: { providers: { vault: vaultSettings(before) }, roles: ROLES } });
  const taskId = `t-moved-${name}`;
  const opened = await call(first.url, 'POST', '/v1/tasks', first.as(ORCH), {
    taskId,
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'vault-ops' }, { role: 'orders-db' }],
  });
  expect(opened.status).toBe(201);
  const token = await call(first.url, 'POST', '/v1/credentials', first.as(AGENT), { taskId, role: 'vault-ops', ttlSeconds: TTL });
  const db = await call(first.url, 'POST', '/v1/credentials', first.as(AGENT), { taskId, role: 'orders-db', ttlSeconds: TTL });
  expect([token.status, db.status]).toEqual([201, 201]);
  const leaseIds = [token.body.leaseId as string, db.body.leaseId as string];
  if (edit) await edit(first, leaseIds);
  await first.broker.close();
  const config = { ...first.config, providers: { ...first.config.providers, vault: vaultSettings(after) } } as LoadedConfig;
  const t = await startTestBroker('moved', { prefix: first.prefix, loaded: config, issuer: first.issuer });
  open.push(t);
  expect((await call(t.url, 'POST', `/v1/tasks/${taskId}/complete`, t.as(ORCH))).status).toBe(202);
  const lease = async (id: string) => (await call(t.url, 'GET', `/v1/leases/${id}`, t.as(AGENT))).body;
  const upstream = before.address === other.url ? other : emu;
  return {
    leaseIds,
    lease,
    /** Whether the token and the database user still work in the Vault that issued them. */
    alive: () => [upstream.isTokenValid(token.body.credentials.token), upstream.isDbUserValid(db.body.credentials.username)],
    /** Waits until every lease left `active`/`revoking`, and returns them. */
    settled: () =>
      waitFor(
        async () => {
          const ls = await Promise.all(leaseIds.map(lease));
          return ls.every((l) => ['revoked', 'revoke_failed', 'expired'].includes(l.status)) && ls;
        },
        8000,
        100,
      ),
  };
}

/** Not revoked while the credentials still work: `revoke_failed`, then `expired` with the last error once they ended by TTL. */
async function expectHonest(r: Awaited<ReturnType<typeof issueThenMove>>, lastError: string) {
  const failing = await r.settled();
  expect(r.alive()).toEqual([true, true]);
  expect(failing.map((l) => l.status)).toEqual(['revoke_failed', 'revoke_failed']);
  expect(failing.map((l) => l.lastError)).toEqual([lastError, lastError]);
  await new Promise((res) => setTimeout(res, 500));
  expect((await Promise.all(r.leaseIds.map(r.lease))).map((l) => l.status)).toEqual(['revoke_failed', 'revoke_failed']);
  const ended = await waitFor(
    async () => {
      const ls = await Promise.all(r.leaseIds.map(r.lease));
      return ls.every((l) => l.status !== 'revoke_failed') && ls;
    },
    (TTL + 6) * 1000,
    200,
  );
  expect(ended.map((l) => [l.status, l.lastError])).toEqual([
    ['expired', lastError],
    ['expired', lastError],
  ]);
  expect(r.alive()).toEqual([false, false]);
}

test('namespace changed to a sibling the new token cannot act in: not `revoked` while the token and database user work in the old one', async () => {
  const before = {
    address: emu.url,
    namespace: 'team-a',
    token: emu.createToken({ policies: ['jit-broker', 'ops-read'], namespace: 'team-a' }).token,
  };
  const after = {
    address: emu.url,
    namespace: 'team-b',
    token: emu.createToken({ policies: ['jit-broker', 'ops-read'], namespace: 'team-b' }).token,
  };
  await expectHonest(await issueThenMove('ns-sibling', before, after), 'upstream_denied');
}, 40_000);

test('namespace changed to the parent: revocation still goes to the namespace the credentials were issued in', async () => {
  const before = {
    address: emu.url,
    namespace: 'team-a',
    token: emu.createToken({ policies: ['jit-broker', 'ops-read'], namespace: 'team-a' }).token,
  };
  const after = { address: emu.url, token: emu.createToken({ policies: ['jit-parent'] }).token };
  const r = await issueThenMove('ns-parent', before, after);
  const ended = await r.settled();
  expect(r.alive()).toEqual([false, false]);
  expect(ended.map((l) => l.status)).toEqual(['revoked', 'revoked']);
}, 40_000);

test('address pointed at another Vault cluster: its "invalid accessor" does not count as revoked', async () => {
  const before = { address: emu.url, token: emu.createToken({ policies: ['jit-broker', 'ops-read'] }).token };
  const after = { address: other.url, token: other.createToken({ policies: ['jit-broker', 'ops-read'] }).token };
  await expectHonest(await issueThenMove('addr-other', before, after), 'upstream_unconfirmed');
}, 40_000);

test('address changed to another name of the same cluster: revoked there, and the credentials are gone', async () => {
  const token = emu.createToken({ policies: ['jit-broker', 'ops-read'] }).token;
  const r = await issueThenMove('addr-same', { address: emu.url, token }, { address: proxy.url.replace(/^redis:/, 'http:'), token });
  const ended = await r.settled();
  expect(r.alive()).toEqual([false, false]);
  expect(ended.map((l) => l.status)).toEqual(['revoked', 'revoked']);
}, 40_000);

test('a lease recorded by the previous release (no namespace nor address in its handle) is revoked as before', async () => {
  const cfg = {
    address: emu.url,
    namespace: 'team-a',
    token: emu.createToken({ policies: ['jit-broker', 'ops-read'], namespace: 'team-a' }).token,
  };
  const r = await issueThenMove('old-handle', cfg, cfg, async (t, ids) => {
    const { redis, keys } = t.broker.deps;
    for (const id of ids) {
      const { namespace: _n, address: _a, ...old } = JSON.parse((await redis.hget(keys.lease(id), 'handle'))!);
      await redis.hset(keys.lease(id), 'handle', JSON.stringify(old));
    }
  });
  const ended = await r.settled();
  expect(r.alive()).toEqual([false, false]);
  expect(ended.map((l) => l.status)).toEqual(['revoked', 'revoked']);
}, 40_000);
