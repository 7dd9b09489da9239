import { performance } from 'node:perf_hooks';
import { isIP } from 'node:net';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import { Cluster, type ClusterOptions, type Command, Redis, type RedisOptions } from 'ioredis';
import { readSecret } from '../config/load.ts';
import { redisTopology, SENTINEL_PORT, type RedisConfig } from '../config/redis.ts';
import type { Logger } from '../logger.ts';
import type { RedisClient } from './scripts.ts';
import { coalesceWrites } from './coalesce.ts';
import { handleResubscribes } from './resubscribe.ts';
import { guardStalls } from './stall-guard.ts';
import { endpointLabel, parseRedisUrl, type RedisEndpoint } from './url.ts';
import pTimeout from 'p-timeout';

/** A connection to one node (single or through Sentinel) or to a whole Redis Cluster (the type the Lua scripts run on). */
export type { RedisClient };

export type RedisTopology = 'single' | 'cluster' | 'sentinel';

/** What the connector talks to, safe to log: addresses and user name, never a password. */
export interface RedisDescription {
  topology: RedisTopology;
  /** `host:port` of the node, the cluster seed nodes, or the sentinels. */
  nodes: string[];
  tls: boolean;
  /** ACL user on the data nodes, when not `default`. */
  user?: string;
  /** Sentinel master group name. */
  master?: string;
}

/**
 * Opens Redis connections for one configured topology. Every call opens a new
 * connection (a separate socket per role is what keeps a blocked BullMQ
 * worker or a subscriber from stalling API commands); {@link close} closes
 * every one it opened.
 */
export interface RedisConnector {
  readonly topology: RedisTopology;
  /**
   * For API and worker commands: a command that gets no answer within
   * `redis.commandTimeoutMs` fails ("Command timed out") instead of hanging
   * the request, on a Cluster also while no node is reachable; at most two
   * retries over reconnects; the commands of one event-loop turn go out in
   * one socket write (coalesce.ts), without ioredis's auto-pipelining.
   */
  command(name: string, opts?: CommandOptions): RedisClient;
  /** For BullMQ queues and workers: no command timeout, unlimited retries (`maxRetriesPerRequest: null`), as BullMQ requires. */
  bullmq(name: string): RedisClient;
  /**
   * For SUBSCRIBE. On a Cluster this is a Cluster client whose subscriber
   * connection sits on one node; Redis Cluster forwards every PUBLISH to all
   * nodes, so it receives what is published through any node.
   */
  subscriber(name: string): RedisClient;
  /** One line for logs and errors: `cluster 10.0.0.1:6379,10.0.0.2:6379 (tls, user broker)`. Never a password. */
  describe(): string;
  /** The same as data, for structured logs. */
  readonly description: RedisDescription;
  /** Closes every connection this connector opened (QUIT, then a hard disconnect after a grace period). */
  close(): Promise<void>;
}

/** For a connection that sends commands Redis holds on purpose (a replica `WAIT`). */
export interface CommandOptions {
  /** Added to `redis.commandTimeoutMs` for this connection's commands: the longest a command is held on purpose. */
  blockMs?: number;
}

const CLOSE_GRACE_MS = 2000;
const ERROR_LOG_INTERVAL_MS = 10_000;

type Kind = 'command' | 'bullmq' | 'subscriber';

/**
 * Builds a {@link RedisConnector} from the validated `redis` config section.
 * Reads password and TLS files once, here, so a missing file fails startup.
 */
