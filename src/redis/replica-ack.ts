import { performance } from 'node:perf_hooks';
import calculateSlot from 'cluster-key-slot';
import { Cluster, type Redis } from 'ioredis';
import type { Logger } from '../logger.ts';
import type { RedisClient } from './scripts.ts';

/**
 * How often the master's replicas are counted (`ROLE`) for `replicas: auto` on one node or Sentinel.
 * Every second: a replica that finishes its sync (or a broker that starts while it syncs) is waited
 * for within a second of being online, not after up to one more poll interval. ROLE costs Redis
 * almost nothing.
 */
const ROLE_POLL_MS = 1000;
/** `auto` keeps waiting for a replica this long after one was last seen, so a replica's brief reconnect is not a gap. */
const AUTO_WINDOW_MS = 60_000;
const WARN_INTERVAL_MS = 10_000;

export interface ReplicaAckOptions {
  /** `auto`: one replica while the master has had one within the last minute; 0: never wait; n: n replicas. */
  replicas: 'auto' | number;
  /** Longest a caller waits (Redis's `WAIT` timeout); past it the caller goes on, with a warning. */
  timeoutMs: number;
  logger: Logger;
  /** Counts each round by result: `acked`, `timeout` (fewer replicas than wanted in time), `error`. */
  onRound?: (result: 'acked' | 'timeout' | 'error') => void;
  now?: () => number;
}

interface Round {
  key: string;
  wanted: number;
  done: Promise<void>;
}

/**
 * Waits until writes a master has already acknowledged have reached its
 * replicas: for the writes a failover must not lose, because something
 * outside Redis depends on them. An upstream lease's intent is written before
 * the upstream call and its activation before a Vault credential is extended
 * and handed out; a task's end, a lease's revoke and an admin's kill switch
 * are promised to the caller. Without this, a Sentinel (or managed) failover
 * in the milliseconds before replication can promote a replica without them,
 * and what was made upstream, or promised ended, outlives the task.
 *
 * How: Redis's `WAIT n timeout` waits for the replicas to acknowledge the
 * writes of the connection it is sent on, and blocks that connection while
 * it waits. So it runs on a connection of its own (the API's commands never
 * queue behind it), after a write of its own on the same master (`INCR` of a
 * fence key in the caller's hash slot): that write comes after the caller's,
 * which the master had already applied, so once the replicas have the fence
 * they have the caller's write too. Callers of one event-loop turn share one
 * fence and one `WAIT` per master.
 *
 * `WAIT` does not make Redis strongly consistent: a replica that has the
 * write may still not be the one promoted. Sentinel promotes the replica
 * with the most data among those of equal priority, which has it.
 */
export class ReplicaAck {
  private readonly pending = new Map<Redis, Round>();
  private readonly lastSeen = new Map<Redis, number>();
  private readonly now: () => number;
  private poller: NodeJS.Timeout | undefined;
  private lastWarn = Number.NEGATIVE_INFINITY;

  private readonly client: RedisClient;
  private readonly opts: ReplicaAckOptions;

  constructor(client: RedisClient, opts: ReplicaAckOptions) {
    this.client = client;
    this.opts = opts;
    // Monotonic: whether a replica was seen within AUTO_WINDOW_MS is a duration in this process. On the wall
    // clock, a step forward of over a minute skipped every wait until the next count (test/redis/replica-ack.test.ts).
    this.now = opts.now ?? (() => performance.now());
  }

  /** For `auto` on one node or Sentinel: counts the master's replicas now and every second. */
  async start(): Promise<void> {
    if (this.opts.replicas !== 'auto' || this.client instanceof Cluster) return;
    await this.countReplicas();
    this.poller = setInterval(() => void this.countReplicas(), ROLE_POLL_MS);
    this.poller.unref();
  }

  stop(): void {
    clearInterval(this.poller);
    this.poller = undefined;
  }

  /**
   * Returns once the writes already acknowledged on the masters of
   * `fenceKeys` have reached the wanted number of replicas, or the timeout
   * has passed. Each key names a hash slot (use {@link Keys.replicaFence}).
   * Never throws: a replica that does not answer costs the timeout and a
   * warning, not the caller's request.
   */
  async after(fenceKeys: readonly string[]): Promise<void> {
    if (this.opts.replicas === 0) return;
    const rounds: Promise<void>[] = [];
    for (const key of fenceKeys) {
      const at = this.nodeOf(key);
      if (!at || at.replicas === 0) continue;
      rounds.push(this.join(at.node, key, at.replicas));
    }
    if (rounds.length > 0) await Promise.all(rounds);
  }

  /** The master connection that serves `key`, and how many replicas to wait for there. */
  private nodeOf(key: string): { node: Redis; replicas: number } | undefined {
    const fixed = this.opts.replicas === 'auto' ? undefined : this.opts.replicas;
    if (!(this.client instanceof Cluster)) {
      const seen = this.lastSeen.get(this.client);
      const auto = seen !== undefined && this.now() - seen <= AUTO_WINDOW_MS ? 1 : 0;
      return { node: this.client, replicas: fixed ?? auto };
    }
    // ioredis keeps CLUSTER SLOTS as [master, ...replicas] node keys per slot.
    const owners = this.client.slots[calculateSlot(key)];
    const master = owners?.[0];
    if (!master) return undefined;
    const node = this.client.nodes('master').find((n) => `${n.options.host}:${n.options.port}` === master);
    return node ? { node, replicas: fixed ?? (owners.length > 1 ? 1 : 0) } : undefined;
  }

  private join(node: Redis, key: string, wanted: number): Promise<void> {
    const open = this.pending.get(node);
    if (open) {
      open.wanted = Math.max(open.wanted, wanted);
      return open.done;
    }
    const round: Round = { key, wanted, done: Promise.resolve() };
    // Sent once this turn's callers have joined; a caller arriving after that waits for the next round.
    round.done = new Promise<void>((resolve) => setImmediate(resolve)).then(() => this.send(node, round));
    this.pending.set(node, round);
    return round.done;
  }

  private async send(node: Redis, round: Round): Promise<void> {
    this.pending.delete(node);
    try {
      const res = await node.pipeline().incr(round.key).call('WAIT', round.wanted, this.opts.timeoutMs).exec();
      const err = res?.find(([e]) => e)?.[0];
      if (err) throw err;
      const acked = Number(res?.[1]?.[1]);
      if (acked >= round.wanted) return this.opts.onRound?.('acked');
      this.opts.onRound?.('timeout');
      this.warn({ acked, wanted: round.wanted, timeoutMs: this.opts.timeoutMs }, 'replicas did not acknowledge in time; going on');
    } catch (err) {
      this.opts.onRound?.('error');
      this.warn({ err: (err as Error).message }, 'could not wait for replicas; going on');
    }
  }

  private async countReplicas(): Promise<void> {
    const node = this.client as Redis;
    try {
      const role = (await node.call('ROLE')) as unknown[];
      if (String(role[0]) === 'master' && Array.isArray(role[2]) && role[2].length > 0) this.lastSeen.set(node, this.now());
    } catch {
      // Unreachable now: the last count stands; the commands themselves report the outage.
    }
  }

  private warn(fields: Record<string, unknown>, msg: string): void {
    const t = this.now();
    if (t - this.lastWarn < WARN_INTERVAL_MS) return;
    this.lastWarn = t;
    this.opts.logger.warn(fields, msg);
  }
}
