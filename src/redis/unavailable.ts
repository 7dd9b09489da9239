/**
 * Whether an error means "Redis could not be reached or did not answer in
 * time" (a failover in progress, a paused or restarting server, a cluster
 * without a majority): the broker cannot decide anything, so the caller gets
 * 503 not_ready and retries, never a 500.
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
  // Replies Redis gives while it cannot serve: loading after a restart, a cluster that is down, a replica, a paused write.
  if (/^(LOADING|CLUSTERDOWN|READONLY|MASTERDOWN|TRYAGAIN|NOREPLICAS|BUSY )/.test(message)) return true;
  return ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH'].includes(e.code ?? '');
}
