import { Cluster } from 'ioredis';
import type { Keys } from '../redis/keys.ts';
import { type RedisClient, script } from '../redis/scripts.ts';

const setMark = script('bucket-mark-set');

/**
 * Per-bucket data-loss markers (Keys.bucketMarker). On a Redis Cluster the buckets spread over every master and
 * the epoch marker lives on one of them: one other master coming back empty (restarted without persistence, a
 * failover to an empty replica) took its buckets' tasks, leases, approvals and audit chain heads while the epoch
 * held, and nothing noticed: the next record on such a chain started it again at seq 1, forking it against the
 * export (test/topologies/shard-loss.test.ts). One small key per bucket, in the bucket's slot, goes with that
 * master's data; the data-loss check reads them every second (DataLossMonitor).
 */

/** Field of Keys.meta set once every bucket's marker was written for this dataset (a dataset of a release before had none). */
const MARKED_FIELD = 'bucketMarkers';

/** A marker's value while the recovery of its bucket's loss is under way: the loss's id follows. */
export const RECOVERING = 'recovering:';

/** Whether a marker's value says its bucket holds its data (present, and not being recovered). */
export const isPresent = (mark: string | null | undefined): boolean => typeof mark === 'string' && !mark.startsWith(RECOVERING);

/**
 * Every bucket's marker, in bucket order. One MGET on one node; on a Cluster one GET per bucket, sent together
 * (keys of different slots cannot share a command, and a pipeline must stay on one node): 16 small commands a
 * second per instance, answered in one round trip per master.
 */
export async function readMarks(redis: RedisClient, keys: Keys): Promise<(string | null)[]> {
  const all = Array.from({ length: keys.buckets }, (_, b) => keys.bucketMarker(b));
  if (!(redis instanceof Cluster)) return await redis.mget(all);
  return await Promise.all(all.map((k) => redis.get(k)));
}

/** Whether this dataset's markers were written (Keys.meta); read with the data-loss check's other global keys. */
export function markedFlag(redis: RedisClient, keys: Keys): Promise<string | null> {
  return redis.hget(keys.meta(), MARKED_FIELD);
}

/**
 * Writes the markers of `buckets` (all when omitted) with `value`, then the flag. `nx`: only where none is (a
 * dataset written by a release without markers, or whose global slot was lost and set up again: a bucket's
 * marker that survived, or one being recovered, stays). `seen` (by bucket): only where the marker still holds what
 * the recovery saw before it continued the chains (bucket-mark-set.lua); a marker gone since is a bucket lost again
 * meanwhile, left gone for the next check. Resolves the buckets refused; the flag is written only when none was.
 * Markers before the flag: a flag never stands for a marker not written.
 */
export async function writeMarks(
  redis: RedisClient,
  keys: Keys,
  value: string,
  opts: { buckets?: number[]; nx?: boolean; seen?: (string | null)[] } = {},
): Promise<number[]> {
  const buckets = opts.buckets ?? Array.from({ length: keys.buckets }, (_, b) => b);
  const { seen } = opts;
  const done = await Promise.all(
    buckets.map(async (b) => {
      const key = keys.bucketMarker(b);
      if (seen) return (await setMark.run(redis, [key], [seen[b] ?? '', value])) === 1;
      await (opts.nx ? redis.set(key, value, 'NX') : redis.set(key, value));
      return true;
    }),
  );
  const refused = buckets.filter((_, i) => !done[i]);
  if (refused.length === 0) await redis.hset(keys.meta(), MARKED_FIELD, '1');
  return refused;
}