export function createConnector(config: RedisConfig, deps: { logger: Logger }): RedisConnector {
  const topology = redisTopology(config);
  const tls = tlsOptions(config);
  const sentinelSecrets = config.sentinel ? sentinelAuth(config.sentinel) : undefined;
  const description = Object.freeze(describe(config));
  const opened: RedisClient[] = [];
  let closed = false;
  let watcher: SwitchMasterWatcher | undefined;

  const common = (kind: Kind, name: string, timeoutMs: number): RedisOptions => ({
    connectionName: name,
    connectTimeout: config.connectTimeoutMs,
    // Reconnect quickly and forever: a failover or a restart should cost about a second, not ioredis's default 5 s back-off.
    retryStrategy: (times: number) => Math.min(50 * 2 ** Math.min(times, 5), 1000) + Math.floor(Math.random() * 100),
    // READONLY means we reached a replica (a demoted master after a failover): reconnect, which
    // asks Sentinel for the master again, and resend the command, which the replica did not run.
    reconnectOnError: (err: Error) => (err.message.startsWith('READONLY') ? 2 : false),
    // After a disconnect (a close, a master switch) a socket that does not close by itself, such as a
    // hung server or a half-done TLS handshake, is destroyed this much later instead of ioredis's 2 s.
    disconnectTimeout: 500,
    // No auto-pipelining: it sends at most one batch per slot at a time (a command waits for the batch
    // in flight to come back) and its chained batches keep each other's garbage alive: at 2,000
    // issuances/s the young-generation GC promoted ~4 MB per scavenge with it and ~5 KB without, GC
    // time halved, and the broker issued more per second (docs/benchmarks.md, "The tail at 2,000/s").
    ...(kind === 'command'
      ? { commandTimeout: timeoutMs, maxRetriesPerRequest: 2, enableAutoPipelining: false }
      : { maxRetriesPerRequest: null }),
  });

  /** On a TLS Cluster: one handshake with the first node, to say why the slots could not be read. */
  const clusterTlsDiagnosis = (): (() => Promise<string | undefined>) | undefined => {
    const first = config.cluster ? parseRedisUrl(config.cluster.nodes[0]!) : undefined;
    if (!first?.tls) return undefined;
    return () => tlsHandshakeError(first.host, first.port, tls, config.connectTimeoutMs);
  };

  const track = <T extends RedisClient>(client: T, name: string, kind: Kind, timeoutMs: number): T => {
    if (closed) {
      client.disconnect();
      throw new Error('Redis connector is closed');
    }
    logErrors(client, name, deps.logger, client instanceof Cluster ? clusterTlsDiagnosis() : undefined);
    if (kind === 'command') {
      const guard = (r: Redis) => {
        coalesceWrites(r);
        guardStalls(r, { timeoutMs, logger: deps.logger });
      };
      if (client instanceof Cluster) client.on('+node', guard);
      else guard(client as Redis);
    }
    if (kind === 'subscriber' && client instanceof Redis) handleResubscribes(client, (err) => subscribeFailed(deps.logger, name, err));
    if (kind === 'bullmq') {
      // BullMQ copies this client for its blocking commands: tracked too, so close() ends the copies
      // (BullMQ's own close waits forever on a copy that is reconnecting).
      const duplicate = client.duplicate.bind(client) as (...a: unknown[]) => RedisClient;
      (client as { duplicate: unknown }).duplicate = (...a: unknown[]) => track(duplicate(...a), name, kind, timeoutMs);
    }
    opened.push(client);
    return client;
  };

  const open = (kind: Kind, name: string, opts: CommandOptions = {}): RedisClient => {
    const timeoutMs = config.commandTimeoutMs + (opts.blockMs ?? 0);
    if (config.url) {
      const e = parseRedisUrl(config.url);
      return track(
        new Redis({
          ...common(kind, name, timeoutMs),
          host: e.host,
          port: e.port,
          db: e.db ?? 0,
          ...credentials(e),
          ...(e.tls ? { tls } : {}),
        }),
        name,
        kind,
        timeoutMs,
      );
    }
    if (config.sentinel) {
      const s = config.sentinel;
      const sentinels = s.sentinels.map((u) => parseRedisUrl(u, SENTINEL_PORT));
      const useTls = sentinels[0]?.tls === true;
      const { username, password, ...toSentinels } = sentinelSecrets ?? {};
      watcher ??= watchSwitchMaster({
        sentinels,
        masterName: s.name,
        auth: toSentinels,
        tls: useTls ? tls : undefined,
        connectTimeoutMs: config.connectTimeoutMs,
        logger: deps.logger,
        // A client still on the old master would keep writing to a master nobody else
        // uses until Sentinel demotes it (at its next INFO poll, up to 10 s): move it now.
        onSwitch: (to) => {
          for (const c of opened) if (c instanceof Redis && !isConnectedTo(c, to)) reconnectIfConnected(c);
        },
      });
      return track(
        new Redis({
          ...common(kind, name, timeoutMs),
          sentinels: sentinels.map((e) => ({ host: e.host, port: e.port })),
          name: s.name,
          role: 'master',
          ...(username ? { username } : {}),
          ...(password ? { password } : {}),
          ...toSentinels,
          ...(useTls ? { tls, sentinelTLS: tls, enableTLSForSentinelMode: true } : {}),
          // Not ioredis's own failoverDetector: on +switch-master it disconnects the connector even
          // while a reconnect is resolving the master, which ends the client for good ("Connection is
          // closed." on every later command). The watcher above only touches connected clients.
          failoverDetector: false,
          sentinelCommandTimeout: config.connectTimeoutMs,
        }),
        name,
        kind,
        timeoutMs,
      );
    }
    const nodes = (config.cluster?.nodes ?? []).map((u) => parseRedisUrl(u));
    const first = nodes[0]!;
    const base = common(kind, name, timeoutMs);
    const { retryStrategy: _nodeRetry, ...redisOptions } = base;
    const options: ClusterOptions = {
      redisOptions: { ...redisOptions, ...credentials(first), ...(first.tls ? { tls } : {}) },
      // Off on a Cluster: auto-pipelined commands wait for a cluster that is not ready in a queue
      // no timeout reaches (see boundCommandTime).
      enableAutoPipelining: false,
      clusterRetryStrategy: (times: number) => Math.min(100 * times, 2000),
      slotsRefreshTimeout: Math.min(config.connectTimeoutMs, 2000),
      // With TLS, keep host names as written so the certificate is checked against them (not a resolved IP).
      ...(first.tls ? { dnsLookup: (address: string, cb: (err: null, address: string) => void) => cb(null, address) } : {}),
    };
    const cluster = new Cluster(
      nodes.map((n) => ({ host: n.host, port: n.port })),
      options,
    );
    if (kind === 'command') boundCommandTime(cluster, timeoutMs);
    return track(cluster, name, kind, timeoutMs);
  };

  return {
    topology,
    command: (name, opts) => open('command', name, opts),
    bullmq: (name) => open('bullmq', name),
    subscriber: (name) => open('subscriber', name),
    describe: () => describeLine(description),
    description,
    async close() {
      closed = true;
      const all = opened.splice(0);
      await Promise.all([...all.map(closeClient), watcher?.close()]);
    },
  };
}

