/** `Retry-After` (seconds) of a 503 not_ready while Redis cannot serve: a failover, a restart or a slot move lasts seconds. */
export const REDIS_RETRY_AFTER_S = 1;

/**
 * Whether an error means the broker cannot use Redis right now (a failover in
 * progress, a paused or restarting server, a cluster without a majority, a
 * Cluster slot being moved, a full Redis refusing writes, an ACL that lost a
 * command): the broker cannot decide anything, so the caller gets 503
 * not_ready and retries, never a 500 (which the contract keeps for the
 * broker's own bugs). /readyz says which.
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
  // Replies Redis gives while it cannot serve (isRefusal), TRYAGAIN included: also what a script answers when its slot
  // moves (src/redis/lua/lib/slot.lua).
  if (isRefusal(message)) return true;
  // A Cluster's redirections still bouncing when ioredis gives up (a reshard in progress: ASK, TRYAGAIN), and what
  // Redis says when a script reaches a key of a slot that is moving or not served: the data is there, not here yet.
  if (/^Too many Cluster redirections/.test(message)) return true;
  if (/Script attempted to access (a non local key|a slot not served)|undeclared keys were accessed during rehashing/.test(message))
    return true;
  return ['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH'].includes(e.code ?? '');
}

/**
 * Replies Redis gives while it cannot serve: loading after a restart, a cluster that is down, a replica, a paused
 * write, a script running too long; a full Redis under `noeviction` (OOM) or one whose last RDB save failed
 * (MISCONF) refusing every write; a command or key the ACL user may not use.
 */
function isRefusal(message: string): boolean {
  const reply = redisReply(message);
  return (
    /^(LOADING|CLUSTERDOWN|READONLY|MASTERDOWN|TRYAGAIN|NOREPLICAS|BUSY |OOM |MISCONF |NOPERM )/.test(reply) || isPermissionReply(reply)
  );
}

/**
 * The reply Redis gave to the command itself, out of a script error or an aborted transaction. Redis 7 passes a
 * refused command's reply through a script (`OOM command not allowed ... script: <sha>, on @user_script:12.`);
 * Redis 6 wraps it (`ERR Error running script (call to f_<sha>): @user_script:12: -OOM command not allowed ...`);
 * a MULTI whose queued command was refused ends `EXECABORT Transaction discarded because of: OOM ...`.
 */
export function redisReply(message: string): string {
  const wrapped =
    /^ERR Error running script \(call to f_[0-9a-f]+\): (?:@user_script:\s*\d+:\s*)+-?(.*)$/s.exec(message) ??
    /^EXECABORT Transaction discarded because of: (.*)$/s.exec(message);
  return wrapped ? wrapped[1]! : message;
}

/**
 * A refusal by the ACL: `NOPERM ...` for a command sent directly; inside a script Redis 7.0 says `ERR The user
 * executing the script can't run this command or subcommand` (or `can't access at least one of the keys`),
 * later versions `... ACL failure in script: ...`.
 */
export function isPermissionReply(message: string): boolean {
  return /^NOPERM |^ERR (The user executing the script can't |ACL failure in script)/.test(redisReply(message));
}
