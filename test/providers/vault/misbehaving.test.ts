import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { BrokerError, RetryableUpstreamError } from '../../../src/errors.ts';
import type { VaultProvider } from '../../../src/providers/vault/index.ts';
import type { VaultEmulator } from '../../emulators/vault/index.ts';
import { type MisbehavingUpstream, misbehavingUpstream, stallBody } from '../../helpers/misbehaving-upstream.ts';
import { approleSettings, BROKER_POLICY, leaseOf, provider, rejection, request, tokenRole } from './helpers.ts';
import { startVaultEmulator } from '../../emulators/vault/index.ts';

/**
 * Vault (or whatever stands in front of it) misbehaving: the provider's calls end within their deadline,
 * hold no more of an answer than a Vault answer can be, and never carry the broker's token elsewhere.
 */
const TIMEOUT_MS = 800;
const CREATE = (req: IncomingMessage) => req.url!.startsWith('/v1/auth/token/create-orphan');
const REVOKE = (req: IncomingMessage) => req.url!.startsWith('/v1/auth/token/revoke-accessor');

let emu: VaultEmulator;
let front: MisbehavingUpstream;
let p: VaultProvider;
let brokerToken: string;
/** Another host: what a redirect points at. It answers every request with a token of its own. */
let elsewhere: Server;
const seenElsewhere: { url: string; token: unknown; body: string }[] = [];

beforeAll(async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  brokerToken = emu.createToken({ policies: ['jit-broker', 'ops-read'] }).token;
  front = await misbehavingUpstream(emu.url);
  elsewhere = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString('utf8')));
    req.on('end', () => {
      seenElsewhere.push({ url: req.url!, token: req.headers['x-vault-token'], body });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({ auth: { client_token: 'hvs.from-elsewhere', accessor: 'a-elsewhere', lease_duration: 60, renewable: true } }),
      );
    });
  });
  await new Promise<void>((r) => elsewhere.listen(0, '127.0.0.1', r));
  p = await provider({ address: front.url, requestTimeoutMs: TIMEOUT_MS, auth: { token: brokerToken } } as never);
});
afterAll(async () => {
  await p.close();
  await front.close();
  await new Promise<void>((r) => elsewhere.close(() => r()));
  await emu.stop();
});
afterEach(() => {
  front.clear();
  seenElsewhere.length = 0;
  expect(emu.unhandled).toEqual([]);
});

/** How long `work` took to settle, and how. */
async function timed<T>(work: Promise<T>): Promise<{ ms: number; err: Error & { status?: number; code?: string } }> {
  const t0 = performance.now();
  const err = await rejection(work);
  return { ms: performance.now() - t0, err };
}

describe('a redirect from Vault', () => {
  test.each([307, 308, 302])('%i to another host: not followed, the token and body stay here, 502 upstream_error', async (status) => {
    const to = `http://localhost:${(elsewhere.address() as AddressInfo).port}`;
    front.on(CREATE, (req, res) => {
      res.writeHead(status, { location: `${to}${req.url}` });
      res.end();
    });
    const err = await rejection(p.issue(request(tokenRole(['ops-read']))));
    expect(seenElsewhere).toEqual([]);
    expect(err).toBeInstanceOf(BrokerError);
    expect(err).toMatchObject({ status: 502, code: 'upstream_error' });
  });
});

describe('a Vault answer that never ends', () => {
  test('headers, then a body dripping a byte at a time: issuance fails 502 at the deadline, not when the drip stops', async () => {
    front.on(CREATE, (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"auth":');
      const t = front.every(100, () => res.write(' '));
      res.on('close', () => clearInterval(t));
    });
    const { ms, err } = await timed(p.issue(request(tokenRole(['ops-read']))));
    expect(err).toMatchObject({ status: 502, code: 'upstream_unavailable' });
    expect(ms).toBeLessThan(TIMEOUT_MS + 1500);
  });

  test('headers, then nothing, during revocation: retryable, at the deadline', async () => {
    const req = request(tokenRole(['ops-read']));
    const res = await p.issue(req);
    front.on(REVOKE, stallBody('application/json', '{'));
    const { ms, err } = await timed(p.revoke(leaseOf(req, res)));
    expect(err).toBeInstanceOf(RetryableUpstreamError);
    expect(err.code).toBe('upstream_unavailable');
    expect(ms).toBeLessThan(TIMEOUT_MS + 1500);
    expect(emu.isTokenValid(res.credentials.token as string)).toBe(true);
    front.clear();
    await p.revoke(leaseOf(req, res));
    expect(emu.isTokenValid(res.credentials.token as string)).toBe(false);
  });

  test('a create Vault carried out but whose answer never came: the token it made lives only issueTtlSeconds', async () => {
    const before = new Set(emu.state.tokens.keys());
    front.on(CREATE, stallBody('application/json', '{'), { forwardFirst: true });
    const { err } = await timed(p.issue(request(tokenRole(['ops-read']))));
    expect(err).toMatchObject({ status: 502, code: 'upstream_unavailable' });
    const made = [...emu.state.tokens.entries()].filter(([k]) => !before.has(k)).map(([, t]) => t);
    expect(made).toHaveLength(1);
    expect(made[0]).toMatchObject({ creationTtl: 60 });
  });
});