/**
 * ioredis applies `commandTimeout` per node, when a command is written to a
 * node's socket. While the whole cluster is unreachable, commands wait in the
 * Cluster's own offline queue with no timer at all, so a request would hang
 * until Redis came back. Starting the command's timer (once: ioredis never
 * restarts it) as it enters the Cluster bounds its whole life instead:
 * queueing, redirections and the node's reply.
 */
function boundCommandTime(cluster: Cluster, timeoutMs: number): void {
  const send = cluster.sendCommand.bind(cluster);
  cluster.sendCommand = (command: Command, stream?: unknown, node?: unknown) => {
    command.setTimeout(timeoutMs);
    return send(command, stream as Parameters<typeof send>[1], node);
  };
}

interface SwitchMasterWatcher {
  close(): Promise<void>;
}

/**
 * Subscribes to `+switch-master` on every sentinel and calls `onSwitch` with
 * the new master's address when `masterName` moves. A sentinel that goes away
 * is reconnected and resubscribed by ioredis.
 */
function watchSwitchMaster(opts: {
  sentinels: RedisEndpoint[];
  masterName: string;
  auth: { sentinelUsername?: string; sentinelPassword?: string };
  tls: ConnectionOptions | undefined;
  connectTimeoutMs: number;
  logger: Logger;
  onSwitch: (to: { host: string; port: number }) => void;
}): SwitchMasterWatcher {
  let lastSwitch = '';
  const clients = opts.sentinels.map((e) => {
    const c = new Redis({
      host: e.host,
      port: e.port,
      ...(opts.auth.sentinelUsername ? { username: opts.auth.sentinelUsername } : {}),
      ...(opts.auth.sentinelPassword ? { password: opts.auth.sentinelPassword } : {}),
      ...(opts.tls ? { tls: opts.tls } : {}),
      connectionName: 'jit-sentinel-watch',
      connectTimeout: opts.connectTimeoutMs,
      enableReadyCheck: false,
      maxRetriesPerRequest: null,
      retryStrategy: (times: number) => Math.min(100 * times, 2000),
    });
    logErrors(c, `sentinel ${endpointLabel(e)}`, opts.logger);
    handleResubscribes(c, (err) => subscribeFailed(opts.logger, `sentinel ${endpointLabel(e)}`, err));
    c.on('message', (_channel: string, message: string) => {
      // "<master name> <old ip> <old port> <new ip> <new port>"; every sentinel sends it, act once.
      const [name, , , host, port] = message.split(' ');
      if (name !== opts.masterName || !host || !port || message === lastSwitch) return;
      lastSwitch = message;
      opts.logger.info({ master: name, to: `${host}:${port}` }, 'redis sentinel switched master');
      opts.onSwitch({ host, port: Number(port) });
    });
    c.subscribe('+switch-master').catch(() => {});
    return c;
  });
  return {
    close: async () => {
      await Promise.all(clients.map(closeClient));
    },
  };
}

