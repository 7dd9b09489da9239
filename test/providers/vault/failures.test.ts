import { Socket } from 'node:net';
import { BrokerError, RetryableUpstreamError } from '../../../src/errors.ts';
import type { VaultProvider } from '../../../src/providers/vault/index.ts';
import type { VaultEmulator } from '../../emulators/vault/index.ts';
import { approleSettings, leaseOf, pathRole, provider, rejection, request, tokenRole, vaultWithBroker, waitFor } from './helpers.ts';

let emu: VaultEmulator;
let p: VaultProvider;
beforeAll(async () => {
  const v = await vaultWithBroker();
  emu = v.emu;
  p = await provider(approleSettings(emu, v.roleId, v.secretId, { requestTimeoutMs: 1000 }));
});
afterAll(async () => {
  await p.close();
  await emu.stop();
});
afterEach(() => {
  emu.unseal();
  expect(emu.unhandled).toEqual([]);
});

describe('Vault failing during issuance', () => {
  test('sealed: 502 upstream_sealed (an upstream failure), and the upstream not ready', async () => {
    emu.seal();
    for (const role of [tokenRole(['ops-read']), pathRole('database/creds/orders')]) {
      const err = await rejection(p.issue(request(role)));
      expect(err).toBeInstanceOf(BrokerError);
      expect(err).toMatchObject({ status: 502, code: 'upstream_sealed' });
    }
    expect(await p.ready()).toBe(false);
    emu.unseal();
    expect(await p.ready()).toBe(true);
  });

  test('down: 502 upstream_unavailable, at the first refused connection, with no token in the error', async () => {
    await emu.setDown(true);
    const port = Number(new URL(emu.url).port);
    const dials: unknown[] = [];
    // Every connection opened to Vault's port while it is down, seen (not changed) where node:net opens it.
    const connect = Socket.prototype.connect;
    Socket.prototype.connect = function (this: Socket, ...args: unknown[]) {
      // connect(options, cb), connect(port, host, cb) or, inside node:net, connect([options, cb]).
      const first = Array.isArray(args[0]) ? args[0][0] : args[0];
      const to = first !== null && typeof first === 'object' ? (first as { port?: unknown }).port : first;
      if (Number(to) === port) dials.push(to);
      return (connect as (...a: unknown[]) => Socket).apply(this, args);
    } as typeof connect;
    try {
      const err = await rejection(p.issue(request(tokenRole(['ops-read'])))).finally(() => {
        Socket.prototype.connect = connect;
      });
      expect(err).toMatchObject({ status: 502, code: 'upstream_unavailable' });
      // Quickly, judged on what happened rather than on the clock: one connection, refused, and the answer is
      // that refusal: not retried, and not waited out until the request timeout (a timeout's error says so).
      expect(dials).toHaveLength(1);
      expect(JSON.stringify({ c: String(err.cause), code: (err.cause as { code?: string })?.code })).toMatch(/ECONNREFUSED/);
      const token = [...emu.state.tokens.values()].find((t) => t.accessor === p.tokenAccessor)!.id;
      expect(JSON.stringify({ m: err.message, c: String(err.cause), s: err.stack })).not.toContain(token);
      expect(await p.ready()).toBe(false);
    } finally {
      await emu.setDown(false);
    }
    expect((await p.issue(request(tokenRole(['ops-read'])))).credentials.token).toEqual(expect.any(String));
  });

  test('throttled (429) and server errors (500): 502 upstream_unavailable', async () => {
    emu.injectFault({ path: 'auth/token/create-orphan', status: 429, errors: ['rate limit quota exceeded'] });
    expect(await rejection(p.issue(request(tokenRole(['ops-read']))))).toMatchObject({ status: 502, code: 'upstream_unavailable' });
    emu.injectFault({ path: 'database/creds/orders', status: 500, errors: ['internal error'] });
    expect(await rejection(p.issue(request(pathRole('database/creds/orders'))))).toMatchObject({
      status: 502,
      code: 'upstream_unavailable',
    });
  });
});

describe('Vault failing during revocation', () => {
  test('sealed: RetryableUpstreamError, then success after unseal', async () => {
    const req = request(tokenRole(['ops-read']));
    const res = await p.issue(req);
    emu.seal();
    const err = await rejection(p.revoke(leaseOf(req, res)));
    expect(err).toBeInstanceOf(RetryableUpstreamError);
    expect(err.code).toBe('upstream_sealed');
    expect(emu.isTokenValid(res.credentials.token as string)).toBe(true);
    emu.unseal();
    await p.revoke(leaseOf(req, res));
    expect(emu.isTokenValid(res.credentials.token as string)).toBe(false);
  });

  test('down: RetryableUpstreamError, then success when Vault is back', async () => {
    const req = request(pathRole('database/creds/orders'));
    const res = await p.issue(req);
    await emu.setDown(true);
    try {
      const err = await rejection(p.revoke(leaseOf(req, res)));
      expect(err).toBeInstanceOf(RetryableUpstreamError);
      expect(err.code).toBe('upstream_unavailable');
    } finally {
      await emu.setDown(false);
    }
    expect(emu.isDbUserValid(res.credentials.username as string)).toBe(true);
    await p.revoke(leaseOf(req, res));
    expect(emu.isDbUserValid(res.credentials.username as string)).toBe(false);
  });

  test('throttled: retryable; a half-done secret revoke (lease gone, reader left) completes on retry', async () => {
    const req = request(pathRole('database/creds/orders'));
    const res = await p.issue(req);
    emu.injectFault({ path: 'auth/token/revoke-accessor', status: 429, errors: ['rate limit quota exceeded'] });
    expect(await rejection(p.revoke(leaseOf(req, res)))).toBeInstanceOf(RetryableUpstreamError);
    expect(emu.isDbUserValid(res.credentials.username as string)).toBe(false);
    expect(emu.tokenByAccessor(res.handle.accessor as string)).toBeDefined();
    await p.revoke(leaseOf(req, res));
    expect(emu.tokenByAccessor(res.handle.accessor as string)).toBeUndefined();
  });

  test('permission denied on revoke is permanent (a BrokerError, not retried)', async () => {
    const req = request(tokenRole(['ops-read']));
    const res = await p.issue(req);
    emu.injectFault({ path: 'auth/token/revoke-accessor', status: 403, errors: ['1 error occurred:\n\t* permission denied\n\n'] });
    const err = await rejection(p.revoke(leaseOf(req, res)));
    expect(err).toBeInstanceOf(BrokerError);
    expect(err).toMatchObject({ code: 'upstream_denied' });
  });
});

describe('starting while Vault is unreachable', () => {
  test('the provider starts not ready and logs in once Vault is back', async () => {
    const v = await vaultWithBroker();
    await v.emu.setDown(true);
    const late = await provider(approleSettings(v.emu, v.roleId, v.secretId, { requestTimeoutMs: 500 }));
    try {
      expect(await late.ready()).toBe(false);
      expect(await rejection(late.issue(request(tokenRole(['ops-read']))))).toMatchObject({ status: 502, code: 'upstream_unavailable' });
      await v.emu.setDown(false);
      await waitFor(() => late.tokenAccessor !== undefined, 4000);
      expect(await late.ready()).toBe(true);
    } finally {
      await late.close();
      await v.emu.stop();
    }
  });
});
