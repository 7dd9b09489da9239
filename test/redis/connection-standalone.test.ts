import type { Redis } from 'ioredis';
import { validateConfig } from '../../src/config/load.ts';
import { type RedisConfig, redisConfigSchema } from '../../src/config/redis.ts';
import { silentLogger } from '../../src/logger.ts';
import { createConnector, type RedisConnector, writableMaster } from '../../src/redis/connection.ts';
import { type RedisStandalone, startStandalone } from '../helpers/redis-topology.ts';
import { countWrites } from '../helpers/socket-writes.ts';

const connectors: RedisConnector[] = [];
const servers: RedisStandalone[] = [];

function connect(redis: Record<string, unknown>): RedisConnector {
  const c = createConnector(redisConfigSchema.parse(redis), { logger: silentLogger });
  connectors.push(c);
  return c;
}

async function server(opts: Parameters<typeof startStandalone>[0] = {}): Promise<RedisStandalone> {
  const s = await startStandalone(opts);
  servers.push(s);
  return s;
}

afterAll(async () => {
  await Promise.all(connectors.map((c) => c.close()));
  await Promise.all(servers.map((s) => s.stop()));
  // The TLS tests' refused clients end a socket that never closes: ioredis then destroys it after
  // `disconnectTimeout` (500 ms) on a timer, which outlived the file and made jest force-exit its worker.
  await new Promise((r) => setTimeout(r, 600));
});

test('a missing CA or password file fails when the connector is built, naming the key', () => {
  const build = (redis: Record<string, unknown>) => () => createConnector(redisConfigSchema.parse(redis), { logger: silentLogger });
  expect(build({ url: 'rediss://127.0.0.1:1', tls: { ca: { file: '/nonexistent/ca.pem' } } })).toThrow(/config redis\.tls\.ca: .*ENOENT/);
  expect(build({ sentinel: { name: 'm', sentinels: ['redis://127.0.0.1:1'], password: { file: '/nonexistent/pw' } } })).toThrow(
    /config redis\.sentinel\.password: .*ENOENT/,
  );
});

