import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { redisConfigSchema } from '../../src/config/redis.ts';
import { silentLogger } from '../../src/logger.ts';
import { createConnector, type RedisConnector, writableMaster } from '../../src/redis/connection.ts';
import { adminClient, type RedisSentinel, startSentinel } from '../helpers/redis-topology.ts';
import { capturingLogger } from '../helpers/log-capture.ts';

// Master + two replicas + one sentinel, all password-protected: the sentinel with its
// own password, read from a file here as an operator would mount it. Two replicas
// let the file fail over twice without waiting ~10 s for a demoted master to resync.
let topo: RedisSentinel;
let connector: RedisConnector;

beforeAll(async () => {
  topo = await startSentinel({ downAfterMs: 1000, replicas: 2, password: 'data-pw', sentinelPassword: 'sentinel-pw' });
  const secrets = mkdtempSync(join(tmpdir(), 'jit-sentinel-secret-'));
  writeFileSync(join(secrets, 'sentinel-password'), 'sentinel-pw\n');
  connector = createConnector(
    redisConfigSchema.parse({
      sentinel: {
        name: topo.name,
        sentinels: topo.sentinelUrls,
        password: 'data-pw',
        sentinelPassword: { file: join(secrets, 'sentinel-password') },
      },
    }),
    { logger: silentLogger },
  );
}, 90_000);

afterAll(async () => {
  await connector?.close();
  await topo?.stop();
});

/** The port of the server this client is connected to, as the server itself says (CLIENT INFO laddr). */
async function serverPort(c: Redis): Promise<number> {
  const info = String(await c.client('INFO'));
  const m = /laddr=[^ ]*:(\d+)/.exec(info);
  if (!m) throw new Error(`no laddr in ${info}`);
  return Number(m[1]);
}

/** What `port` says it is (ROLE): 'master' or 'slave'. */
async function roleOf(t: RedisSentinel, port: number): Promise<string> {
  const admin = t.client(port);
  try {
    return String(((await admin.role()) as unknown[])[0]);
  } finally {
    admin.disconnect();
  }
}

/**
 * Waits until `c` is on `to`, and says whether it got there while `from` still called itself a master: only
 * following +switch-master moves a client that soon (Sentinel demotes the old master at its next INFO poll, up
 * to ~10 s later, and a client that waited for that, or for READONLY, moves only after). Judged on that order,
 * read after the move was seen, not on a clock.
 */