describe('a Vault answer too large to be one', () => {
  test('100 MiB: the provider stops reading early and fails 502, holding no more than the cap', async () => {
    let sent = 0;
    let done = false;
    front.on(CREATE, (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      const chunk = Buffer.alloc(1 << 20, 0x20);
      const write = () => {
        while (!res.destroyed && sent < 100) {
          sent++;
          if (!res.write(chunk)) return void res.once('drain', write);
        }
        if (!res.destroyed) res.end('{}');
        done = true;
      };
      res.on('close', () => (done = true));
      write();
    });
    const err = await rejection(p.issue(request(tokenRole(['ops-read']))));
    expect(err).toMatchObject({ status: 502, code: 'upstream_error' });
    await new Promise((r) => setTimeout(r, 200));
    expect(done).toBe(true);
    // The cap is 4 MiB; what the sockets buffered on both sides on top of that is a few MiB more at most.
    expect(sent).toBeLessThan(20);
  });

  test('providers.vault.maxAnswerBytes: 4 MiB unless set; an answer over a configured cap fails, the same answer under the default does not', async () => {
    const { vaultSettingsSchema } = await import('../../../src/providers/vault/config.ts');
    const { makeClient } = await import('../../../src/providers/vault/client.ts');
    const parse = (extra: object) => vaultSettingsSchema.safeParse({ auth: { token: 't' }, ...extra });
    expect(parse({}).data?.maxAnswerBytes).toBe(4 * 1024 * 1024);
    expect(parse({ maxAnswerBytes: 1024 }).success).toBe(false);
    expect(parse({ maxAnswerBytes: 64 * 1024 * 1024 }).success).toBe(false);
    // 200 KiB of whitespace around a valid answer: a plugin's large secret.
    front.on(
      (req) => req.url!.startsWith('/v1/big/secret'),
      (_req, res) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(`${' '.repeat(200 * 1024)}{"data":{"v":"x"}}`);
      },
    );
    const settings = (extra: object) => ({
      ...parse({ address: front.url, requestTimeoutMs: TIMEOUT_MS, ...extra }).data!,
      namespace: undefined,
    });
    await expect(makeClient(settings({}), brokerToken).read('big/secret')).resolves.toMatchObject({ data: { v: 'x' } });
    await expect(makeClient(settings({ maxAnswerBytes: 64 * 1024 }), brokerToken).read('big/secret')).rejects.toMatchObject({
      code: 'ERR_VAULT_ANSWER_TOO_LARGE',
    });
  });
});

describe('a Vault error that echoes what the broker sent', () => {
  /** Answers 400 with an error naming `echo(req, body)`, as a proxy or plugin repeating its input might. */
  const echoing =
    (echo: (req: IncomingMessage, body: string) => string) =>
    (req: IncomingMessage, res: import('node:http').ServerResponse, body: Buffer) => {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [`bad request from ${echo(req, body.toString('utf8'))}`] }));
    };
  const everything = (err: Error) =>
    JSON.stringify({ m: err.message, c: String(err.cause), cm: (err.cause as Error)?.message, s: err.stack });

  test('the X-Vault-Token: kept out of the error and its cause (what the log gets)', async () => {
    front.on(
      CREATE,
      echoing((req) => `token ${String(req.headers['x-vault-token'])}`),
    );
    const err = await rejection(p.issue(request(tokenRole(['ops-read']))));
    expect(err).toMatchObject({ status: 502, code: 'upstream_error' });
    expect(everything(err)).toContain('bad request from token');
    expect(everything(err)).not.toContain(brokerToken);
  });

  test('the AppRole secret-id at login: kept out of the startup error', async () => {
    const { roleId, secretId } = emu.createAppRole({ name: 'echoed', policies: ['jit-broker'] });
    front.on(
      (req) => req.url!.startsWith('/v1/auth/approle/login'),
      echoing((_req, body) => body),
    );
    const err = await rejection(
      provider(approleSettings({ url: front.url } as VaultEmulator, roleId, secretId, { requestTimeoutMs: TIMEOUT_MS })),
    );
    expect(everything(err)).toContain(roleId);
    expect(everything(err)).not.toContain(secretId);
  });
});

describe('a proxy in front of Vault that echoes what it got', () => {
  test('its own Proxy-Authorization, the Basic credentials of the address and the token, percent-encoded in lower case: all scrubbed', async () => {
    // The address's user-info goes to the proxy as Basic authorization; a password whose base64 ends in `=`.
    const password = 'Pr0xy p@ss!';
    const basic = Buffer.from(`corp:${password}`).toString('base64');
    const proxyOwn = Buffer.from('upstream-proxy:An0ther-Secret').toString('base64');
    const token = 'hvs.CAESIJ-echoed_token+with/chars=';
    const lower = (s: string) => encodeURIComponent(s).replace(/%[0-9A-F]{2}/g, (m) => m.toLowerCase());
    front.on(CREATE, (req, res) => {
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({
          errors: [
            `denied https://vault.corp/v1/auth/token/create?x-vault-token=${lower(token)}&auth=${lower(String(req.headers.authorization))} ` +
              `(Proxy-Authorization: Basic ${proxyOwn})`,
          ],
        }),
      );
    });
    const { boundedRequest } = await import('../../../src/providers/vault/transport.ts');
    const out = await boundedRequest({})({
      method: 'POST',
      uri: `${front.url.replace('://', `://corp:${encodeURIComponent(password)}@`)}/v1/auth/token/create-orphan`,
      headers: { 'X-Vault-Token': token },
      json: { policies: ['x'] },
    });
    const text = JSON.stringify(out.body);
    expect(out.statusCode).toBe(400);
    expect(text).toContain('denied https://vault.corp/v1/auth/token/create');
    for (const secret of [token, lower(token), encodeURIComponent(token), basic, lower(basic), proxyOwn, password])
      expect(text).not.toContain(secret);
  });
});