describe('command timeout', () => {
  test('a command to a frozen Redis fails after about commandTimeoutMs, and the client works again once it resumes', async () => {
    const s = await server();
    const c = connect({ url: s.url, commandTimeoutMs: 400 }).command('jit-main') as Redis;
    // The timer runs from the first command on, connecting included: connect first.
    await new Promise((resolve) => c.once('ready', resolve));
    expect(await c.set('k', 'v')).toBe('OK');
    let reconnects = 0;
    c.on('reconnecting', () => reconnects++);
    const resumed = s.pause(1500);
    try {
      const t0 = Date.now();
      const get = c.get('k').then(
        () => 'answered',
        (err: Error) => err,
      );
      // "About commandTimeoutMs" judged against a reference timer of 1 s started with it, not the wall clock:
      // both are timers of this process, and the client's 400-ms one fires first however late a loaded
      // machine runs them (a wall-clock bound of 1 s is not: the process may not run for a while).
      const first = await Promise.race([get, new Promise((r) => setTimeout(r, 1000, 'reference timer first'))]);
      expect(first).toBeInstanceOf(Error);
      expect(String(first)).toMatch(/timed out/i);
      // Timers never fire early: a loaded machine cannot make this pass on a client that gave up at once.
      expect(Date.now() - t0).toBeGreaterThanOrEqual(380);
      expect(await writableMaster(c, { timeoutMs: 200 })).toBe(false);
    } finally {
      await resumed;
    }
    // Works again on the same connection once Redis is back. Not necessarily the very first command: the
    // stall guard's PING in flight at the resume has 250 ms to come back, and a loaded machine may take longer
    // to run the resumed Redis (that PING then counts as unanswered, rightly); the next one gets through.
    for (let i = 0; i < 100; i++) {
      const v = await c.get('k').catch((err: Error) => {
        expect(err.name).toBe('RedisStalledError'); // refused by the guard, not left to time out
        return undefined;
      });
      if (v !== undefined) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(await c.get('k')).toBe('v');
    expect(reconnects).toBe(0);
    expect(await writableMaster(c)).toBe(true);
  });

  test('the default is 2000 ms', () => {
    expect(redisConfigSchema.parse({ url: 'redis://127.0.0.1:6379' }).commandTimeoutMs).toBe(2000);
  });

  test('BullMQ connections have no command timeout and unlimited retries, as BullMQ requires', async () => {
    const s = await server();
    const b = connect({ url: s.url, commandTimeoutMs: 300 }).bullmq('jit-queue') as Redis;
    expect(b.options.maxRetriesPerRequest).toBeNull();
    expect(b.options.commandTimeout).toBeUndefined();
    // A blocking pop longer than commandTimeoutMs still answers.
    const t0 = Date.now();
    expect(await b.blpop('nothing-here', 0.6)).toBeNull();
    expect(Date.now() - t0).toBeGreaterThanOrEqual(550);
  });
});

describe('ACL', () => {
  test('a user and password from the URL (percent-encoded, substituted from the environment) authenticate as that user', async () => {
    const password = 'p@ss/w#rd:+x';
    const s = await server({ aclUser: { name: 'broker', password } });
    const config = validateConfig(
      {
        server: { publicUrl: 'http://127.0.0.1:8080' },
        redis: { url: `redis://broker:\${REDIS_PASSWORD}@127.0.0.1:${s.port}` },
        policies: './config/policies',
        trust: [{ name: 'dev', kind: 'spiffe', trustDomain: 'dev.local', audiences: ['jit-broker'], jwks: { keys: [{ kty: 'EC' }] } }],
        roles: { r: { provider: 'jwt', audience: 'x' } },
      },
      { REDIS_PASSWORD: encodeURIComponent(password) },
      'config/x.yaml',
    );
    const connector = connect(config.redis as RedisConfig);
    expect(connector.description).toEqual({ topology: 'single', nodes: [`127.0.0.1:${s.port}`], tls: false, user: 'broker' });
    expect(connector.describe()).toBe(`single 127.0.0.1:${s.port} (user broker)`);
    expect(JSON.stringify(connector.description) + connector.describe()).not.toMatch(/p@ss|p%40ss/);
    const c = connector.command('jit-main') as Redis;
    expect(await c.call('ACL', 'WHOAMI')).toBe('broker');
    expect(await c.set('k', 'v')).toBe('OK');
    expect(await writableMaster(c)).toBe(true);
    // The default user is off on this server: without the URL's credentials nothing gets in.
    const anon = connect({ url: `redis://127.0.0.1:${s.port}` }).command('anon') as Redis;
    await expect(anon.get('k')).rejects.toThrow(/NOAUTH/);
    const wrong = connect({ url: `redis://broker:nope@127.0.0.1:${s.port}` }).command('wrong') as Redis;
    await expect(wrong.get('k')).rejects.toThrow(/WRONGPASS/);
  });
});

describe('TLS', () => {
  test('rediss:// with a private CA and a client certificate from redis.tls files', async () => {
    const s = await server({ tls: { authClients: true } });
    const tls = s.tls!;
    const c = connect({
      url: `rediss://127.0.0.1:${s.port}`,
      tls: { ca: { file: tls.caFile }, cert: { file: tls.clientCertFile }, key: { file: tls.clientKeyFile } },
    }).command('jit-main') as Redis;
    expect(await c.set('k', 'tls')).toBe('OK');
    expect(await c.get('k')).toBe('tls');
    expect(await writableMaster(c)).toBe(true);
    // The certificate names localhost too, and is checked against the URL's host.
    const byName = connect({
      url: `rediss://localhost:${s.port}`,
      tls: { ca: { file: tls.caFile }, cert: { file: tls.clientCertFile }, key: { file: tls.clientKeyFile } },
    }).command('by-name') as Redis;
    expect(await byName.get('k')).toBe('tls');
  });

  test('without the CA the server certificate is refused; without a client certificate the server refuses', async () => {
    const s = await server({ tls: { authClients: true } });
    const tls = s.tls!;
    const untrusted = connect({
      url: `rediss://127.0.0.1:${s.port}`,
      commandTimeoutMs: 1000,
      tls: { cert: { file: tls.clientCertFile }, key: { file: tls.clientKeyFile } },
    }).command('untrusted') as Redis;
    const errors: string[] = [];
    untrusted.on('error', (err: Error) => errors.push(err.message));
    await expect(untrusted.get('k')).rejects.toThrow();
    expect(errors.join('\n')).toMatch(/self[- ]signed|unable to verify|certificate/i);
    const noClientCert = connect({
      url: `rediss://127.0.0.1:${s.port}`,
      commandTimeoutMs: 1000,
      tls: { ca: { file: tls.caFile } },
    }).command('no-client-cert') as Redis;
    const refused: string[] = [];
    noClientCert.on('error', (err: Error) => refused.push(err.message));
    await expect(noClientCert.get('k')).rejects.toThrow();
    // TLS 1.3: the server checks the (missing) client certificate after the handshake and drops the connection.
    expect(refused.join('\n')).toMatch(/ECONNRESET|certificate|alert|socket hang up/i);
  });
});

describe('writableMaster', () => {
  test('false on a replica and on a master that refuses writes; true on a writable master', async () => {
    const primary = await server();
    const replica = await server();
    const admin = replica.client();
    await admin.connect();
    try {
      await admin.replicaof('127.0.0.1', primary.port);
      const onReplica = connect({ url: replica.url }).command('on-replica') as Redis;
      expect(await writableMaster(onReplica)).toBe(false);
      const onPrimary = connect({ url: primary.url }).command('on-primary') as Redis;
      expect(await writableMaster(onPrimary)).toBe(true);
      // A master that needs a replica to accept writes, and has none in sync, is a master that cannot write.
      const p = primary.client();
      await p.connect();
      try {
        await admin.replicaof('NO', 'ONE');
        await p.config('SET', 'min-replicas-to-write', '1');
        expect(await writableMaster(onPrimary)).toBe(false);
        await p.config('SET', 'min-replicas-to-write', '0');
        expect(await writableMaster(onPrimary)).toBe(true);
      } finally {
        p.disconnect();
      }
    } finally {
      admin.disconnect();
    }
  });

  test('a single-node URL follows a node that was briefly a replica (READONLY is retried, not returned)', async () => {
    // What a DNS-named primary endpoint does in a managed failover: the connection lands on a demoted node for a moment.
    const primary = await server();
    const other = await server();
    const c = connect({ url: other.url, commandTimeoutMs: 2000 }).command('jit-main') as Redis;
    expect(await c.set('k', '1')).toBe('OK');
    const admin = other.client();
    await admin.connect();
    try {
      await admin.replicaof('127.0.0.1', primary.port);
      const promoted = new Promise((r) => setTimeout(r, 400)).then(() => admin.replicaof('NO', 'ONE'));
      expect(await c.set('k', '2')).toBe('OK');
      await promoted;
    } finally {
      admin.disconnect();
    }
    expect(await c.get('k')).toBe('2');
  });
});

describe('restarts', () => {
  test('the client reconnects by itself; AOF (everysec) keeps data across a SIGKILL, no persistence loses it', async () => {
    const durable = await server({ appendonly: 'everysec' });
    const volatile = await server({ appendonly: 'no' });
    const d = connect({ url: durable.url }).command('durable') as Redis;
    const v = connect({ url: volatile.url }).command('volatile') as Redis;
    await d.set('k', 'kept');
    await v.set('k', 'lost');
    await Promise.all([durable.restart({ keepData: true }), volatile.restart({ keepData: true })]);
    expect(await d.get('k')).toBe('kept');
    expect(await v.get('k')).toBeNull();
    await durable.restart({ keepData: false });
    expect(await d.get('k')).toBeNull();
  });
});

describe('write coalescing', () => {
  test('the commands of one event-loop turn go out in one socket write, and each gets its own answer', async () => {
    const s = await server();
    const c = connect({ url: s.url }).command('jit-main') as Redis;
    await new Promise((resolve) => c.once('ready', resolve));
    const seen = countWrites(c);
    const answers = await Promise.all(Array.from({ length: 50 }, (_, i) => c.echo(`m${i}`)));
    expect(answers).toEqual(Array.from({ length: 50 }, (_, i) => `m${i}`));
    expect(seen.commands).toBe(50);
    expect(seen.writes).toBe(1);
    // Commands of later turns are their own writes: nothing waits for a batch to fill.
    expect(await c.echo('alone')).toBe('alone');
    expect(seen.writes).toBe(2);
  });
});
