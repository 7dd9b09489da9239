import { createHash } from 'node:crypto';
import { Queue, Worker } from 'bullmq';
import type { Cluster } from 'ioredis';
import { redisConfigSchema } from '../../src/config/redis.ts';
import { silentLogger } from '../../src/logger.ts';
import { createConnector, type RedisConnector, writableMaster } from '../../src/redis/connection.ts';
import { type RedisCluster, startCluster } from '../helpers/redis-topology.ts';
import { capturingLogger } from '../helpers/log-capture.ts';

// One 3-master cluster for the whole file; every node requires an ACL user, so
// nothing below works unless the connector takes the credentials from the URLs.
let cluster: RedisCluster;
let connector: RedisConnector;
/**
 * The connector's command timeout: the product's default. Not less: a loaded test machine took over 500 ms (what
 * this file had) for plain commands to a live node, which then failed as "Command timed out".
 */
const COMMAND_TIMEOUT_MS = 2000;

beforeAll(async () => {
  cluster = await startCluster({ masters: 3, aclUser: { name: 'jit', password: 'cl/uster#pw' } });
  connector = createConnector(redisConfigSchema.parse({ cluster: { nodes: cluster.urls }, commandTimeoutMs: COMMAND_TIMEOUT_MS }), {
    logger: silentLogger,
  });
}, 90_000);

afterAll(async () => {
  await connector?.close();
  await cluster?.stop();
  // The last tests kill the nodes, so the connector closes after its servers are gone: ioredis arms its
  // disconnect timer (disconnectTimeout, 500 ms in the connector) on each node socket already closed, and no
  // close event comes to clear it. Let them lapse here: left running, they keep a jest worker that ends with
  // this file alive past jest's grace, and it is force-killed ("failed to exit gracefully").
  await new Promise((r) => setTimeout(r, 600));
});

/**
 * A command client once connected: its timer runs from the first command on, connecting included, which a
 * loaded test machine can exceed.
 */
async function commandClient(name: string): Promise<Cluster> {
  const c = connector.command(name) as Cluster;
  if (c.status !== 'ready') await new Promise((resolve) => c.once('ready', resolve));
  return c;
}

/** Which of the three masters holds `key` (by port). */
async function nodeOf(c: Cluster, key: string): Promise<number> {
  const slot = Number(await c.cluster('KEYSLOT', key));
  const node = c.slots[slot]?.[0];
  if (!node) throw new Error(`no node for slot ${slot}`);
  return Number(node.split(':')[1]);
}

test('the connector reports a cluster and describes it without the password', () => {
  expect(connector.topology).toBe('cluster');
  const d = connector.description;
  expect(d).toMatchObject({ topology: 'cluster', tls: false, user: 'jit' });
  expect(d.nodes).toEqual(cluster.ports.map((p) => `127.0.0.1:${p}`));
  expect(connector.describe()).toBe(`cluster ${d.nodes.join(',')} (user jit)`);
  for (const text of [JSON.stringify(d), connector.describe()]) {
    expect(text).not.toContain('cl/uster');
    expect(text).not.toContain(encodeURIComponent('cl/uster#pw'));
  }
});

test('SET/GET reach every master, and a multi-key command across slots is refused (it really is a cluster)', async () => {
  const c = await commandClient('jit-test');
  const keys = Array.from({ length: 30 }, (_, i) => `jit:k:${i}`);
  await Promise.all(keys.map((k) => c.set(k, `v-${k}`)));
  expect(await Promise.all(keys.map((k) => c.get(k)))).toEqual(keys.map((k) => `v-${k}`));
  const owners = new Set(await Promise.all(keys.map((k) => nodeOf(c, k))));
  expect(owners).toEqual(new Set(cluster.ports));
  await expect(c.mget('jit:k:0', 'jit:k:1', 'jit:k:2', 'jit:k:3')).rejects.toThrow(/CROSSSLOT|same slot/);
  expect(await writableMaster(c)).toBe(true);
});

test('EVALSHA of a script whose keys share a hash tag runs on whichever master owns the tag', async () => {
  const c = await commandClient('jit-test-lua');
  const lua = "redis.call('SET', KEYS[1], ARGV[1]); redis.call('SET', KEYS[2], ARGV[1]); return redis.call('MGET', KEYS[1], KEYS[2])";
  const sha = createHash('sha1').update(lua).digest('hex');
  const tags = Array.from({ length: 12 }, (_, i) => `t${i}`);
  const owners = new Set<number>();
  for (const tag of tags) {
    const [a, b] = [`jit:{${tag}}:task`, `jit:{${tag}}:leases`];
    owners.add(await nodeOf(c, a));
    // Each master caches scripts on its own: the first EVALSHA on a node is NOSCRIPT, as after a restart.
    const first = await c.evalsha(sha, 2, a, b, tag).catch((err: Error) => err);
    if (first instanceof Error) {
      expect(first.message).toMatch(/NOSCRIPT/);
      await c.eval(lua, 2, a, b, tag);
    }
    expect(await c.evalsha(sha, 2, a, b, `${tag}!`)).toEqual([`${tag}!`, `${tag}!`]);
  }
  expect(owners.size).toBe(3);
  await expect(c.eval(lua, 2, 'jit:{a}:x', 'jit:{b}:x', 'v')).rejects.toThrow(/CROSSSLOT|same slot/);
});

