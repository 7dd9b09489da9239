import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { loadConfig, validateConfig } from '../../src/config/load.ts';
import { ConfigError } from '../../src/errors.ts';

const env = { AWS_ACCESS_KEY_ID: 'AKIAEXAMPLE', AWS_SECRET_ACCESS_KEY: 'secret', VAULT_TOKEN: 'hvs.example' };

test("the contract's example config loads as it is, frozen, with defaults filled in", () => {
  const c = loadConfig(env, 'test/config/contract-example.yaml');
  expect(c.roles['orders-db']).toMatchObject({ provider: 'vault', path: 'database/creds/orders-readonly', maxTtlSeconds: 3600 });
  expect((c.providers.aws as { credentials?: { accessKeyId?: string } } | undefined)?.credentials?.accessKeyId).toBe('AKIAEXAMPLE');
  expect(c.identity.clockSkewSeconds).toBe(30);
  // Tokens are bearer tokens unless a trust entry asks for single use.
  expect(c.trust.map((t) => t.singleUse)).toEqual(c.trust.map(() => false));
  expect(c.secrets.kek).toBeUndefined();
  expect(Object.isFrozen(c.roles)).toBe(true);
  expect(() => {
    (c.server as { port: number }).port = 1;
  }).toThrow();
});

test('PORT, HOST and REDIS_URL override the file', () => {
  const c = loadConfig({ ...env, PORT: '9999', REDIS_URL: 'redis://10.0.0.1:6380', HOST: '0.0.0.0' }, 'test/config/contract-example.yaml');
  expect(c.server).toMatchObject({ port: 9999, host: '0.0.0.0' });
  expect(c.redis.url).toBe('redis://10.0.0.1:6380');
});

const base = () => ({
  server: { publicUrl: 'http://127.0.0.1:8080' },
  redis: { url: 'redis://127.0.0.1:6379' },
  policies: './config/policies',
  trust: [{ name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: [{ kty: 'EC' }] } }],
  roles: { r: { provider: 'jwt', audience: 'x' } },
});

test.each<[string, (c: any) => void, string, RegExp]>([
  [
    'missing env var',
    (c) => {
      // biome-ignore lint/suspicious/noTemplateCurlyInString: the config's own ${VAR} syntax
      c.redis.url = '${NOPE_NOT_SET}';
    },
    'redis.url',
    /NOPE_NOT_SET is not set/,
  ],
  [
    'bad port',
    (c) => {
      c.server.port = 70_000;
    },
    'server.port',
    /./,
  ],
  [
    'unknown key',
    (c) => {
      c.server.colour = 'blue';
    },
    'server.colour',
    /unknown key 'colour'/,
  ],
  [
    // Found by the black-box red team: it matched no workload (only canonical IDs authenticate), so nobody could approve.
    'a non-canonical SPIFFE approver',
    (c) => {
      c.approvers = ['spiffe://dev.local/ops/*', 'SPIFFE://dev.local/ops/alice'];
    },
    'approvers.1',
    /not a canonical SPIFFE ID/,
  ],
  [
    'an admin pattern with an uppercase trust domain',
    (c) => {
      c.admins = ['spiffe://Dev.Local/ops/*'];
    },
    'admins.0',
    /not a canonical SPIFFE ID/,
  ],
  [
    'spiffe without trustDomain',
    (c) => {
      delete c.trust[0].trustDomain;
    },
    'trust.0.trustDomain',
    /required for kind spiffe/,
  ],
  [
    'singleUse not a boolean',
    (c) => {
      c.trust[0].singleUse = 'yes';
    },
    'trust.0.singleUse',
    /./,
  ],
  [
    'oidc without issuer',
    (c) => {
      c.trust[0] = { name: 'o', kind: 'oidc', audiences: ['a'], jwks: { uri: 'https://x/jwks' } };
    },
    'trust.0.issuer',
    /required for kind oidc/,
  ],
  [
    'pattern with a middle wildcard',
    (c) => {
      c.orchestrators = ['spiffe://x/*/y'];
    },
    'orchestrators.0',
    /ends in "\/\*"/,
  ],
  [
    'aws role without providers.aws',
    (c) => {
      c.roles.s3 = { provider: 'aws', roleArn: 'arn:aws:iam::123456789012:role/x' };
    },
    'roles.s3.provider',
    /providers.aws is not configured/,
  ],
  [
    'vault role with both path and token',
    (c) => {
      c.providers = { vault: { auth: { token: 't' } } };
      c.roles.v = { provider: 'vault', path: 'a/b', token: { policies: ['p'] } };
    },
    'roles.v',
    /exactly one of/,
  ],
  [
    'bad role ARN',
    (c) => {
      c.providers = { aws: {} };
      c.roles.s3 = { provider: 'aws', roleArn: 'arn:aws:s3:::bucket' };
    },
    'roles.s3.roleArn',
    /IAM role ARN/,
  ],
  [
    'bad role name',
    (c) => {
      c.roles['bad name'] = { provider: 'jwt', audience: 'x' };
    },
    'roles.bad name',
    /./,
  ],
  [
    // Found by a newcomer: a typo'd target loaded, and its rotation would only have failed at each firing.
    'rotation scheduled for an unknown target',
    (c) => {
      c.rotation = { schedule: { 'signing-keys': 86400 } };
    },
    'rotation.schedule.signing-keys',
    /unknown rotation target.*did you mean 'signing-key'/,
  ],
  [
    'rotation scheduled for a provider that is not configured',
    (c) => {
      c.rotation = { schedule: { vault: 86400 } };
    },
    'rotation.schedule.vault',
    /providers.vault is not configured/,
  ],
  [
    'redis URL scheme',
    (c) => {
      c.redis.url = 'http://x';
    },
    'redis.url',
    /redis:\/\//,
  ],
])('%s fails naming the key', (_n, mutate, path, message) => {
  const raw = base();
  mutate(raw);
  try {
    validateConfig(raw, {}, 'config/x.yaml');
    throw new Error('expected a ConfigError');
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).path).toBe(path);
    expect((err as Error).message).toMatch(message);
    expect((err as Error).message).toContain(path);
  }
});

