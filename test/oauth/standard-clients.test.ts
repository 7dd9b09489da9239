import { createServer } from 'node:net';
import * as oauth from 'oauth4webapi';
import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * The OAuth surface driven by a standard client (oauth4webapi): RFC 8414 discovery, RFC 8693 exchange
 * with the advertised client authentication, RFC 9068 validation of the token against the advertised
 * JWKS, RFC 7662 introspection. And the metadata says only what the broker does: it advertised
 * `token_endpoint_auth_signing_alg_values_supported` (the algorithms for private_key_jwt /
 * client_secret_jwt client assertions, RFC 8414 section 2) while accepting no client assertion at all
 * (`token_endpoint_auth_methods_supported: ["none"]`): it was the broker's own token signing algorithm.
 */
let t: TestBroker;
let as: oauth.AuthorizationServer;
const agentId = `spiffe://dev.local${AGENT}`;
const insecure = { [oauth.allowInsecureRequests]: true } as const;

/** A port free now, so that server.publicUrl (the issuer) can name the port the broker listens on. */
const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });

beforeAll(async () => {
  const port = await freePort();
  t = await startTestBroker('oauth-standard-clients', { config: { server: { port, publicUrl: `http://127.0.0.1:${port}` } } });
  const issuer = new URL(t.url);
  as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure }));
  const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 't-std',
    agent: agentId,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }],
  });
  expect(r.status).toBe(201);
});
afterAll(async () => {
  await t?.close();
});

test('the metadata advertises no client-assertion signing algorithms, as it accepts no client assertion', () => {
  const methods = as.token_endpoint_auth_methods_supported ?? [];
  expect(methods).toEqual(['none']);
  const assertions = methods.some((m) => m === 'private_key_jwt' || m === 'client_secret_jwt');
  expect(assertions).toBe(false);
  expect(as.token_endpoint_auth_signing_alg_values_supported).toBeUndefined();
});

test('exchange, RFC 9068 validation and introspection with oauth4webapi', async () => {
  const client: oauth.Client = { client_id: agentId };
  const res = await oauth.genericTokenEndpointRequest(
    as,
    client,
    oauth.None(),
    'urn:ietf:params:oauth:grant-type:token-exchange',
    {
      subject_token: t.issuer.svid(AGENT),
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      audience: 'tickets-api',
      task_id: 't-std',
      scope: 'tickets:read',
    },
    insecure,
  );
  expect(res.headers.get('cache-control')).toBe('no-store');
  const tok = await oauth.processGenericTokenEndpointResponse(as, client, res);
  expect(tok).toMatchObject({ token_type: 'bearer', scope: 'tickets:read' });

  const request = new Request('https://tickets.internal/x', { headers: { authorization: `Bearer ${tok.access_token}` } });
  const claims = await oauth.validateJwtAccessToken(as, request, 'https://tickets.internal', insecure);
  expect(claims).toMatchObject({ iss: as.issuer, sub: agentId, client_id: agentId, task_id: 't-std', scope: 'tickets:read' });

  // The introspection endpoint's advertised method is the caller's workload identity as a bearer token.
  expect(as.introspection_endpoint_auth_methods_supported).toEqual(['bearer']);
  const bearer: oauth.ClientAuth = (_as, _client, _body, headers) => {
    headers.set('authorization', t.as('/resource/tickets').authorization);
  };
  const ir = await oauth.introspectionRequest(as, { client_id: 'rs' }, bearer, tok.access_token, insecure);
  expect(await oauth.processIntrospectionResponse(as, { client_id: 'rs' }, ir)).toMatchObject({ active: true, task_id: 't-std' });
});