test('a BullMQ queue and worker with a hash-tagged prefix process a job on the cluster', async () => {
  const prefix = 'jit:{jit:q0}';
  const queue = new Queue('revocation', { connection: connector.bullmq('jit-queue'), prefix });
  const worker = new Worker('revocation', async (job) => (job.data as { n: number }).n * 2, {
    connection: connector.bullmq('jit-worker'),
    prefix,
    concurrency: 2,
  });
  try {
    const done = new Promise<unknown>((resolve, reject) => {
      worker.on('completed', (_job, result) => resolve(result));
      worker.on('failed', (_job, err) => reject(err));
    });
    const job = await queue.add('revoke', { n: 21 }, { jobId: 'lease-1' });
    await expect(done).resolves.toBe(42);
    expect(await job.getState()).toBe('completed');
    // Every key BullMQ made lives in the one slot of the tag.
    const c = await commandClient('jit-test-bullmq');
    const owner = await nodeOf(c, `${prefix}:revocation:id`);
    const nodeIndex = cluster.ports.indexOf(owner);
    const admin = cluster.client(nodeIndex);
    try {
      const keys = (await admin.keys(`${prefix}:*`)) as string[];
      expect(keys.length).toBeGreaterThan(2);
    } finally {
      admin.disconnect();
    }
  } finally {
    await worker.close();
    await queue.close();
  }
});

