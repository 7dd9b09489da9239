import { Redis } from 'ioredis';

/**
 * Opens a Redis connection. `maxRetriesPerRequest: null` is what BullMQ needs
 * for blocking connections; API connections give up after two reconnects so a
 * request never hangs for long on a dead Redis (readyz reports it).
 */
export function connectRedis(url: string, opts: { forBullmq?: boolean; name?: string } = {}): Redis {
  return new Redis(url, {
    maxRetriesPerRequest: opts.forBullmq ? null : 2,
    connectionName: opts.name,
    lazyConnect: false,
    // Commands issued in the same tick share one socket write: under load the
    // syscalls, not Redis, were the broker's largest CPU cost.
    enableAutoPipelining: !opts.forBullmq,
  });
}
