import { z } from 'zod';
import { parseRedisUrl, RedisUrlError, type RedisEndpoint } from '../redis/url.ts';
import { secretSourceSchema } from './common.ts';

const SENTINEL_PORT = 26379;

/** A `redis://` / `rediss://` URL that {@link parseRedisUrl} accepts. */
function redisUrl(defaultPort: number) {
  return z.string().superRefine((s, ctx) => {
    try {
      parseRedisUrl(s, defaultPort);
    } catch (err) {
      if (!(err instanceof RedisUrlError)) throw err;
      ctx.addIssue({ code: 'custom', message: err.message });
    }
  });
}

/**
 * A PEM certificate or key: inline (usually `${VAR}`) or `{ file }`. Same
 * shape as every other secret in the config.
 */
const pemSource = secretSourceSchema;

/**
 * TLS settings for every `rediss://` connection (single node, every cluster
 * node, sentinels and the master they name).
 */
export const redisTlsSchema = z
  .strictObject({
    /** CA bundle (PEM) to trust instead of Node's public roots: for a private CA. */
    ca: pemSource.optional(),
    /** Client certificate and key (PEM) when the server sets `tls-auth-clients yes`. */
    cert: pemSource.optional(),
    key: secretSourceSchema.optional(),
    /** Name to verify the server certificate against when it differs from the host in the URL. */
    servername: z.string().min(1).max(253).optional(),
  })
  .superRefine((t, ctx) => {
    if ((t.cert === undefined) !== (t.key === undefined)) {
      ctx.addIssue({ code: 'custom', path: [t.cert === undefined ? 'cert' : 'key'], message: 'cert and key go together' });
    }
  });
export type RedisTlsConfig = z.infer<typeof redisTlsSchema>;

export const redisClusterSchema = z.strictObject({
  /** Seed nodes; the client discovers the rest from CLUSTER SLOTS. */
  nodes: z.array(redisUrl(6379)).min(1).max(64),
});

export const redisSentinelSchema = z.strictObject({
  /** Master group name, as in `sentinel monitor <name> ...`. */
  name: z
    .string()
    .min(1)
    .max(128)
    .regex(/^[A-Za-z0-9._-]+$/, 'letters, digits, ".", "_" and "-" only'),
  /** Sentinel addresses (`redis://host:26379`; `rediss://` for TLS to sentinels and to the master). */
  sentinels: z.array(redisUrl(SENTINEL_PORT)).min(1).max(32),
  /** ACL user on the master and replicas; absent means `default`. */
  username: z.string().min(1).max(256).optional(),
  /** Password of the master and replicas (`requirepass` or the ACL user's). */
  password: secretSourceSchema.optional(),
  /** ACL user on the sentinels themselves. */
  sentinelUsername: z.string().min(1).max(256).optional(),
  /** Password of the sentinels (their own `requirepass`), if any. */
  sentinelPassword: secretSourceSchema.optional(),
});

