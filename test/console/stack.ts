import { type ChildProcess, spawn } from 'node:child_process';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

export const CLIENT_ID = 'jit-console';

/** A free TCP port on 127.0.0.1 (the broker's publicUrl must be known before it starts: it is the redirect URI). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

/** A real OIDC provider (scripts/dev-idp.ts: node-oidc-provider with its dev login form) in its own process. */
export interface Idp {
  issuer: string;
  publicJwks: { keys: Record<string, unknown>[] };
  close(): Promise<void>;
}

export async function startIdp(opts: { redirectUri: string; idTokenTtlSeconds?: number; clientSecret?: string }): Promise<Idp> {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const meta = { kid: randomUUID(), alg: 'RS256', use: 'sig' };
  const dir = mkdtempSync(join(tmpdir(), 'jit-idp-'));
  const file = join(dir, 'idp.json');
  writeFileSync(
    file,
    JSON.stringify({
      port: 0,
      privateJwks: { keys: [{ ...privateKey.export({ format: 'jwk' }), ...meta }] },
      clients: [{ clientId: CLIENT_ID, redirectUris: [opts.redirectUri], clientSecret: opts.clientSecret }],
      idTokenTtlSeconds: opts.idTokenTtlSeconds,
    }),
  );
  const child: ChildProcess = spawn(process.execPath, ['scripts/dev-idp.ts'], {
    env: { ...process.env, DEV_IDP_CONFIG: file },
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const issuer = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('dev-idp did not start within 15 s')), 15_000);
    child.once('exit', (code) => reject(new Error(`dev-idp exited with ${code}`)));
    createInterface({ input: child.stdout! }).once('line', (line) => {
      clearTimeout(timer);
      resolve((JSON.parse(line) as { issuer: string }).issuer);
    });
  });
  return {
    issuer,
    publicJwks: { keys: [{ ...publicKey.export({ format: 'jwk' }), ...meta }] },
    close: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

export interface ConsoleStack {
  t: TestBroker;
  idp: Idp;
  /** The broker's base URL (= server.publicUrl). */
  url: string;
  /** `<issuer>#<login>`: the identity a person signing in as `login` gets. */
  person(login: string): string;
  close(): Promise<void>;
}

/**
 * A broker with the console, and the provider its people sign in with:
 * `admin` is admin and approver, `approver` only approver, anyone else neither.
 */
export async function startConsoleStack(
  name: string,
  opts: { idTokenTtlSeconds?: number; clientSecret?: string; console?: Record<string, unknown> } = {},
): Promise<ConsoleStack> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const idp = await startIdp({ redirectUri: `${url}/console/callback`, ...opts });
  const person = (login: string) => `${idp.issuer}#${login}`;
  const issuer = new TestIssuer();
  try {
    const t = await startTestBroker(name, {
      issuer,
      config: {
        server: { port, publicUrl: url },
        trust: [
          { name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } },
          { name: 'people', kind: 'oidc', issuer: idp.issuer, audiences: [CLIENT_ID], jwks: { keys: idp.publicJwks.keys } },
        ],
        admins: ['spiffe://dev.local/ops/*', person('admin')],
        approvers: ['spiffe://dev.local/ops/*', person('admin'), person('approver')],
        console: {
          issuer: idp.issuer,
          clientId: CLIENT_ID,
          ...(opts.clientSecret ? { clientSecret: opts.clientSecret } : {}),
          ...opts.console,
        },
      },
    });
    return {
      t,
      idp,
      url,
      person,
      async close() {
        await t.close();
        await idp.close();
      },
    };
  } catch (err) {
    await idp.close();
    throw err;
  }
}