test('the broker refuses to start on a bad config: message names the key, exit code non-zero, nothing listens', () => {
  const dir = mkdtempSync(join(tmpdir(), 'jit-cfg-'));
  writeFileSync(join(dir, 'bad.yaml'), 'server: { port: 8080, publicUrl: not-a-url }\nredis: { url: redis://127.0.0.1:6379 }\n');
  const r = spawnSync(process.execPath, ['src/main.ts'], {
    env: { ...process.env, BROKER_CONFIG: join(dir, 'bad.yaml') },
    encoding: 'utf8',
    timeout: 15_000,
  });
  expect(r.status).toBe(2);
  expect(r.stderr).toMatch(/config server\.publicUrl: /);
});

describe('ergonomics', () => {
  const minimal = () => ({
    redis: { url: 'redis://127.0.0.1:6379' },
    trust: [{ name: 'd', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: [{ kty: 'EC', kid: 'k' }] } }],
    policies: 'config/policies',
    roles: { r: { provider: 'jwt', audience: 'https://r' } },
  });

  test('PORT without server.publicUrl moves the default publicUrl (the iss of minted tokens) with it', () => {
    expect(validateConfig(minimal(), { PORT: '9100' }, 'x.yaml').server).toMatchObject({ port: 9100, publicUrl: 'http://127.0.0.1:9100' });
    expect(validateConfig(minimal(), {}, 'x.yaml').server.publicUrl).toBe('http://127.0.0.1:8080');
    const set = validateConfig({ ...minimal(), server: { publicUrl: 'https://broker.example/' } }, { PORT: '9100' }, 'x.yaml');
    expect(set.server.publicUrl).toBe('https://broker.example');
  });

  test.each([
    [{ server: { publicURL: 'https://b' } }, 'server.publicURL', "unknown key 'publicURL' (did you mean 'publicUrl'?)"],
    [{ tasks: { maxSubTasks: 3 } }, 'tasks.maxSubTasks', "unknown key 'maxSubTasks' (did you mean 'maxSubtasks'?)"],
    [{ redis: { url: 'redis://h', prefx: 'x' } }, 'redis.prefx', "(did you mean 'prefix'?)"],
    [{ rolse: {} }, 'rolse', "(did you mean 'roles'?)"],
  ])('a typo names the key and what it probably meant: %j', (over, path, message) => {
    let err: ConfigError | undefined;
    try {
      validateConfig({ ...minimal(), ...over }, {}, 'x.yaml');
    } catch (e) {
      err = e as ConfigError;
    }
    expect(err?.path).toBe(path);
    expect(err?.message).toContain(message);
  });

  test.each([0, 1001, 1_000_000])('tasks.maxSubtasks %d is refused: the evidence shows the whole tree, so a tree is bounded', (n) => {
    // 0 was "no bound" and 1,000,000 the most: an evidence page merges every task's audit index in Redis
    // (~100-170 ms of Redis a page at 10,001 tasks), and read every record of the tree whole.
    let err: ConfigError | undefined;
    try {
      validateConfig({ ...minimal(), tasks: { maxSubtasks: n } }, {}, 'x.yaml');
    } catch (e) {
      err = e as ConfigError;
    }
    expect(err?.path).toBe('tasks.maxSubtasks');
    expect(err?.message).toContain('must be 1 to 1000');
    expect(validateConfig({ ...minimal(), tasks: { maxSubtasks: 1000 } }, {}, 'x.yaml').tasks.maxSubtasks).toBe(1000);
  });
});