/**
 * A subscriber whose SUBSCRIBE Redis refused (NOPERM: its ACL user lost the channel) hears nothing until it
 * subscribes again; periodic reloads catch up on what it misses. Said, as no outage error would say it.
 */
function subscribeFailed(logger: Logger, name: string, err: Error): void {
  logger.error(
    { redis: name, err: err.message },
    'redis subscriber: Redis refused SUBSCRIBE; its messages are missed until it subscribes again (ioredis does at each reconnect)',
  );
}

/** Whether the client's socket already goes to `to` (then a switch needs no reconnect). */
function isConnectedTo(c: Redis, to: { host: string; port: number }): boolean {
  const stream = (c as unknown as { stream?: { remoteAddress?: string; remotePort?: number } }).stream;
  return stream?.remotePort === to.port && stream.remoteAddress === to.host;
}

/**
 * Reconnects a client that has a live connection; one that is already
 * reconnecting asks Sentinel for the master anyway, and interrupting it is
 * what breaks ioredis's own detector.
 */
function reconnectIfConnected(c: Redis): void {
  if (c.status === 'ready' || c.status === 'connect') c.disconnect(true);
}

/** Sentinel-mode credentials, secrets read from their files once. */
function sentinelAuth(s: NonNullable<RedisConfig['sentinel']>): {
  username?: string;
  password?: string;
  sentinelUsername?: string;
  sentinelPassword?: string;
} {
  return {
    ...(s.username ? { username: s.username } : {}),
    ...(s.password ? { password: readSecret(s.password, 'redis.sentinel.password') } : {}),
    ...(s.sentinelUsername ? { sentinelUsername: s.sentinelUsername } : {}),
    ...(s.sentinelPassword ? { sentinelPassword: readSecret(s.sentinelPassword, 'redis.sentinel.sentinelPassword') } : {}),
  };
}

function credentials(e: RedisEndpoint): Pick<RedisOptions, 'username' | 'password'> {
  return { ...(e.username !== undefined ? { username: e.username } : {}), ...(e.password !== undefined ? { password: e.password } : {}) };
}

/** Node TLS options from `redis.tls`; `{}` (Node's public CAs, hostname checked) when it is absent. */
function tlsOptions(config: RedisConfig): ConnectionOptions {
  const t = config.tls;
  if (!t) return {};
  return {
    ...(t.ca ? { ca: readSecret(t.ca, 'redis.tls.ca') } : {}),
    ...(t.cert ? { cert: readSecret(t.cert, 'redis.tls.cert') } : {}),
    ...(t.key ? { key: readSecret(t.key, 'redis.tls.key') } : {}),
    ...(t.servername ? { servername: t.servername } : {}),
  };
}

function describe(config: RedisConfig): RedisDescription {
  if (config.sentinel) {
    const sentinels = config.sentinel.sentinels.map((u) => parseRedisUrl(u, SENTINEL_PORT));
    return {
      topology: 'sentinel',
      nodes: sentinels.map(endpointLabel),
      tls: sentinels[0]?.tls === true,
      master: config.sentinel.name,
      ...(config.sentinel.username ? { user: config.sentinel.username } : {}),
    };
  }
  const endpoints = config.cluster ? config.cluster.nodes.map((u) => parseRedisUrl(u)) : [parseRedisUrl(config.url ?? '')];
  const first = endpoints[0]!;
  return {
    topology: config.cluster ? 'cluster' : 'single',
    nodes: endpoints.map(endpointLabel),
    tls: first.tls,
    ...(first.username ? { user: first.username } : {}),
  };
}

function describeLine(d: RedisDescription): string {
  const what = d.topology === 'sentinel' ? `sentinel ${d.master} via` : d.topology;
  const extras = [...(d.tls ? ['tls'] : []), ...(d.user ? [`user ${d.user}`] : [])];
  return `${what} ${d.nodes.join(',')}${extras.length ? ` (${extras.join(', ')})` : ''}`;
}