async function movedBeforeDemotion(t: RedisSentinel, c: Redis, from: number, to: number): Promise<boolean> {
  const deadline = Date.now() + 25_000; // only so that a client that never moves fails here and not at the timeout
  while ((await serverPort(c)) !== to) {
    if (Date.now() > deadline) throw new Error(`the client never moved to ${to}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return (await roleOf(t, from)) === 'master';
}

test('connects to the master the sentinel names, and describes the sentinels without passwords', async () => {
  expect(connector.topology).toBe('sentinel');
  const d = connector.description;
  expect(d).toMatchObject({ topology: 'sentinel', master: 'mymaster', tls: false, nodes: topo.sentinelUrls.map((u) => u.slice(8)) });
  expect(connector.describe()).toBe(`sentinel mymaster via ${d.nodes.join(',')}`);
  expect(JSON.stringify(d) + connector.describe()).not.toMatch(/data-pw|sentinel-pw/);
  const c = connector.command('jit-main') as Redis;
  expect(await c.set('jit:s:1', 'a')).toBe('OK');
  expect(await serverPort(c)).toBe(await topo.masterPort());
  expect(await writableMaster(c)).toBe(true);
});

test('writableMaster is false on a connection to a replica', async () => {
  const replicaPort = await topo.waitForReplica();
  const replica = topo.client(replicaPort);
  try {
    await replica.connect();
    expect(await writableMaster(replica)).toBe(false);
  } finally {
    replica.disconnect();
  }
}, 90_000);

test('the master is killed: after the failover the same client writes to the new master, and writableMaster is true again', async () => {
  const c = connector.command('jit-main-2') as Redis;
  expect(await c.set('jit:s:2', 'before')).toBe('OK');
  await topo.waitForReplica();
  const killed = await topo.killMaster();
  // While there is no master, commands fail within the command timeout instead of hanging.
  const during = await c.set('jit:s:2', 'during').catch((err: Error) => err);
  if (during instanceof Error) expect(during.message).not.toMatch(/READONLY/);
  const promoted = await topo.waitForFailover();
  expect(promoted).not.toBe(killed);
  expect(await c.set('jit:s:2', 'after')).toBe('OK');
  expect(await serverPort(c)).toBe(promoted);
  expect(await writableMaster(c)).toBe(true);
  // The value written before the kill was replicated, so it is there (or overwritten by ours).
  expect(await c.get('jit:s:2')).toBe('after');
}, 90_000);

// The old master stays up (Sentinel demotes it only at its next INFO poll), so only
// following +switch-master moves the client: without that it would keep writing to
// a master nobody else uses.
test('a manual failover under continuous writes: no error reaches the caller, the client moves to the new master', async () => {
  await topo.waitForReplica();
  const c = connector.command('jit-writer') as Redis;
  const before = await serverPort(c);
  const errors: string[] = [];
  let writes = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      try {
        await c.incr('jit:s:counter');
        writes++;
      } catch (err) {
        errors.push((err as Error).message);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  try {
    await topo.failover();
    const after = await topo.waitForFailover();
    expect(after).not.toBe(before);
    expect(await movedBeforeDemotion(topo, c, before, after)).toBe(true);
    // And the writes go on there.
    const n = writes;
    while (writes === n && errors.length === 0) await new Promise((r) => setTimeout(r, 20));
    expect(writes).toBeGreaterThan(n);
  } finally {
    running = false;
    await loop;
  }
  expect(errors.filter((e) => /READONLY/.test(e))).toEqual([]);
  expect(errors).toEqual([]);
  expect(await writableMaster(c)).toBe(true);
}, 90_000);

describe('TLS', () => {
  // A topology of its own: master, replica and sentinel on TLS ports only (no plain port), replication and the
  // sentinel's links to the data nodes over TLS, client certificates required everywhere.
  let tlsTopo: RedisSentinel;
  const connectors: RedisConnector[] = [];

  beforeAll(async () => {
    tlsTopo = await startSentinel({ downAfterMs: 1000, replicas: 1, password: 'data-pw', tls: { authClients: true } });
  }, 90_000);

  afterAll(async () => {
    await Promise.all(connectors.map((c) => c.close()));
    await tlsTopo?.stop();
    // The refused client (no CA) keeps ioredis's sentinel lookup going for a while after its close: the
    // pause between two rounds of sentinels is a plain timer that disconnect does not cancel, and one more
    // attempt (up to connectTimeoutMs) follows it. Without this wait jest reported that it did not exit,
    // or force-exited its worker; 1.2 s was not enough, 3 s was.
    await new Promise((r) => setTimeout(r, 3000));
  });

  function connect(redis: Record<string, unknown>, logger = silentLogger): RedisConnector {
    const c = createConnector(
      redisConfigSchema.parse({ sentinel: { name: tlsTopo.name, sentinels: tlsTopo.sentinelUrls, password: 'data-pw' }, ...redis }),
      { logger },
    );
    connectors.push(c);
    return c;
  }

  test('rediss:// sentinels with a private CA and a client certificate: writes reach the master over TLS, also after a failover', async () => {
    const tls = tlsTopo.tls!;
    expect(tlsTopo.sentinelUrls.every((u) => u.startsWith('rediss://'))).toBe(true);
    const connector = connect({ tls: { ca: { file: tls.caFile }, cert: { file: tls.clientCertFile }, key: { file: tls.clientKeyFile } } });
    expect(connector.description).toMatchObject({ topology: 'sentinel', master: 'mymaster', tls: true });
    expect(connector.describe()).toContain('(tls)');
    const c = connector.command('jit-tls') as Redis;
    expect(await c.set('jit:tls:1', 'a')).toBe('OK');
    expect(await c.get('jit:tls:1')).toBe('a');
    expect(await serverPort(c)).toBe(await tlsTopo.masterPort());
    expect(await writableMaster(c)).toBe(true);
    // The sentinel promotes the replica it reaches over TLS; the connector follows it there.
    await tlsTopo.waitForReplica();
    const before = await tlsTopo.failover();
    const after = await tlsTopo.waitForFailover();
    expect(after).not.toBe(before);
    expect(await movedBeforeDemotion(tlsTopo, c, before, after)).toBe(true);
    expect(await serverPort(c)).toBe(after);
    expect(await c.set('jit:tls:1', 'b')).toBe('OK');
    expect(await c.get('jit:tls:1')).toBe('b');
    expect(await writableMaster(c)).toBe(true);
  }, 90_000);

  test('a client without TLS gets nowhere: the sentinel has no plain port', async () => {
    const plain = adminClient(tlsTopo.sentinelPorts[0]!, {});
    try {
      await expect(plain.connect().then(() => plain.ping())).rejects.toThrow();
    } finally {
      if (plain.status !== 'end') plain.disconnect();
    }
  });

  test('without the CA the sentinel certificate is refused, commands fail within commandTimeoutMs, and the log says why', async () => {
    const tls = tlsTopo.tls!;
    const { logger, lines } = capturingLogger<{ redis?: string; err?: string }>();
    const c = connect(
      { commandTimeoutMs: 500, connectTimeoutMs: 500, tls: { cert: { file: tls.clientCertFile }, key: { file: tls.clientKeyFile } } },
      logger,
    ).command('jit-tls-untrusted') as Redis;
    // The sentinel never becomes trusted: a command left to wait for a connection would never end (the test's
    // timeout fails it). Ended by its own timer, not by ioredis giving up on the sentinels.
    await expect(c.get('jit:tls:1')).rejects.toThrow(/timed out/i);
    expect(c.status).not.toBe('ready');
    // ioredis's own sentinel lookup drops the handshake error (the command client's line says only
    // "All sentinels are unreachable ... Last error: Connection is closed."); the connector's
    // +switch-master watcher connects to the sentinel itself, and its line names the certificate.
    const sentinel = `sentinel ${tlsTopo.sentinelUrls[0]!.slice('rediss://'.length)}`;
    for (let i = 0; i < 300 && !lines.some((l) => l.redis === sentinel); i++) await new Promise((r) => setTimeout(r, 50));
    expect(lines.find((l) => l.redis === sentinel)?.err).toMatch(/self[- ]signed|unable to verify|certificate/i);
  }, 60_000);
});
