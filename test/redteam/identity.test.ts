import { randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/**
 * Red team: workload identities as the contract names them (section "Words
 * used below"): "an OIDC ID token (kind: oidc, e.g. a Kubernetes projected
 * service-account token or a CI provider's OIDC token)", carried on every
 * /v1 call. Kubernetes (1.29+) puts a `jti` in projected tokens and rotates
 * the file hourly; GitHub Actions tokens carry a `jti` too. The broker once
 * treated any token with a `jti` as single-use, so such a workload was refused
 * from its second call on; single use is now opt-in per trust entry
 * (`singleUse: true`).
 */
const K8S = 'https://kubernetes.default.svc.cluster.local';
const issuer = new TestIssuer();
let t: TestBroker;

beforeAll(async () => {
  // Policy is not what is tested here: permit everything the broker's own checks allow.
  const policies = mkdtempSync(join(tmpdir(), 'rt-policies-'));
  writeFileSync(join(policies, 'all.cedar'), 'permit (principal, action, resource);\n');
  t = await startTestBroker('rt-identity', {
    issuer,
    config: {
      trust: [
        { name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: issuer.bundle().keys } },
        { name: 'k8s', kind: 'oidc', issuer: K8S, audiences: ['jit-broker'], jwks: { keys: issuer.jwks().keys } },
      ],
      orchestrators: [`${K8S}#system:serviceaccount:ci:orchestrator`],
      policies,
    },
  });
});
afterAll(async () => {
  await t.close();
});

/** What the kubelet writes into a pod's projected token file (claims as Kubernetes 1.29+ issues them). */
function projectedToken(sa: string): string {
  const now = Math.floor(Date.now() / 1000);
  return issuer.signRaw(
    { alg: 'ES256', kid: issuer.kid, typ: 'JWT' },
    {
      iss: K8S,
      sub: `system:serviceaccount:ci:${sa}`,
      aud: ['jit-broker'],
      exp: now + 3600,
      iat: now,
      nbf: now,
      jti: randomUUID(),
      'kubernetes.io': { namespace: 'ci', serviceaccount: { name: sa, uid: randomUUID() } },
    },
  );
}

test('a Kubernetes projected service-account token works for more than one call', async () => {
  const token = projectedToken('orchestrator');
  const headers = { authorization: `Bearer ${token}` };
  const opened = await call(t.url, 'POST', '/v1/tasks', headers, {
    taskId: 'rt-k8s-1',
    agent: `${K8S}#system:serviceaccount:ci:agent`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 600,
    grants: [{ role: 'demo-api' }],
  });
  expect(opened.status).toBe(201);
  // The same pod, a second later, with the same token file: reads the task it just opened.
  const read = await call(t.url, 'GET', '/v1/tasks/rt-k8s-1', headers);
  expect({ status: read.status, code: read.body.code }).toEqual({ status: 200, code: undefined });
});