test('a subscriber gets what is published through every node of the cluster', async () => {
  const sub = connector.subscriber('jit-sub');
  const got: string[] = [];
  sub.on('message', (channel: string, message: string) => {
    if (channel === 'jit:events:broker') got.push(message);
  });
  await sub.subscribe('jit:events:broker');
  // PUBLISH on each node directly, and once through the cluster client (which picks a node).
  for (let i = 0; i < cluster.ports.length; i++) {
    const admin = cluster.client(i);
    try {
      await admin.publish('jit:events:broker', `from-node-${i}`);
    } finally {
      admin.disconnect();
    }
  }
  await (await commandClient('jit-pub')).publish('jit:events:broker', 'from-client');
  // A wait, not a judgement: it ends as soon as all four arrived (a loaded machine may take seconds).
  const deadline = Date.now() + 15_000;
  while (got.length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  expect(got.sort()).toEqual(['from-client', 'from-node-0', 'from-node-1', 'from-node-2']);
  // Closed here: the tests below kill nodes, and ioredis's cluster subscriber would keep hunting for a live one.
  await sub.quit();
});

test('a command to a frozen master fails after commandTimeoutMs; other masters keep answering', async () => {
  const c = await commandClient('jit-test-timeout');
  const frozenPort = cluster.ports[0]!;
  const keys = Array.from({ length: 30 }, (_, i) => `jit:timeout:${i}`);
  const owners = await Promise.all(keys.map((k) => nodeOf(c, k)));
  const onFrozen = keys[owners.indexOf(frozenPort)]!;
  const elsewhere = keys[owners.findIndex((p) => p !== frozenPort)]!;
  // Frozen until this test resumes it, after the command failed: the order is what is judged (a command without
  // a timeout waits for the resume and then succeeds), not how fast a loaded machine ran the timer.
  const pid = cluster.pid(0)!;
  process.kill(pid, 'SIGSTOP');
  try {
    const t0 = Date.now();
    await expect(c.set(onFrozen, 'x')).rejects.toThrow(/timed out/i);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(COMMAND_TIMEOUT_MS - 50); // not before its timeout, either
    expect(await c.set(elsewhere, 'y')).toBe('OK');
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  // The frozen master answers again. Not necessarily the very first command: the stall guard's PING in flight
  // at the resume has 250 ms to come back, and a loaded machine may take longer to run the resumed node (that
  // PING then counts as unanswered, rightly: RedisStalledError, seen once in three loaded runs); the next gets through.
  for (let i = 0; i < 100; i++) {
    const ok = await c.set(onFrozen, 'z').catch((err: Error) => {
      expect(err.name).toBe('RedisStalledError'); // refused by the guard, not left to time out
      return undefined;
    });
    if (ok) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  expect(await c.set(onFrozen, 'z')).toBe('OK');
}, 60_000);

// Last: it breaks the shared cluster.
test('writableMaster turns false once a master is gone and the cluster says so', async () => {
  const c = await commandClient('jit-test-ready');
  expect(await writableMaster(c)).toBe(true);
  await cluster.kill(2);
  // Once the surviving masters agree the cluster failed, every check answers false.
  const admin = cluster.client(0);
  try {
    const deadline = Date.now() + 30_000;
    while (!/cluster_state:fail/.test(String(await admin.cluster('INFO')))) {
      if (Date.now() > deadline) throw new Error(`cluster never noticed the dead master\n${cluster.logs()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    admin.disconnect();
  }
  const checks = [];
  for (let i = 0; i < 5; i++) checks.push(await writableMaster(c, { timeoutMs: 500 }));
  expect(checks).toEqual([false, false, false, false, false]);
}, 60_000);

// Last too: nothing is left running after it.
test('with every node gone, a command still fails after commandTimeoutMs instead of waiting for the cluster to return', async () => {
  const c = connector.command('jit-test-all-gone') as Cluster;
  await Promise.all([cluster.kill(0), cluster.kill(1), cluster.kill(2)]);
  const attempts: (() => Promise<unknown>)[] = [
    () => c.get('jit:k:gone'),
    () => c.evalsha('0'.repeat(40), 1, 'jit:k:gone'),
    () => c.multi().set('jit:{a}:1', 'x').exec(),
  ];
  // The nodes never come back, so a command that waited for the cluster would never end (the test's timeout
  // fails it): that each one ends, with an error, is the property; no clock is read.
  for (const attempt of attempts) {
    // Which error depends on where the command meets the dead cluster; what matters is that it ends.
    await expect(attempt()).rejects.toThrow(/timed out|Connection is closed|None of startup nodes/i);
  }
  // Once the cluster client is reconnecting, the cluster's own queue holds commands: they time out too.
  await expect(c.get('jit:k:gone')).rejects.toThrow(/timed out|None of startup nodes/i);
}, 60_000);

describe('TLS', () => {
  // A cluster of its own: TLS only (no plain port), cluster bus included, client certificates required.
  let tlsCluster: RedisCluster;
  const connectors: RedisConnector[] = [];

  beforeAll(async () => {
    tlsCluster = await startCluster({ masters: 3, aclUser: { name: 'jit', password: 'cl/uster#pw' }, tls: { authClients: true } });
  }, 90_000);

  afterAll(async () => {
    await Promise.all(connectors.map((c) => c.close()));
    await tlsCluster?.stop();
  });

  function connect(redis: Record<string, unknown>, logger = silentLogger): RedisConnector {
    const c = createConnector(redisConfigSchema.parse({ cluster: { nodes: tlsCluster.urls }, ...redis }), { logger });
    connectors.push(c);
    return c;
  }

  test('rediss:// nodes with a private CA and a client certificate from redis.tls files reach every master, Lua included', async () => {
    const tls = tlsCluster.tls!;
    expect(tlsCluster.urls.every((u) => u.startsWith('rediss://'))).toBe(true);
    const connector = connect({
      tls: { ca: { file: tls.caFile }, cert: { file: tls.clientCertFile }, key: { file: tls.clientKeyFile } },
    });
    expect(connector.description).toMatchObject({ topology: 'cluster', tls: true, user: 'jit' });
    const c = connector.command('jit-tls') as Cluster;
    const keys = Array.from({ length: 12 }, (_, i) => `jit:{tls${i}}:k`);
    await Promise.all(keys.map((k) => c.set(k, `v-${k}`)));
    expect(await Promise.all(keys.map((k) => c.get(k)))).toEqual(keys.map((k) => `v-${k}`));
    // CLUSTER SLOTS reports the TLS ports (the plain ones are closed), and the keys landed on all three masters.
    const owners = new Set(await Promise.all(keys.map((k) => nodeOf(c, k))));
    expect(owners).toEqual(new Set(tlsCluster.ports));
    for (let i = 0; i < tlsCluster.ports.length; i++) {
      const admin = tlsCluster.client(i);
      try {
        expect(((await admin.keys('jit:{tls*')) as string[]).length).toBeGreaterThan(0);
      } finally {
        admin.disconnect();
      }
    }
    const lua = "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[2])";
    expect(await c.eval(lua, 2, 'jit:{tls0}:lua', 'jit:{tls0}:k', 'x')).toBe('v-jit:{tls0}:k');
    expect(await writableMaster(c)).toBe(true);
  });

  test('without the CA the server certificate is refused, commands fail within commandTimeoutMs, and the log says why', async () => {
    const tls = tlsCluster.tls!;
    const { logger, lines } = capturingLogger<{ err?: string; tls?: string }>();
    const c = connect(
      { commandTimeoutMs: 500, connectTimeoutMs: 500, tls: { cert: { file: tls.clientCertFile }, key: { file: tls.clientKeyFile } } },
      logger,
    ).command('jit-tls-untrusted') as Cluster;
    // The server never becomes trusted, so a command that waited for a usable connection would never end (the
    // test's timeout fails it): that it ends with an error is judged, not how fast.
    await expect(c.get('jit:k')).rejects.toThrow(/timed out|Failed to refresh slots cache|Connection is closed/i);
    expect(c.status).not.toBe('ready');
    // ioredis reads the slots on a throwaway connection and drops its errors: its own message says
    // nothing of the certificate, so the connector adds what a handshake of its own ran into.
    for (let i = 0; i < 300 && !lines.some((l) => l.tls); i++) await new Promise((r) => setTimeout(r, 50));
    const line = lines.find((l) => l.tls);
    expect(line?.err).toBe('Failed to refresh slots cache.');
    expect(line?.tls).toMatch(/self[- ]signed|unable to verify|certificate/i);
  }, 60_000);
});
