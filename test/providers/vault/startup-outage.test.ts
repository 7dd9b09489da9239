import { mkdtempSync, readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tls from 'node:tls';
import type { VaultProvider } from '../../../src/providers/vault/index.ts';
import { createVaultProvider } from '../../../src/providers/vault/index.ts';
import { startAwsEmulator, type AwsEmulator } from '../../emulators/aws/index.ts';
import type { VaultEmulator } from '../../emulators/vault/index.ts';
import { AGENT, call, openAgentTask, startSibling, startTestBroker, waitFor, type TestBroker } from '../../helpers/broker.ts';
import { generateTlsFiles, type TlsFiles } from '../../helpers/tls-certs.ts';
import { brokerAwsSettings } from '../aws/helpers.ts';
import { approleSettings, ctx, rejection, vaultWithBroker } from './helpers.ts';
import { freePort } from '../../helpers/redis-topology.ts';

/**
 * One upstream down when the broker starts does not stop the broker: a Vault whose certificate the broker
 * does not trust (or an unreachable Vault, an unreachable AWS) at the first AppRole login. JWT roles keep
 * being issued, Vault roles answer 502 upstream_unavailable, /readyz stays 200 and names the upstream down
 * (contract section 3: readiness is Redis, signing keys, policy), `jit_upstream_up` says 0, and the login is
 * retried in the background until it works. What can never work still fails startup at once.
 */
let v: Awaited<ReturnType<typeof vaultWithBroker>>;
let trusted: TlsFiles;
let untrusted: TlsFiles;
const defaultCAs = tls.getCACertificates('default');
const closers: (() => Promise<unknown>)[] = [];

beforeAll(async () => {
  v = await vaultWithBroker();
  trusted = generateTlsFiles(mkdtempSync(join(tmpdir(), 'vault-start-trusted-')));
  untrusted = generateTlsFiles(mkdtempSync(join(tmpdir(), 'vault-start-untrusted-')));
  // What NODE_EXTRA_CA_CERTS does for a process at start: this one trusts `trusted`'s CA, never `untrusted`'s.
  tls.setDefaultCACertificates([...defaultCAs, readFileSync(trusted.caFile, 'utf8')]);
});
afterAll(async () => {
  for (const c of closers.reverse()) await c().catch(() => undefined);
  tls.setDefaultCACertificates(defaultCAs);
  await v.emu.stop();
});

/** Vault behind TLS: forwards every request to the emulator, with the certificate `cert` names (swappable). */
async function tlsFront(emu: VaultEmulator, cert: TlsFiles): Promise<{ url: string; serve(cert: TlsFiles): void }> {
  const context = (f: TlsFiles) => ({ cert: readFileSync(f.certFile), key: readFileSync(f.keyFile) });
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const up = httpRequest(new URL(req.url!, emu.url), { method: req.method, headers: req.headers }, (r) => {
        res.writeHead(r.statusCode!, r.headers);
        r.pipe(res);
      });
      up.on('error', () => res.destroy());
      up.end(Buffer.concat(chunks));
    });
  };
  const server: HttpsServer = createHttpsServer(context(cert), handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  closers.push(async () => {
    server.closeAllConnections();
    await new Promise<void>((r) => server.close(() => r()));
  });
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    serve: (f) => {
      server.setSecureContext(context(f));
      // Connections kept alive keep the certificate they were made with.
      server.closeAllConnections();
    },
  };
}

const vaultRoles = { 'vault-ops': { provider: 'vault', token: { policies: ['ops-read'] } } };
const approle = (address: string) => ({
  address,
  requestTimeoutMs: 1000,
  auth: { approle: { roleId: v.roleId, secretId: v.secretId, roleName: 'jit-broker' } },
});

let n = 0;
async function openTask(t: TestBroker, grants: Record<string, unknown>[]): Promise<string> {
  const taskId = `t-vault-start-${++n}`;
  await openAgentTask(t, taskId, grants, 'x');
  return taskId;
}
const issue = (t: TestBroker, body: Record<string, unknown>) => call(t.url, 'POST', '/v1/credentials', t.as(AGENT), body);
const upMetric = async (t: TestBroker, kind: string) => {
  const text = (await call(t.url, 'GET', '/metrics', {})).body as string;
  return new RegExp(`^jit_upstream_up\\{provider="${kind}"\\} (\\d)`, 'm').exec(text)?.[1];
};

