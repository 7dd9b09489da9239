import { ConsoleSessionStore } from '../../src/console/sessions.ts';
import { Keys } from '../../src/redis/keys.ts';
import { type AwsEmulator, startAwsEmulator } from '../emulators/aws/index.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { freePort } from '../console/stack.ts';

/** An OIDC issuer nobody listens on: console sign-in discovery is lazy and fails cleanly. */
export const IDP = 'http://127.0.0.1:9';
const CLIENT_ID = 'jit-console';

/** A broker with every router mounted: the console and the AWS provider (against the AWS emulator). */
export interface FullBroker {
  t: TestBroker;
  emu: AwsEmulator;
  url: string;
  publicUrl: string;
  /** A console session for `<IDP>#<sub>` (put in the store directly, as after a sign-in); the Cookie header value. */
  session(sub: string): Promise<string>;
  close(): Promise<void>;
}

export async function startFullBroker(name: string): Promise<FullBroker> {
  const emu = await startAwsEmulator();
  const user = emu.createUser('jit-broker');
  const role = emu.createRole('agent-reports', { maxSessionDuration: 3600, trust: [user.arn] });
  const issuer = new TestIssuer();
  const port = await freePort();
  const publicUrl = `http://127.0.0.1:${port}`;
  let t: TestBroker;
  try {
    t = await startTestBroker(name, {
      issuer,
      config: {
        server: { port, publicUrl },
        trust: [
          { name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } },
          { name: 'people', kind: 'oidc', issuer: IDP, audiences: [CLIENT_ID], jwks: { keys: [issuer.jwks().keys[0]] } },
        ],
        admins: ['spiffe://dev.local/ops/*', `${IDP}#admin`],
        approvers: ['spiffe://dev.local/ops/*', `${IDP}#admin`],
        console: { issuer: IDP, clientId: CLIENT_ID },
        providers: {
          aws: {
            region: 'us-east-1',
            endpoint: emu.url,
            userName: user.userName,
            credentials: { accessKeyId: user.accessKeyId, secretAccessKey: user.secretAccessKey },
            retryBaseDelayMs: 5,
            requestTimeoutMs: 2000,
          },
        },
        roles: {
          'tickets-api': {
            provider: 'jwt',
            audience: 'https://tickets.internal',
            maxTtlSeconds: 900,
            scopes: ['tickets:read', 'tickets:write'],
          },
          'prod-deploy': { provider: 'jwt', audience: 'https://deploy.internal', maxTtlSeconds: 300, approval: 'required' },
          'reports-bucket': { provider: 'aws', roleArn: role.arn, maxTtlSeconds: 3600 },
        },
      },
    });
  } catch (err) {
    await emu.stop();
    throw err;
  }
  const store = new ConsoleSessionStore({ redis: t.broker.deps.redis, keys: new Keys(t.prefix) });
  return {
    t,
    emu,
    url: t.url,
    publicUrl,
    async session(sub) {
      const expiresAt = Date.now() + 600_000;
      const cookie = await store.create({
        identity: { id: `${IDP}#${sub}`, trust: 'people', kind: 'oidc', claims: { iss: IDP, sub }, exp: Math.floor(expiresAt / 1000) },
        createdAt: Date.now(),
        expiresAt,
      });
      return `jit-console-${port}=${cookie}`;
    },
    async close() {
      await t.close();
      await emu.stop();
    },
  };
}
