import { validateConfig } from '../../src/config/load.ts';
import { redisConfigSchema } from '../../src/config/redis.ts';
import { ConfigError } from '../../src/errors.ts';
import { parseRedisUrl } from '../../src/redis/url.ts';

const base = (redis: Record<string, unknown>) => ({
  server: { publicUrl: 'http://127.0.0.1:8080' },
  redis,
  policies: './config/policies',
  trust: [{ name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: [{ kty: 'EC' }] } }],
  roles: { r: { provider: 'jwt', audience: 'x' } },
});

function configError(redis: Record<string, unknown>, env: Record<string, string> = {}): ConfigError {
  try {
    validateConfig(base(redis), env, 'config/x.yaml');
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error('expected a ConfigError');
}

test.each<[string, Record<string, unknown>]>([
  ['one node', { url: 'redis://127.0.0.1:6379' }],
  ['one node, TLS, ACL user, database', { url: 'rediss://broker:s%40cret@redis.internal:6380/2', tls: { ca: { file: '/etc/ca.pem' } } }],
  ['cluster', { cluster: { nodes: ['redis://10.0.0.1:6379', 'redis://10.0.0.2:6379'] } }],
  [
    'sentinel as in the contract',
    { sentinel: { name: 'mymaster', sentinels: ['redis://10.0.0.5:26379'], password: 'p', sentinelPassword: 's' } },
  ],
  [
    'sentinel with passwords from files',
    { sentinel: { name: 'm', sentinels: ['redis://s1', 'redis://s2'], password: { file: '/run/pw' } } },
  ],
  [
    'TLS with a client certificate',
    { url: 'rediss://h', tls: { ca: 'PEM', cert: { file: 'c' }, key: { file: 'k' }, servername: 'redis.internal' } },
  ],
])('accepts %s', (_n, redis) => {
  expect(() => validateConfig(base(redis), {}, 'config/x.yaml')).not.toThrow();
});

test.each<[string, Record<string, unknown>, string, RegExp]>([
  ['nothing', { prefix: 'jit' }, 'redis', /exactly one of redis\.url, redis\.cluster or redis\.sentinel/],
  ['url and cluster', { url: 'redis://a', cluster: { nodes: ['redis://b'] } }, 'redis', /not redis\.url and redis\.cluster/],
  [
    'cluster and sentinel',
    { cluster: { nodes: ['redis://b'] }, sentinel: { name: 'm', sentinels: ['redis://s'] } },
    'redis',
    /exactly one/,
  ],
  ['scheme', { url: 'http://x' }, 'redis.url', /redis:\/\/ or rediss:\/\//],
  ['an unencoded "#" in a password', { url: 'redis://u:pa#ss@h:6379' }, 'redis.url', /percent-encode/],
  ['a query string', { url: 'redis://h:6379?family=6' }, 'redis.url', /query string/],
  ['a user without a password', { url: 'redis://u@h' }, 'redis.url', /no password/],
  ['a path that is no database', { url: 'redis://h/x' }, 'redis.url', /database number/],
  ['no cluster nodes', { cluster: { nodes: [] } }, 'redis.cluster.nodes', /./],
  ['a bad cluster node', { cluster: { nodes: ['redis://a', 'tcp://b'] } }, 'redis.cluster.nodes.1', /redis:\/\//],
  [
    'cluster nodes with different credentials',
    { cluster: { nodes: ['redis://u:p@a', 'redis://u:q@b'] } },
    'redis.cluster.nodes.1',
    /same scheme .* user and password/,
  ],
  ['a cluster node with a database', { cluster: { nodes: ['redis://a/3'] } }, 'redis.cluster.nodes.0', /only database 0/],
  ['a sentinel without name', { sentinel: { sentinels: ['redis://s'] } }, 'redis.sentinel.name', /./],
  [
    'credentials in a sentinel URL',
    { sentinel: { name: 'm', sentinels: ['redis://u:p@s'] } },
    'redis.sentinel.sentinels.0',
    /sentinelUsername \/ sentinelPassword/,
  ],
  [
    'mixed TLS among sentinels',
    { sentinel: { name: 'm', sentinels: ['rediss://s1', 'redis://s2'] } },
    'redis.sentinel.sentinels.1',
    /all rediss/,
  ],
  ['tls without any rediss:// URL', { url: 'redis://h', tls: { ca: 'PEM' } }, 'redis.tls', /no URL .* rediss:\/\//],
  ['a client cert without its key', { url: 'rediss://h', tls: { cert: 'PEM' } }, 'redis.tls.key', /cert and key go together/],
  ['an unknown key', { url: 'redis://h', db: 3 }, 'redis.db', /unknown key 'db'/],
  ['a command timeout of zero', { url: 'redis://h', commandTimeoutMs: 0 }, 'redis.commandTimeoutMs', /./],
  ['a bad prefix', { url: 'redis://h', prefix: 'a:b' }, 'redis.prefix', /letters, digits/],
])('refuses %s, naming the key', (_n, redis, path, message) => {
  const err = configError(redis);
  expect(err.path).toBe(path);
  expect(err.message).toMatch(message);
  expect(err.message).toContain(path);
});

test('REDIS_URL replaces redis.url, and is a startup error next to redis.cluster or redis.sentinel', () => {
  const c = validateConfig(base({ url: 'redis://a:6379' }), { REDIS_URL: 'rediss://b:6380' }, 'config/x.yaml');
  expect(c.redis.url).toBe('rediss://b:6380');
  // Also with no redis section at all: REDIS_URL alone is a complete one.
  const raw: Record<string, unknown> = base({});
  delete raw.redis;
  expect(validateConfig(raw, { REDIS_URL: 'redis://c' }, 'config/x.yaml').redis.url).toBe('redis://c');
  expect(configError({ url: 'redis://a' }, { REDIS_URL: 'localhost:6379' }).message).toMatch(/redis\.url: .*comes from REDIS_URL/);
  for (const redis of [{ cluster: { nodes: ['redis://n1'] } }, { sentinel: { name: 'm', sentinels: ['redis://s'] } }]) {
    const err = configError(redis, { REDIS_URL: 'redis://x' });
    expect(err.message).toMatch(/REDIS_URL is set/);
    expect(err.path).toBe(`redis.${Object.keys(redis)[0]}`);
  }
});

test('defaults: prefix jit, commandTimeoutMs 2000, connectTimeoutMs 5000, 16 buckets, replicaAck auto within 1 s', () => {
  expect(redisConfigSchema.parse({ url: 'redis://h' })).toEqual({
    url: 'redis://h',
    prefix: 'jit',
    commandTimeoutMs: 2000,
    connectTimeoutMs: 5000,
    buckets: 16,
    replicaAck: { replicas: 'auto', timeoutMs: 1000 },
  });
});

test('redis.replicaAck: auto, 0..16 replicas, a bounded timeout; nothing else', () => {
  expect(redisConfigSchema.parse({ url: 'redis://h', replicaAck: { replicas: 2 } }).replicaAck).toEqual({ replicas: 2, timeoutMs: 1000 });
  for (const bad of [{ replicas: -1 }, { replicas: 17 }, { replicas: 'all' }, { timeoutMs: 0 }, { timeoutMs: 60_000 }, { wait: true }]) {
    expect(redisConfigSchema.safeParse({ url: 'redis://h', replicaAck: bad }).success).toBe(false);
  }
});

test('a config error about a URL never repeats the password', () => {
  const err = configError({ url: 'redis://user:hunter2#x@h' });
  expect(err.message).not.toContain('hunter2');
});

test.each<[string, number, object]>([
  ['redis://h', 6379, { host: 'h', port: 6379, tls: false }],
  ['rediss://u:p%2Fq@h:7000/3', 6379, { host: 'h', port: 7000, tls: true, username: 'u', password: 'p/q', db: 3 }],
  ['redis://:only-pw@h', 6379, { host: 'h', port: 6379, tls: false, password: 'only-pw' }],
  ['redis://[::1]:6390', 6379, { host: '::1', port: 6390, tls: false }],
  ['redis://s', 26379, { host: 's', port: 26379, tls: false }],
])('parseRedisUrl(%s)', (url, port, want) => {
  expect(parseRedisUrl(url, port)).toEqual(want);
});
