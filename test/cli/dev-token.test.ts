import { afterAll, beforeAll, describe, expect, it, jest } from '@jest/globals';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { ensureBuilt, jit, node20Version } from '../helpers/cli.ts';

// Every step spawns a Node process; on a busy 2-core machine a test of ten steps needs more than jest's 20 s.
jest.setTimeout(90_000);

/**
 * `jit dev token` signs with the dev trust domain's key that `npm start`
 * writes to dev/dev-signer.private.jwk. Here JIT_DEV_DIR points at a
 * directory holding the test broker's trusted key in that same format, so
 * the broker's answer is the proof that the token is a valid identity.
 */
let t: TestBroker;
let devDir: string;
const empty = mkdtempSync(join(tmpdir(), 'jit-nodev-'));

beforeAll(async () => {
  expect(node20Version()).toMatch(/^v20\./);
  await ensureBuilt();
  t = await startTestBroker('cli-dev');
  devDir = mkdtempSync(join(tmpdir(), 'jit-dev-'));
  // What scripts/dev-setup.ts writes: the private JWK with its kid and alg.
  const jwk = { ...t.issuer.privateKey.export({ format: 'jwk' }), kid: t.issuer.kid, alg: 'ES256' };
  writeFileSync(join(devDir, 'dev-signer.private.jwk'), `${JSON.stringify(jwk)}\n`, { mode: 0o600 });
}, 120_000);
afterAll(async () => {
  await t?.close();
});

describe('jit dev token', () => {
  it.each([['/orchestrator/dev'], ['orchestrator/dev'], ['spiffe://dev.local/orchestrator/dev']])(
    '--sub %s mints an identity the broker accepts',
    async (sub) => {
      const r = await jit(['dev', 'token', '--sub', sub], { JIT_DEV_DIR: devDir });
      expect(r).toMatchObject({ code: 0, stderr: '' });
      const token = r.stdout.trim();
      expect(r.stdout).toBe(`${token}\n`);
      expect(decodeProtectedHeader(token)).toEqual({ alg: 'ES256', kid: t.issuer.kid, typ: 'JWT' });
      const claims = decodeJwt(token);
      expect(claims).toMatchObject({ sub: 'spiffe://dev.local/orchestrator/dev', aud: ['jit-broker'] });
      expect(claims.exp! - claims.iat!).toBe(3600);
      // The broker takes it as an orchestrator's identity.
      const opened = await call(
        t.url,
        'POST',
        '/v1/tasks',
        { authorization: `Bearer ${token}` },
        {
          agent: 'spiffe://dev.local/agent/support',
          tenant: 'acme',
          purpose: 'dev token',
          ttlSeconds: 60,
          grants: [{ role: 'demo-api', scopes: [] }],
        },
      );
      expect(opened.status).toBe(201);
    },
  );

  it('the whole flow from the shell: identities from dev token, a task, a credential', async () => {
    const orch = (await jit(['dev', 'token', '--sub', ORCH, '--ttl', '5m'], { JIT_DEV_DIR: devDir })).stdout.trim();
    const agent = (await jit(['dev', 'token', '--sub', '/agent/support', '--json'], { JIT_DEV_DIR: devDir })).stdout;
    const agentJson = JSON.parse(agent);
    expect(agentJson).toMatchObject({ sub: 'spiffe://dev.local/agent/support', aud: 'jit-broker', token: expect.stringMatching(/^ey/) });
    expect(Date.parse(agentJson.expiresAt) - Date.now()).toBeGreaterThan(3_590_000);
    const taskId = (
      await jit(
        [
          'task',
          'open',
          '--agent',
          'spiffe://dev.local/agent/support',
          '--tenant',
          'acme',
          '--purpose',
          'p',
          '--ttl',
          '60',
          '--grant',
          'demo-api:',
        ],
        { JIT_BROKER_URL: t.url, JIT_TOKEN: orch },
      )
    ).stdout.trim();
    const cred = await jit(['cred', 'get', '--task', taskId, '--role', 'demo-api'], { JIT_BROKER_URL: t.url, JIT_TOKEN: agentJson.token });
    expect(cred.code).toBe(0);
    expect(JSON.parse(cred.stdout)).toMatchObject({ taskId, role: 'demo-api' });
  });

  it('refuses without the dev trust domain (exit 2) and says how to get one', async () => {
    const r = await jit(['dev', 'token', '--sub', '/agent/support'], { JIT_DEV_DIR: empty });
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(join(empty, 'dev-signer.private.jwk'));
    expect(r.stderr).toMatch(/npm start/);
  });

  it('refuses other trust domains, malformed paths, a missing --sub and a bad key file (exit 2)', async () => {
    const other = await jit(['dev', 'token', '--sub', 'spiffe://example.org/agent/x'], { JIT_DEV_DIR: devDir });
    expect(other).toMatchObject({ code: 2, stderr: expect.stringMatching(/only signs for spiffe:\/\/dev\.local/) });
    expect((await jit(['dev', 'token', '--sub', '/agent/../ops'], { JIT_DEV_DIR: devDir })).code).toBe(2);
    expect((await jit(['dev', 'token'], { JIT_DEV_DIR: devDir })).code).toBe(2);
    const broken = mkdtempSync(join(tmpdir(), 'jit-dev-broken-'));
    writeFileSync(join(broken, 'dev-signer.private.jwk'), '{"kty":"EC"}');
    expect(await jit(['dev', 'token', '--sub', '/agent/x'], { JIT_DEV_DIR: broken })).toMatchObject({
      code: 2,
      stderr: expect.stringMatching(/not a private JWK/),
    });
  });

  it('finds dev/ in the working directory when JIT_DEV_DIR is not set', async () => {
    const checkout = mkdtempSync(join(tmpdir(), 'jit-checkout-'));
    const { mkdirSync, copyFileSync } = await import('node:fs');
    mkdirSync(join(checkout, 'dev'));
    copyFileSync(join(devDir, 'dev-signer.private.jwk'), join(checkout, 'dev', 'dev-signer.private.jwk'));
    const r = await jit(['dev', 'token', '--sub', '/agent/support'], {}, { cwd: checkout });
    expect(r.code).toBe(0);
    expect(decodeProtectedHeader(r.stdout.trim()).kid).toBe(t.issuer.kid);
  });
});
