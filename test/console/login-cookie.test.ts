import { encodePendingLogin } from '../../src/console/pending-login.ts';
import { startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { CLIENT_ID, freePort, type Idp, startIdp } from './stack.ts';

/**
 * Red team (login CSRF by cookie tossing): the sign-in cookie carries the PKCE verifier and state of a sign-in. As
 * `__Secure-jit-console-login` (Path=/console/callback) a sibling subdomain could set one of its own for the parent
 * domain (a sign-in the attacker started and finished at the provider as itself), then send the victim to the
 * callback with the attacker's code: the victim was signed into the attacker's session. Over https it is now a
 * `__Host-` cookie, which a browser takes only from this origin (Secure, Path=/, no Domain), and only that name is read.
 */
const PUBLIC = 'https://broker.example';
let t: TestBroker;
let idp: Idp;
let url: string;

beforeAll(async () => {
  idp = await startIdp({ redirectUri: `${PUBLIC}/console/callback` });
  const port = await freePort();
  const issuer = new TestIssuer();
  t = await startTestBroker('console-login-cookie', {
    issuer,
    config: {
      server: { port, publicUrl: PUBLIC },
      trust: [
        { name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } },
        { name: 'people', kind: 'oidc', issuer: idp.issuer, audiences: [CLIENT_ID], jwks: { keys: idp.publicJwks.keys } },
      ],
      console: { issuer: idp.issuer, clientId: CLIENT_ID },
    },
  });
  url = `http://127.0.0.1:${port}`;
}, 60_000);

afterAll(async () => {
  await t?.close();
  await idp?.close();
});

test('over https the sign-in cookie is a __Host- cookie: Secure, Path=/, no Domain', async () => {
  const login = await fetch(`${url}/console/login`, { redirect: 'manual' });
  expect(login.status).toBe(303);
  expect(new URL(login.headers.get('location')!).origin).toBe(new URL(idp.issuer).origin);
  const cookie = login.headers.getSetCookie().find((c) => c.includes('jit-console-login'));
  expect(cookie).toMatch(/^__Host-jit-console-login=/);
  const attrs = cookie!.split(';').map((a) => a.trim().toLowerCase());
  expect(attrs).toEqual(expect.arrayContaining(['path=/', 'secure', 'httponly', 'samesite=lax']));
  expect(attrs.some((a) => a.startsWith('domain='))).toBe(false);
});

test('a sign-in cookie under any other name (one a sibling subdomain can set) is not read', async () => {
  const pending = encodePendingLogin({ state: 'a'.repeat(43), nonce: 'n'.repeat(43), codeVerifier: 'v'.repeat(43), returnTo: '/console/' });
  const callback = (cookie: string) =>
    fetch(`${url}/console/callback?code=x&state=${'b'.repeat(43)}`, { redirect: 'manual', headers: { cookie } });
  // The tossed cookie is ignored: no sign-in is waiting in this browser.
  for (const name of ['__Secure-jit-console-login', 'jit-console-login'])
    expect((await callback(`${name}=${pending}`)).headers.get('location')).toBe('/console/?signin_error=state_unknown');
  // The broker's own name is read (here: a sign-in for another state).
  expect((await callback(`__Host-jit-console-login=${pending}`)).headers.get('location')).toBe('/console/?signin_error=browser_mismatch');
});
