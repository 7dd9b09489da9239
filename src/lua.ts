import { createHash } from 'node:crypto';
import type { Redis } from 'ioredis';

/**
 * A Lua script called by its SHA (EVALSHA), loading it on first use or after
 * a Redis restart (NOSCRIPT). Sending the body with every EVAL costs Redis a
 * hash of the script per call on the hottest paths.
 */
export function luaScript(lua: string): (redis: Redis, numKeys: number, ...args: (string | number)[]) => Promise<unknown> {
  const sha = createHash('sha1').update(lua).digest('hex');
  return async (redis, numKeys, ...args) => {
    try {
      return await redis.evalsha(sha, numKeys, ...args);
    } catch (err) {
      if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err;
      return await redis.eval(lua, numKeys, ...args);
    }
  };
}
