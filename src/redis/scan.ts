import type { RedisClient } from './scripts.ts';

/**
 * Walks a set or sorted set in pages of member ids with SSCAN / ZSCAN: no page
 * holds Redis for long, members added or removed meanwhile may or may not be
 * seen, members present throughout are seen at least once (Redis's SCAN
 * guarantee). Background passes (the reconciler) read their work lists this way.
 */
export async function* scanIds(redis: RedisClient, key: string, type: 'set' | 'zset', pageSize = 500): AsyncGenerator<string[]> {
  let cursor = '0';
  do {
    if (type === 'set') {
      const [next, ids] = await redis.sscan(key, cursor, 'COUNT', pageSize);
      cursor = next;
      if (ids.length > 0) yield ids;
    } else {
      const [next, flat] = await redis.zscan(key, cursor, 'COUNT', pageSize);
      cursor = next;
      const ids = flat.filter((_, i) => i % 2 === 0);
      if (ids.length > 0) yield ids;
    }
  } while (cursor !== '0');
}
