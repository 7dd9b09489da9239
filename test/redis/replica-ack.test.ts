import { jest } from '@jest/globals';
import type { Cluster, Redis } from 'ioredis';
import { redisConfigSchema } from '../../src/config/redis.ts';
import { silentLogger } from '../../src/logger.ts';
import { createConnector, type RedisConnector } from '../../src/redis/connection.ts';
import { Keys } from '../../src/redis/keys.ts';
import { ReplicaAck } from '../../src/redis/replica-ack.ts';
import { type RedisCluster, type RedisStandalone, startCluster, startStandalone } from '../helpers/redis-topology.ts';

/**
 * ReplicaAck (src/redis/replica-ack.ts) on its own: who waits, for how long,
 * on which master. The broker-level promise (a failover does not take an
 * answer back) is test/topologies/replica-ack.test.ts.
 */
const keys = new Keys('ra', 16);
const connectors: RedisConnector[] = [];
// Closed before their servers stop: a client closed once its server is gone (its socket already closed)
// holds ioredis's 500-ms disconnect fallback timer, and a jest worker exiting then is force-killed.
const closeConnectors = async () => {
  for (const c of connectors.splice(0)) await c.close();
};
afterAll(closeConnectors);

function ackOn(config: Record<string, unknown>, opts: { replicas: 'auto' | number; timeoutMs: number }) {
  const connector = createConnector(redisConfigSchema.parse(config), { logger: silentLogger });
  connectors.push(connector);
  const rounds: string[] = [];
  const client = connector.command('ack', { blockMs: opts.timeoutMs });
  return { client, rounds, ack: new ReplicaAck(client, { ...opts, logger: silentLogger, onRound: (r) => rounds.push(r) }) };
}

async function timed(p: Promise<unknown>): Promise<number> {
  const t0 = Date.now();
  await p;
  return Date.now() - t0;
}

describe('one node without replicas', () => {
  let redis: RedisStandalone;
  beforeAll(async () => {
    redis = await startStandalone();
  });
  afterAll(async () => {
    await closeConnectors();
    await redis?.stop();
  });

  test('auto never waits and writes nothing', async () => {
    const { ack, client, rounds } = ackOn({ url: redis.url }, { replicas: 'auto', timeoutMs: 2000 });
    await ack.start();
    // No round (a round writes the fence, then WAITs and is counted): nothing waited for, whatever the time.
    await ack.after([keys.replicaFence(3)]);
    expect(await (client as Redis).exists(keys.replicaFence(3))).toBe(0);
    expect(rounds).toEqual([]);
    ack.stop();
  });

  test('a fixed count waits out the timeout, counts it, and goes on; callers of one turn share one wait', async () => {
    const { ack, rounds } = ackOn({ url: redis.url }, { replicas: 1, timeoutMs: 300 });
    const took = await timed(Promise.all([ack.after([keys.replicaFence(1)]), ack.after([keys.replicaFence(2)])]));
    expect(took).toBeGreaterThanOrEqual(290);
    expect(rounds).toEqual(['timeout']);
  });
});

describe('a replica that comes online after the broker started', () => {
  let primary: RedisStandalone;
  let replica: RedisStandalone;
  beforeAll(async () => {
    [primary, replica] = await Promise.all([startStandalone(), startStandalone()]);
  });
  afterAll(async () => {
    await closeConnectors();
    await replica?.stop();
    await primary?.stop();
  });

  test('auto waits for it within about a second of it being online (the count is not left for the next 5-s poll)', async () => {
    const { ack, client, rounds } = ackOn({ url: primary.url }, { replicas: 'auto', timeoutMs: 400 });
    // Judged on the poll, not on a sleep (on a loaded machine a 1-s timer fires seconds late): the count is
    // scheduled every second, and the first count that starts once the replica is online waits for it.
    const every: number[] = [];
    const schedule = globalThis.setInterval;
    globalThis.setInterval = ((fn: () => void, ms?: number) => {
      every.push(ms ?? 0);
      return schedule(fn, ms);
    }) as typeof setInterval;
    try {
      await ack.start(); // no replica yet: nothing to wait for
    } finally {
      globalThis.setInterval = schedule;
    }
    expect(every).toEqual([1000]);
    const polls: Promise<unknown>[] = [];
    const node = client as Redis;
    const call = node.call.bind(node) as (...a: unknown[]) => Promise<unknown>;
    (node as { call: unknown }).call = (...a: unknown[]) => {
      const p = call(...a);
      if (String(a[0]).toUpperCase() === 'ROLE') polls.push(p);
      return p;
    };
    await ack.after([keys.replicaFence(4)]);
    expect(rounds).toEqual([]); // no round: no replica to wait for
    // Out of phase with any whole-5-s poll: the replica's sync (repl-diskless-sync-delay, 5 s) ends between polls.
    await new Promise((res) => setTimeout(res, 2500));
    const r = replica.client();
    const p = primary.client();
    try {
      await r.replicaof('127.0.0.1', primary.port);
      const online = async () => ((await p.call('ROLE')) as unknown[][])[2]!.length === 1;
      for (let i = 0; i < 400 && !(await online()); i++) await new Promise((res) => setTimeout(res, 25));
      expect(await online()).toBe(true);
      // The first count that starts from now, and its answer taken in (the poller's await runs before this one).
      const from = polls.length;
      for (let i = 0; i < 400 && polls.length <= from; i++) await new Promise((res) => setTimeout(res, 25));
      await polls[from];
      // Frozen, it cannot acknowledge: a wait now lasts the timeout, which shows the replica is counted.
      const frozen = replica.pause(1500);
      expect(await timed(ack.after([keys.replicaFence(4)]))).toBeGreaterThanOrEqual(380);
      expect(rounds).toEqual(['timeout']);
      await frozen;
    } finally {
      r.disconnect();
      p.disconnect();
      ack.stop();
    }
  });
});