/**
 * Without an 'error' listener ioredis prints every reconnect failure to
 * stderr; with one that logs each, a Redis outage floods the log. One line per
 * client per interval says what is wrong without drowning everything else.
 */
export function logErrors(
  client: RedisClient,
  name: string,
  logger: Logger,
  diagnoseTls?: () => Promise<string | undefined>,
  intervalMs = ERROR_LOG_INTERVAL_MS,
): void {
  let last = Number.NEGATIVE_INFINITY;
  let suppressed = 0;
  client.on('error', (err: Error) => {
    // Monotonic: with Date.now(), a wall clock stepped back an hour kept every error of an outage out of the
    // log for that hour (test/redis/error-log-clock-step.test.ts).
    const now = performance.now();
    if (now - last < intervalMs) {
      suppressed++;
      return;
    }
    last = now;
    const line = { redis: name, err: err.message, ...(suppressed ? { suppressed } : {}) };
    suppressed = 0;
    // ioredis reads a Cluster's slots on a throwaway connection and drops its errors, so an unknown CA
    // or a refused client certificate shows only as this message; a handshake of our own says which.
    if (diagnoseTls && err.message === 'Failed to refresh slots cache.') {
      void diagnoseTls().then((tlsError) => logger.warn({ ...line, ...(tlsError ? { tls: tlsError } : {}) }, 'redis connection error'));
      return;
    }
    logger.warn(line, 'redis connection error');
  });
}

/**
 * Opens a TLS connection with the broker's options and says why it failed:
 * the handshake's error, the server closing it right after (TLS 1.3 refuses a
 * client certificate only then), or a timeout; undefined when it stays up.
 */
export function tlsHandshakeError(host: string, port: number, options: ConnectionOptions, timeoutMs: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ host, port, ...options, ...(options.servername || isIP(host) ? {} : { servername: host }) });
    const done = (why: string | undefined) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(why);
    };
    const timer = setTimeout(() => done(`no TLS handshake within ${timeoutMs} ms`), timeoutMs);
    socket.once('error', (err) => done(err.message));
    socket.once('close', () => done('the server closed the connection after the handshake'));
    // A server that refuses the client certificate says so just after the handshake: wait a moment for it.
    socket.once('secureConnect', () => setTimeout(() => done(undefined), 200).unref());
  });
}

async function closeClient(client: RedisClient): Promise<void> {
  if (client.status === 'end') return;
  // Not connected (Redis down, reconnecting): no QUIT to wait for; stop the reconnect timer now.
  if (client.status !== 'ready') {
    client.disconnect();
    // ioredis leaves a client closed while reconnecting in `reconnecting` and never emits `end`,
    // which BullMQ's close waits for (it would wait forever, its lock timers running): end it.
    const end = (client as unknown as { setStatus?: (s: string) => void }).setStatus;
    if (client.status === 'reconnecting' && typeof end === 'function') end.call(client, 'end');
    return;
  }
  try {
    await pTimeout(
      client.quit().catch(() => {}),
      { milliseconds: CLOSE_GRACE_MS, fallback: () => {} },
    );
  } finally {
    client.disconnect();
  }
}

/**
 * Whether `client` talks to a Redis the broker can write to, within
 * `timeoutMs`: on one node or through Sentinel, `ROLE` says master and a
 * write (`SET probeKey ... PX`) succeeds, which also catches a master that
 * refuses writes (`min-replicas-to-write`, a failed RDB save, OOM); on a
 * Cluster, `CLUSTER INFO` says `cluster_state:ok`. Never throws.
 */
export async function writableMaster(client: RedisClient, opts: { timeoutMs?: number; probeKey?: string } = {}): Promise<boolean> {
  const timeoutMs = opts.timeoutMs ?? 1000;
  const check = async (): Promise<boolean> => {
    if (client instanceof Cluster) {
      const info = String(await client.cluster('INFO'));
      return /^cluster_state:ok\s*$/m.test(info);
    }
    const role = (await client.call('ROLE')) as unknown[];
    if (!Array.isArray(role) || String(role[0]) !== 'master') return false;
    const ok = await client.set(opts.probeKey ?? 'jit:readyz:probe', String(Date.now()), 'PX', 10_000);
    return ok === 'OK';
  };
  try {
    return await pTimeout(check(), { milliseconds: timeoutMs, fallback: () => false });
  } catch {
    return false;
  }
}
