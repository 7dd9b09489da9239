import { mkdtempSync, readFileSync } from 'node:fs';
import {
  createServer as createHttpServer,
  request as httpRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import type { VaultProvider } from '../../../src/providers/vault/index.ts';
import type { VaultEmulator } from '../../emulators/vault/index.ts';
import { startVaultEmulator } from '../../emulators/vault/index.ts';
import { generateTlsFiles } from '../../helpers/tls-certs.ts';
import { BROKER_POLICY, leaseOf, provider, rejection, request, tokenRole } from './helpers.ts';

/**
 * What node-vault's axios did that the broker's own transport (transport.ts) must still do, or must not:
 * decode a compressed answer, read VAULT_SKIP_VERIFY as Vault does, keep a proxy's Basic password out of
 * errors, and not send Vault traffic to HTTP_PROXY.
 */
let emu: VaultEmulator;
let brokerToken: string;
const servers: Server[] = [];

/** Forwards every request to the emulator; `answer` writes what the client gets from the emulator's answer. */
async function front(
  answer: (res: ServerResponse, up: { status: number; headers: IncomingMessage['headers']; body: Buffer }, req: IncomingMessage) => void,
  tls?: { cert: Buffer; key: Buffer },
): Promise<string> {
  const handler = (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const up = httpRequest(new URL(req.url!, emu.url), { method: req.method, headers: req.headers }, (r) => {
        const out: Buffer[] = [];
        r.on('data', (c: Buffer) => out.push(c));
        r.on('end', () => answer(res, { status: r.statusCode!, headers: r.headers, body: Buffer.concat(out) }, req));
      });
      up.end(Buffer.concat(chunks));
    });
  };
  const server = tls ? createHttpsServer(tls, handler) : createHttpServer(handler);
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return `${tls ? 'https' : 'http'}://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

const passThrough = (res: ServerResponse, up: { status: number; headers: IncomingMessage['headers']; body: Buffer }) => {
  res.writeHead(up.status, { 'content-type': 'application/json' });
  res.end(up.body);
};

beforeAll(async () => {
  emu = await startVaultEmulator({ policies: { 'jit-broker': BROKER_POLICY, 'ops-read': ['secret/ops/*'] } });
  brokerToken = emu.createToken({ policies: ['jit-broker', 'ops-read'] }).token;
});
afterAll(async () => {
  for (const s of servers) {
    s.closeAllConnections();
    await new Promise<void>((r) => s.close(() => r()));
  }
  await emu.stop();
});

const open = (address: string) => provider({ address, requestTimeoutMs: 2000, auth: { token: brokerToken } } as never);

describe('a compressed answer (a proxy compressing what Vault sent)', () => {
  let p: VaultProvider;
  beforeAll(async () => {
    const url = await front((res, up) => {
      res.writeHead(up.status, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
      res.end(up.status === 204 ? undefined : gzipSync(up.body));
    });
    p = await open(url);
  });
  afterAll(() => p.close());

  test('a gzip token: issued as if it came plain', async () => {
    const res = await p.issue(request(tokenRole(['ops-read'])));
    expect(emu.isTokenValid(res.credentials.token as string)).toBe(true);
  });

  test('a gzip 400 "invalid accessor" at revocation: the token is known gone, as uncompressed', async () => {
    const req = request(tokenRole(['ops-read']));
    const res = await p.issue(req);
    emu.revokeToken(res.credentials.token as string);
    await expect(p.revoke(leaseOf(req, res))).resolves.toBeUndefined();
  });
});

describe('an error echoing the Basic authorization of a user-info address', () => {
  test('neither the password nor its Basic header reaches the error', async () => {
    const url = await front((res, up, req) => {
      if (!req.url!.startsWith('/v1/auth/token/create-orphan')) return passThrough(res, up);
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(
        JSON.stringify({ errors: [`proxy refused ${req.headers.authorization}; raw ${String(req.headers.authorization).slice(6)}`] }),
      );
    });
    const withUser = url.replace('http://', 'http://vault-proxy:s3cr%40t-pw@');
    const p = await open(withUser);
    try {
      const err = await rejection(p.issue(request(tokenRole(['ops-read']))));
      const all = JSON.stringify({ m: err.message, c: (err.cause as Error)?.message });
      expect(all).toContain('proxy refused');
      expect(all).not.toContain(Buffer.from('vault-proxy:s3cr@t-pw').toString('base64'));
      expect(all).not.toContain('s3cr');
    } finally {
      await p.close();
    }
  });
});

describe('VAULT_SKIP_VERIFY, read as Vault reads it', () => {
  let url: string;
  const before = process.env.VAULT_SKIP_VERIFY;
  beforeAll(async () => {
    // A certificate from a CA this process does not trust (no NODE_EXTRA_CA_CERTS for it).
    const files = generateTlsFiles(mkdtempSync(join(tmpdir(), 'vault-tls-')));
    url = await front(passThrough, { cert: readFileSync(files.certFile), key: readFileSync(files.keyFile) });
  });
  afterEach(() => {
    if (before === undefined) delete process.env.VAULT_SKIP_VERIFY;
    else process.env.VAULT_SKIP_VERIFY = before;
  });

  test.each(['false', '0', 'no'])('%s: the certificate is still checked (an untrusted one fails)', async (value) => {
    process.env.VAULT_SKIP_VERIFY = value;
    // The provider starts (a TLS failure is retried in the background); a credential fails on the certificate.
    const p = await open(url);
    try {
      const err = await rejection(p.issue(request(tokenRole(['ops-read']))));
      expect(err).toMatchObject({ status: 502, code: 'upstream_unavailable' });
      expect(String((err.cause as Error | undefined)?.message)).toMatch(/certificate/i);
    } finally {
      await p.close();
    }
  });

  test('true: not checked (as before)', async () => {
    process.env.VAULT_SKIP_VERIFY = 'true';
    const p = await open(url);
    await p.close();
  });
});

describe('HTTP_PROXY (decision: not read; docs/providers/vault.md)', () => {
  test('Vault calls go to the address, never to the proxy the environment names', async () => {
    const seen: string[] = [];
    const proxy = createHttpServer((req, res) => {
      seen.push(`${req.method} ${req.url}`);
      res.writeHead(502);
      res.end();
    });
    servers.push(proxy);
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const saved = { HTTP_PROXY: process.env.HTTP_PROXY, http_proxy: process.env.http_proxy, NO_PROXY: process.env.NO_PROXY };
    process.env.HTTP_PROXY = process.env.http_proxy = `http://127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    delete process.env.NO_PROXY;
    try {
      // localhost, not 127.0.0.1: some clients never proxy a literal loopback address.
      const p = await open(emu.url.replace('127.0.0.1', 'localhost'));
      await p.issue(request(tokenRole(['ops-read'])));
      await p.close();
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
    expect(seen).toEqual([]);
  });
});