describe('a replica counted, then the wall clock steps forward an hour', () => {
  let primary: RedisStandalone;
  let replica: RedisStandalone;
  beforeAll(async () => {
    [primary, replica] = await Promise.all([startStandalone(), startStandalone()]);
  });
  afterAll(async () => {
    jest.restoreAllMocks();
    await closeConnectors();
    await replica?.stop();
    await primary?.stop();
  });

  // `auto` waits when a replica was counted in the last minute. That minute was judged on the wall clock: a
  // step forward (NTP setting a slow clock right) made the last count look an hour old, and every write went
  // unreplicated until the next count. It is a duration on the monotonic clock now.
  test('auto still waits for the replica it counted', async () => {
    const r = replica.client();
    const p = primary.client();
    try {
      await r.replicaof('127.0.0.1', primary.port);
      const online = async () => ((await p.call('ROLE')) as unknown[][])[2]!.length === 1;
      for (let i = 0; i < 400 && !(await online()); i++) await new Promise((res) => setTimeout(res, 25));
      expect(await online()).toBe(true);
      // The process's wall clock, as a real step moves it (Date.now itself, whoever holds a reference to it).
      const realNow = Date.now.bind(Date);
      let stepMs = 0;
      jest.spyOn(Date, 'now').mockImplementation(() => realNow() + stepMs);
      const { ack, rounds } = ackOn({ url: primary.url }, { replicas: 'auto', timeoutMs: 1000 });
      await ack.start(); // counts the replica once
      ack.stop(); // and no more: the step lands before any later count
      stepMs = 3_600_000;
      await ack.after([keys.replicaFence(4)]);
      // A round was sent (acked, or timed out while the replica's first sync runs); none: the wait was skipped.
      expect(rounds).toHaveLength(1);
    } finally {
      jest.restoreAllMocks();
      r.disconnect();
      p.disconnect();
    }
  });
});

describe('a Cluster with a replica per master', () => {
  let cluster: RedisCluster;
  beforeAll(async () => {
    cluster = await startCluster({ masters: 3, replicasPerMaster: 1 });
  }, 60_000);
  afterAll(async () => {
    await closeConnectors();
    await cluster?.stop();
  });

  test("auto waits for the replica of the key's own master, and only that one", async () => {
    // CLUSTER SLOTS names a replica once its master knows it (gossip, a moment after create).
    const admin = cluster.client(0);
    const replicated = async () => ((await admin.call('CLUSTER', 'SLOTS')) as unknown[][]).every((range) => range.length === 4);
    for (let i = 0; i < 100 && !(await replicated()); i++) await new Promise((r) => setTimeout(r, 100));
    admin.disconnect();
    // WAIT's timeout far above a round trip: a round that times out here waited for a frozen replica.
    const { ack, client, rounds } = ackOn({ cluster: { nodes: cluster.urls } }, { replicas: 'auto', timeoutMs: 20_000 });
    const c = client as Cluster;
    if (c.status !== 'ready') await new Promise((r) => c.once('ready', r));
    await ack.start();
    const fence = keys.replicaFence(0);
    const slotOf = async (key: string) => Number(await c.cluster('KEYSLOT', key));
    const slot = await slotOf(fence);
    let other: string | undefined;
    for (const k of keys.replicaFences()) if (c.slots[await slotOf(k)]![0] !== c.slots[slot]![0]) other = k;
    const otherSlot = await slotOf(other!);
    // The client's slot map came from whichever node answered first, which may not have known the replicas yet
    // (gossip): refresh it until it lists one for both keys' masters, as ioredis does by itself every few seconds.
    const listed = () => (c.slots[slot]?.length ?? 0) >= 2 && (c.slots[otherSlot]?.length ?? 0) >= 2;
    for (let i = 0; i < 100 && !listed(); i++) {
      await new Promise<void>((r) => c.refreshSlotsCache(() => r()));
      await new Promise((r) => setTimeout(r, 100));
    }
    const owners = c.slots[slot]!;
    expect(owners.length).toBe(2);
    expect(c.slots[otherSlot]!.length).toBe(2);
    const replica = cluster.ports.indexOf(Number(owners[1]!.split(':')[1]));
    await ack.after([fence]);
    expect(rounds).toEqual(['acked']);

    // Its replica frozen until the test resumes it (not for a time, which a loaded machine stretches): the
    // other master's round is acknowledged meanwhile (it does not wait for this replica: no timeout), while
    // this key's wait is still open; it ends once the replica resumes and acknowledges.
    const pid = cluster.pid(replica)!;
    let mineDone = false;
    process.kill(pid, 'SIGSTOP');
    let mine: Promise<void>;
    try {
      mine = ack.after([fence]).then(() => {
        mineDone = true;
      });
      await ack.after([other!]);
      expect(rounds).toEqual(['acked', 'acked']);
      expect(mineDone).toBe(false);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await mine;
    expect(rounds).toEqual(['acked', 'acked', 'acked']);
  }, 60_000);
});
