/**
 * Contract section 2 (config keys and defaults), checked against the contract's
 * own text: the example block exactly as published, and the limits' defaults.
 */
import { validateConfig } from '../../src/config/load.ts';
import { parse as parseYaml } from 'yaml';
import { TestIssuer } from '../helpers/identity.ts';
import { pino } from 'pino';
import { call, startTestBroker } from '../helpers/broker.ts';

const env = { AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE', AWS_SECRET_ACCESS_KEY: 'secret', VAULT_TOKEN: 'hvs.example' };

// biome-ignore-start lint/suspicious/noTemplateCurlyInString: the config's own ${VAR} syntax
/** Contract section 2's example, verbatim (comments included). */
const CONTRACT_EXAMPLE = `
server:
  port: 8080
  publicUrl: http://127.0.0.1:8080      # the \`iss\` of tokens the broker mints
redis:                                  # exactly one of url | cluster | sentinel (section 8)
  url: redis://127.0.0.1:6379           # one node; rediss:// for TLS; user:password in the URL via \${VAR}
  # cluster:  { nodes: [redis://10.0.0.1:6379, redis://10.0.0.2:6379] }
  # sentinel: { name: mymaster, sentinels: [redis://10.0.0.5:26379], password: \${REDIS_PASSWORD}, sentinelPassword: \${SENTINEL_PASSWORD} }
  prefix: jit                           # every Redis key and BullMQ queue lives under this prefix
trust:                                  # who may present a workload identity
  - name: example-org
    kind: spiffe                        # spiffe | oidc
    trustDomain: example.org            # spiffe only
    issuer: https://issuer.example      # oidc only: exact \`iss\`
    audiences: [jit-broker]             # the token's \`aud\` must contain one of these
    jwks: { file: ./dev/example-org.jwks.json }   # or { uri: https://... } or { keys: [ ...JWKs ] }
orchestrators:                          # identity patterns that may open and complete tasks
  - spiffe://example.org/orchestrator/*
admins:                                 # identity patterns that may use /v1/admin and read any task
  - spiffe://example.org/ops/*
policies: ./config/policies             # directory of *.cedar files (section 6)
roles:
  tickets-api:
    provider: jwt
    audience: https://tickets.internal
    maxTtlSeconds: 900
  reports-bucket:
    provider: aws
    roleArn: arn:aws:iam::123456789012:role/agent-reports
    maxTtlSeconds: 3600
  orders-db:
    provider: vault
    path: database/creds/orders-readonly          # a dynamic secret, revoked by its Vault lease
  vault-ops:
    provider: vault
    token: { policies: [ops-read, ops-write] }   # a child token; requests may narrow the policies
  prod-deploy:
    provider: jwt
    audience: https://deploy.internal
    approval: required                           # credential requests wait for an approver
approvers:                              # identity patterns that may approve or reject
  - spiffe://example.org/ops/*
providers:                              # connection settings per upstream kind
  aws:
    region: us-east-1
    endpoint: http://127.0.0.1:4566      # optional: an STS/IAM-compatible endpoint (LocalStack); default AWS
    credentials:                         # optional: the broker's own keys; default the AWS SDK's chain
      accessKeyId: \${AWS_ACCESS_KEY_ID}
      secretAccessKey: \${AWS_SECRET_ACCESS_KEY}
    revocation: iam-deny                 # iam-deny (default) | none
  vault:
    address: http://127.0.0.1:8200
    namespace: team-a                    # optional
    auth:                                # one of:
      token: \${VAULT_TOKEN}
      # approle: { roleId: ..., secretId: \${VAULT_SECRET_ID} }   (or secretIdFile: /path)
`;
// biome-ignore-end lint/suspicious/noTemplateCurlyInString: the config's own ${VAR} syntax

test("the contract's example config loads exactly as published (a spiffe entry may name its issuer)", () => {
  const c = validateConfig(parseYaml(CONTRACT_EXAMPLE), env, 'broker.yaml');
  expect(c.trust[0]).toMatchObject({ name: 'example-org', kind: 'spiffe', trustDomain: 'example.org', issuer: 'https://issuer.example' });
  expect(c.redis).toMatchObject({ url: 'redis://127.0.0.1:6379', prefix: 'jit' });
});

test('every limit of section 2 defaults to the contract value', () => {
  const c = validateConfig(parseYaml(CONTRACT_EXAMPLE), env, 'broker.yaml');
  expect(c.server.rateLimit).toMatchObject({
    perSecond: 50,
    burst: 100,
    introspect: { perSecond: 1000, burst: 2000 },
    unauthenticated: { perSecond: 20, burst: 40 },
  });
  expect(c.tasks).toMatchObject({ maxSubtasks: 50, maxLeases: 1000, maxPendingApprovals: 20 });
  expect(c.providers.jwt.publishLeadSeconds).toBe(90);
  expect(c.audit.retention).toEqual({ maxAgeDays: 30, maxRecords: 10_000_000 });
  expect(c.audit.export.file).toBe('./data/audit.jsonl');
  expect((c.providers.aws as { revocation: string }).revocation).toBe('iam-deny');
});

describe('a spiffe trust entry with an issuer (the contract example): "oidc only", so ignored, with a warning', () => {
  test('JWT-SVIDs with any iss, or none, are accepted; startup warns that the key is ignored', async () => {
    const issuer = new TestIssuer();
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (l: string) => lines.push(l) });
    const t = await startTestBroker('contract-spiffe-iss', {
      issuer,
      broker: { logger },
      config: {
        trust: [
          {
            name: 'dev',
            kind: 'spiffe',
            trustDomain: 'dev.local',
            issuer: 'https://issuer.example',
            audiences: ['jit-broker'],
            jwks: { keys: issuer.bundle().keys },
          },
        ],
      },
    });
    try {
      const as = (claims: Record<string, unknown>) => ({ authorization: `Bearer ${issuer.svid('/ops/alice', { claims })}` });
      expect((await call(t.url, 'GET', '/v1/tasks', as({}))).status).toBe(200);
      expect((await call(t.url, 'GET', '/v1/tasks', as({ iss: 'https://elsewhere.example' }))).status).toBe(200);
      expect(lines.some((l) => l.includes('sets issuer: ignored'))).toBe(true);
    } finally {
      await t.close();
    }
  });
});
