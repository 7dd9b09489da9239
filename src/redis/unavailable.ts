/** `Retry-After` (seconds) of a 503 not_ready while Redis cannot serve: a failover, a restart or a slot move lasts seconds. */
export const REDIS_RETRY_AFTER_S = 1;

/**
 * Whether an error means "Redis could not be reached or did not answer in
 * time" (a failover in progress, a paused or restarting server, a cluster
 * without a majority, a Cluster slot being moved): the broker cannot decide
 * anything, so the caller gets 503 not_ready and retries, never a 500.
 */
export function isRedisUnavailable(err: unknown): boolean {
  const e = err as { name?: string; message?: string; code?: string } | undefined;
  if (!e || typeof e !== 'object') return false;
  const name = e.name ?? '';
  const message = e.message ?? '';
  if (['MaxRetriesPerRequestError', 'ClusterAllFailedError', 'AbortError', 'RedisStalledError'].includes(name)) return true;
  if (
    /^(Command timed out|Connection is closed|Stream isn't writeable|Failed to refresh slots cache|None of startup nodes is available)/.test(
      message,
    )
  )
    return true;
  // Replies Redis gives while it cannot serve: loading after a restart, a cluster that is down, a replica, a paused write,
  // a slot being moved (TRYAGAIN, also what a script answers when its slot moves: src/redis/lua/lib/slot.lua).
  if (/^(LOADING|CLUSTERDOWN|READONLY|MASTERDOWN|TRYAGAIN|NOREPLICAS|BUSY )/.test(message)) return true;
  // A Cluster's redirections still bouncing when ioredis gives up (a reshard in progress: ASK, TRYAGAIN), and what
  // Redis says when a script reaches a key of a slot that is moving or not served: the data is there, not here yet.
  if (/^Too many Cluster redirections/.test(message)) return true;
  if (/Script attempted to access (a non local key|a slot not served)|undeclared keys were accessed during rehashing/.test(message))
    return true;
  return ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH'].includes(e.code ?? '');
}
