import { mkdtempSync, readFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createVaultProvider } from '../../../src/providers/vault/index.ts';
import type { VaultEmulator } from '../../emulators/vault/index.ts';
import { startVaultEmulator } from '../../emulators/vault/index.ts';
import { capturingLogger } from '../../helpers/log-capture.ts';
import { generateTlsFiles } from '../../helpers/tls-certs.ts';
import { approleSettings, BROKER_POLICY, ctx, provider, rejection } from './helpers.ts';
import { freePort } from '../../helpers/redis-topology.ts';

/**
 * The broker's first Vault login failing: the startup error (or the log line, for an outage or an untrusted
 * certificate, which are retried) says what happened. Every non-outage failure used to read "Vault refused the broker's credentials", a certificate
 * problem and a redirect included.
 */
let emu: VaultEmulator;
let roleId: string;
let secretId: string;
const servers: Server[] = [];

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void, tls?: { cert: Buffer; key: Buffer }): Promise<string> {
  const server = tls ? createHttpsServer(tls, handler) : createHttpServer(handler);
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return `${tls ? 'https' : 'http'}://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

beforeAll(async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY } });
  ({ roleId, secretId } = emu.createAppRole({ name: 'jit-broker', policies: ['jit-broker'] }));
});
afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
  await emu.stop();
});

const start = (address: string, extra: Record<string, unknown> = {}) =>
  rejection(provider(approleSettings({ url: address } as VaultEmulator, roleId, secretId, { requestTimeoutMs: 500, ...extra })));

test('a certificate the broker does not trust: the broker starts (retrying), and the error log names TLS and the address, not a refusal', async () => {
  const files = generateTlsFiles(mkdtempSync(join(tmpdir(), 'vault-first-login-')));
  const url = await serve((_req, res) => res.end('{}'), { cert: readFileSync(files.certFile), key: readFileSync(files.keyFile) });
  const { logger, lines } = capturingLogger();
  // It used to stop the whole broker (a ConfigError): Vault's certificate may be fixed on Vault's side, without a restart.
  const p = await createVaultProvider(approleSettings({ url } as VaultEmulator, roleId, secretId, { requestTimeoutMs: 500 }), {
    ...ctx,
    logger,
  });
  await p.close();
  const said = lines.find((l) => String(l.msg).startsWith('vault: first login failed'));
  expect(said?.level).toBe(50);
  expect(String(said?.msg)).toMatch(/no trusted TLS connection to Vault at https:\/\/127\.0\.0\.1:\d+ \(/);
  expect(String(said?.msg)).toMatch(/NODE_EXTRA_CA_CERTS/);
  expect(String(said?.msg)).toMatch(/retrying in the background/);
  expect(String(said?.msg)).not.toMatch(/refused the broker's credentials/);
});

test('a redirect: says so, and what to set', async () => {
  const url = await serve((req, res) => {
    res.writeHead(307, { location: `https://elsewhere.example${req.url}` });
    res.end();
  });
  const err = await start(url);
  expect(err.message).toMatch(/providers\.vault\.address: Vault at http:\/\/127\.0\.0\.1:\d+ answered a redirect \(307\)/);
  expect(err.message).not.toMatch(/refused the broker's credentials/);
});

test('a real refusal (a secret-id Vault does not know) is still one', async () => {
  const err = await rejection(provider(approleSettings(emu, roleId, 'not-the-secret-id')));
  expect(err.message).toMatch(/^config providers\.vault\.auth: Vault refused the broker's credentials: /);
});

test.each([
  ['unreachable', async () => `http://127.0.0.1:${await freePort()}`, /is unreachable: ECONNREFUSED/],
  ['timeout', () => serve(() => {}), /did not answer within requestTimeoutMs: ETIMEDOUT/],
])('%s: the broker starts (not ready) and the warning says so', async (_name, address, says) => {
  const { logger, lines } = capturingLogger();
  const url = await address();
  const p = await createVaultProvider(approleSettings({ url } as VaultEmulator, roleId, secretId, { requestTimeoutMs: 300 }), {
    ...ctx,
    logger,
  });
  await p.close();
  const warning = lines.find((l) => String(l.msg).startsWith('vault: first login failed'));
  expect(String(warning?.msg)).toMatch(says);
});

test.each([
  ['a query string', 'https://vault.example:8200/?x=1'],
  ['a fragment', 'https://vault.example:8200/#v1'],
  ['another scheme', 'ftp://vault.example:8200/'],
])('an address with %s is a config error at startup, not a broken path on every call', async (_name, address) => {
  const err = await start(address);
  expect(err.message).toMatch(/^config providers\.vault\.address: /);
  expect(err.message).toMatch(/http\(s\) URL without a query or fragment/);
});

test('VAULT_SKIP_VERIFY turning certificate checks off is logged at startup, once', async () => {
  const files = generateTlsFiles(mkdtempSync(join(tmpdir(), 'vault-skip-verify-')));
  const url = await serve((_req, res) => res.end('{}'), { cert: readFileSync(files.certFile), key: readFileSync(files.keyFile) });
  const before = process.env.VAULT_SKIP_VERIFY;
  process.env.VAULT_SKIP_VERIFY = 'true';
  try {
    const { logger, lines } = capturingLogger();
    await createVaultProvider(approleSettings({ url } as VaultEmulator, roleId, secretId, { requestTimeoutMs: 300 }), { ...ctx, logger })
      .then((p) => p.close())
      .catch(() => undefined);
    const warned = lines.filter((l) => String(l.msg).includes('VAULT_SKIP_VERIFY'));
    expect(warned).toHaveLength(1);
    expect(String(warned[0]!.msg)).toMatch(/certificate checks are off/);
  } finally {
    if (before === undefined) delete process.env.VAULT_SKIP_VERIFY;
    else process.env.VAULT_SKIP_VERIFY = before;
  }
});