describe('the broker starts whatever one upstream does', () => {
  let aws: AwsEmulator;
  beforeAll(async () => {
    aws = await startAwsEmulator();
    closers.push(() => aws.stop());
  });

  test('Vault with a certificate the broker does not trust, AWS down: starts, issues JWT, 502 for the others, /readyz 200 naming them; Vault logs in once its certificate is fixed', async () => {
    const front = await tlsFront(v.emu, untrusted);
    const user = aws.createUser(`jit-broker-${++n}`);
    const role = aws.createRole(`agent-reports-${n}`, { maxSessionDuration: 3600, trust: [user.arn] });
    await aws.setDown(true);
    const t = await startTestBroker('vault-start-tls', {
      config: {
        providers: { vault: approle(front.url), aws: brokerAwsSettings(aws.url, user, { requestTimeoutMs: 1000 }) },
        roles: {
          'tickets-api': { provider: 'jwt', audience: 'https://tickets.internal', maxTtlSeconds: 900, scopes: ['tickets:read'] },
          'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 },
          ...vaultRoles,
        },
      },
    });
    closers.push(() => t.close());
    const taskId = await openTask(t, [
      { role: 'tickets-api', scopes: ['tickets:read'] },
      { role: 'vault-ops' },
      { role: 'reports-bucket', scopes: ['s3:GetObject'] },
    ]);
    expect((await issue(t, { taskId, role: 'tickets-api' })).status).toBe(201);
    const denied = await issue(t, { taskId, role: 'vault-ops' });
    expect(denied.body).toMatchObject({ status: 502, code: 'upstream_unavailable' });
    expect(JSON.stringify(denied.body)).not.toContain(v.secretId);
    expect((await issue(t, { taskId, role: 'reports-bucket' })).body).toMatchObject({ status: 502, code: 'upstream_unavailable' });

    const ready = await call(t.url, 'GET', '/readyz', {});
    expect(ready.status).toBe(200);
    expect(ready.body.upstreams).toMatchObject({ vault: false, aws: false });
    expect(await upMetric(t, 'vault')).toBe('0');
    expect(await upMetric(t, 'aws')).toBe('0');

    // Vault's certificate replaced by one the broker trusts, AWS back: both work without a restart.
    front.serve(trusted);
    await aws.setDown(false);
    await waitFor(async () => (t.broker.deps.providers.get('vault') as VaultProvider).tokenAccessor !== undefined, 8000);
    expect((await issue(t, { taskId, role: 'vault-ops' })).status).toBe(201);
    expect((await issue(t, { taskId, role: 'reports-bucket' })).status).toBe(201);
    await waitFor(async () => (await upMetric(t, 'vault')) === '1', 4000);
  }, 30_000);

  test('a rotated secret-id in Redis and Vault down at a restart: starts, and logs in with the rotated one once Vault is back', async () => {
    const w = await vaultWithBroker();
    closers.push(() => w.emu.stop());
    const a = await startTestBroker('vault-start-rotated', {
      config: {
        providers: {
          vault: { ...approle(w.emu.url), auth: { approle: { roleId: w.roleId, secretId: w.secretId, roleName: 'jit-broker' } } },
        },
        roles: vaultRoles,
      },
    });
    closers.push(() => a.close());
    const rotated = await call(a.url, 'POST', '/v1/admin/rotate', a.as('/ops/alice'), { target: 'vault' });
    expect(rotated.status).toBe(202);
    // The configured secret-id is gone: only the rotated one, sealed in Redis, logs in.
    expect(w.emu.isSecretIdValid('jit-broker', w.secretId)).toBe(false);

    await w.emu.setDown(true);
    const b = await startSibling(a);
    closers.push(() => b.close());
    const taskId = await openTask(b, [{ role: 'vault-ops' }]);
    expect((await issue(b, { taskId, role: 'vault-ops' })).body).toMatchObject({ status: 502, code: 'upstream_unavailable' });
    await w.emu.setDown(false);
    await waitFor(async () => (b.broker.deps.providers.get('vault') as VaultProvider).tokenAccessor !== undefined, 8000);
    expect((await issue(b, { taskId, role: 'vault-ops' })).status).toBe(201);
  }, 30_000);

  test('a revocation while Vault is unreachable (TLS failing) is retried, and done once Vault is back', async () => {
    const front = await tlsFront(v.emu, trusted);
    const t = await startTestBroker('vault-start-revoke', { config: { providers: { vault: approle(front.url) }, roles: vaultRoles } });
    closers.push(() => t.close());
    const taskId = await openTask(t, [{ role: 'vault-ops' }]);
    const tok = await issue(t, { taskId, role: 'vault-ops', ttlSeconds: 300 });
    expect(tok.status).toBe(201);
    front.serve(untrusted);
    expect((await call(t.url, 'DELETE', `/v1/leases/${tok.body.leaseId}`, t.as(AGENT))).status).toBe(202);
    const lease = async () => (await call(t.url, 'GET', `/v1/leases/${tok.body.leaseId}`, t.as(AGENT))).body;
    await waitFor(async () => (await lease()).status === 'revoke_failed', 8000);
    expect((await lease()).lastError).toBe('upstream_unavailable');
    expect(v.emu.isTokenValid(tok.body.credentials.token)).toBe(true);
    front.serve(trusted);
    await waitFor(async () => (await lease()).status === 'revoked', 8000);
    expect(v.emu.isTokenValid(tok.body.credentials.token)).toBe(false);
  }, 30_000);
});

describe('what can never work still fails startup at once', () => {
  test('NODE_EXTRA_CA_CERTS naming a file that cannot be read, with an https address: a config error', async () => {
    const before = process.env.NODE_EXTRA_CA_CERTS;
    process.env.NODE_EXTRA_CA_CERTS = '/nonexistent/vault-ca.pem';
    try {
      const url = `https://127.0.0.1:${await freePort()}`;
      const err = await rejection(
        createVaultProvider(approleSettings({ url } as VaultEmulator, v.roleId, v.secretId, { requestTimeoutMs: 300 }), ctx).then(
          async (p) => {
            await p.close();
          },
        ),
      );
      expect(err.message).toMatch(/NODE_EXTRA_CA_CERTS/);
      expect(err.message).toMatch(/\/nonexistent\/vault-ca\.pem/);
    } finally {
      if (before === undefined) delete process.env.NODE_EXTRA_CA_CERTS;
      else process.env.NODE_EXTRA_CA_CERTS = before;
    }
  });

  test('a malformed address: a config error naming providers.vault.address', async () => {
    const err = await rejection(
      startTestBroker('vault-start-bad-address', {
        config: { providers: { vault: approle('https://vault.example:8200/?x=1') }, roles: vaultRoles },
      }),
    );
    expect(err.message).toMatch(/providers\.vault\.address/);
  });
});