/** The `redis` section: exactly one of `url`, `cluster`, `sentinel`. */
export const redisConfigSchema = z
  .strictObject({
    url: redisUrl(6379).optional(),
    cluster: redisClusterSchema.optional(),
    sentinel: redisSentinelSchema.optional(),
    prefix: z
      .string()
      .min(1)
      .max(64)
      .regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, "_" and "-" only')
      .default('jit'),
    /** API and worker commands fail after this long instead of waiting on a stalled Redis. */
    commandTimeoutMs: z.int().min(50).max(60_000).default(2000),
    /** How long one connection attempt (TCP + TLS + AUTH) may take. */
    connectTimeoutMs: z.int().min(100).max(60_000).default(5000),
    /**
     * Task trees are spread over this many buckets (hash tags): each a slot of its own, so on a
     * Cluster they spread over every master. Fixed for a dataset: the broker refuses to start
     * when it differs from what the data was written with.
     */
    buckets: z.int().min(1).max(1024).default(16),
    tls: redisTlsSchema.optional(),
    /**
     * Writes a failover must not lose (an upstream lease's intent and activation, a task's end, a
     * revoke, the kill switch) wait until replicas have them, at most `timeoutMs`, then go on with a
     * warning. `auto`: one replica whenever the master has had one in the last minute (no wait without
     * replicas); 0: never wait.
     */
    replicaAck: z
      .strictObject({
        replicas: z.union([z.literal('auto'), z.int().min(0).max(16)]).default('auto'),
        timeoutMs: z.int().min(10).max(10_000).default(1000),
      })
      .prefault({}),
  })
  .superRefine((r, ctx) => {
    const set = (['url', 'cluster', 'sentinel'] as const).filter((k) => r[k] !== undefined);
    if (set.length !== 1) {
      ctx.addIssue({
        code: 'custom',
        message:
          set.length === 0
            ? 'needs exactly one of redis.url, redis.cluster or redis.sentinel'
            : `set exactly one of redis.url, redis.cluster or redis.sentinel, not ${set.map((k) => `redis.${k}`).join(' and ')}`,
      });
      return;
    }
    // zod runs this refinement even when a URL failed its own check (that issue is reported first), so bad URLs are skipped here.
    if (r.cluster) {
      const nodes = r.cluster.nodes.map((n) => tryParse(n, 6379));
      const first = nodes.find((n) => n !== undefined);
      nodes.forEach((n, i) => {
        if (!n || !first) return;
        if (n.db !== undefined && n.db !== 0) {
          ctx.addIssue({ code: 'custom', path: ['cluster', 'nodes', i], message: 'Redis Cluster has only database 0' });
        }
        if (!sameAccess(n, first)) {
          ctx.addIssue({
            code: 'custom',
            path: ['cluster', 'nodes', i],
            message: 'every cluster node needs the same scheme (redis:// or rediss://), user and password as the first',
          });
        }
      });
    }
    if (r.sentinel) {
      const sentinels = r.sentinel.sentinels.map((s) => tryParse(s, SENTINEL_PORT));
      const first = sentinels.find((s) => s !== undefined);
      sentinels.forEach((s, i) => {
        if (!s || !first) return;
        if (s.username !== undefined || s.password !== undefined) {
          ctx.addIssue({
            code: 'custom',
            path: ['sentinel', 'sentinels', i],
            message: 'put sentinel credentials in redis.sentinel.sentinelUsername / sentinelPassword, not in the URL',
          });
        }
        if (s.db !== undefined)
          ctx.addIssue({ code: 'custom', path: ['sentinel', 'sentinels', i], message: 'a sentinel URL has no database' });
        if (s.tls !== first.tls) {
          ctx.addIssue({ code: 'custom', path: ['sentinel', 'sentinels', i], message: 'all sentinels use redis://, or all rediss://' });
        }
      });
    }
    if (r.tls && !usesTls(r)) {
      ctx.addIssue({ code: 'custom', path: ['tls'], message: 'is set, but no URL in the redis section uses rediss://' });
    }
  });
export type RedisConfig = z.infer<typeof redisConfigSchema>;

function tryParse(url: string, defaultPort: number): RedisEndpoint | undefined {
  try {
    return parseRedisUrl(url, defaultPort);
  } catch {
    return undefined;
  }
}

function sameAccess(a: RedisEndpoint, b: RedisEndpoint): boolean {
  return a.tls === b.tls && a.username === b.username && a.password === b.password;
}

/** Whether the configured topology talks TLS (any `rediss://` URL). */
export function usesTls(r: Pick<RedisConfig, 'url' | 'cluster' | 'sentinel'>): boolean {
  if (r.url) return tryParse(r.url, 6379)?.tls === true;
  if (r.cluster) return r.cluster.nodes.some((n) => tryParse(n, 6379)?.tls);
  if (r.sentinel) return r.sentinel.sentinels.some((s) => tryParse(s, SENTINEL_PORT)?.tls);
  return false;
}

/** The topology a valid `redis` section describes. */
export function redisTopology(r: Pick<RedisConfig, 'url' | 'cluster' | 'sentinel'>): 'single' | 'cluster' | 'sentinel' {
  if (r.cluster) return 'cluster';
  if (r.sentinel) return 'sentinel';
  return 'single';
}

export { SENTINEL_PORT };
