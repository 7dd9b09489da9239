import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { generateMulti } from 'cluster-key-slot';
import type { Cluster, Redis } from 'ioredis';

/** A connection to one Redis, a Sentinel-managed master, or a Cluster. */
export type RedisClient = Redis | Cluster;

const DIR = new URL('./lua/', import.meta.url);

/** One Lua script file: its header says what it does and what each KEYS/ARGV slot holds. */
export interface LuaScript {
  readonly name: string;
  /** Highest KEYS[n] the header documents (scripts may take fewer for optional keys). */
  readonly maxKeys: number;
  readonly lua: string;
  readonly sha: string;
  /** Runs it (EVALSHA, loading it after a Redis restart), refusing keys of different slots. */
  run(client: RedisClient, keys: readonly string[], args: readonly (string | number)[]): Promise<unknown>;
}

function load(file: string): LuaScript {
  const name = file.replace(/\.lua$/, '');
  let body = readFileSync(new URL(file, DIR), 'utf8');
  const header = body.split('\n').filter((l) => l.startsWith('--'));
  if (!header[0]?.startsWith(`-- ${name}:`)) throw new Error(`lua/${file}: the first line must be "-- ${name}: <what it does>"`);
  const maxKeys = Math.max(0, ...header.map((l) => Number(/^-- KEYS\[(\d+)\]/.exec(l)?.[1] ?? 0)));
  const uses = /^-- uses: (.+)$/m.exec(body)?.[1]?.split(/[ ,]+/) ?? [];
  for (const lib of uses.reverse()) body = `${readFileSync(new URL(`lib/${lib}.lua`, DIR), 'utf8')}\n${body}`;
  const sha = createHash('sha1').update(body).digest('hex');
  return {
    name,
    maxKeys,
    lua: body,
    sha,
    async run(client, keys, args) {
      // A script touching several slots works on one Redis and fails on a Cluster (CROSSSLOT):
      // refuse it everywhere, so single-node tests catch what would break in production.
      if (keys.length > 1 && !sameHashTag(keys) && generateMulti([...keys]) === -1)
        throw new Error(`lua ${name}: keys span more than one slot: ${keys.join(' ')}`);
      try {
        return await client.evalsha(sha, keys.length, ...keys, ...args);
      } catch (err) {
        if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err;
        return await client.eval(body, keys.length, ...keys, ...args);
      }
    },
  };
}

/** Redis Cluster's hash tag of a key: what is between the first `{` and the next `}`, if not empty. */
function hashTag(key: string): string | undefined {
  const open = key.indexOf('{');
  if (open < 0) return undefined;
  const close = key.indexOf('}', open + 1);
  return close > open + 1 ? key.slice(open + 1, close) : undefined;
}

/** All keys carry the same hash tag, hence the same slot: the broker's usual case, decided without CRC16. */
function sameHashTag(keys: readonly string[]): boolean {
  const tag = hashTag(keys[0]!);
  if (tag === undefined) return false;
  for (let i = 1; i < keys.length; i++) if (hashTag(keys[i]!) !== tag) return false;
  return true;
}

/** Every script under src/redis/lua/, by file name without `.lua`. */
export const scripts: Readonly<Record<string, LuaScript>> = Object.freeze(
  Object.fromEntries(
    readdirSync(DIR)
      .filter((f) => f.endsWith('.lua'))
      .map((f) => [f.replace(/\.lua$/, ''), load(f)]),
  ),
);

/** The script `name`; throws at startup for a typo rather than at the first request. */
export function script(name: string): LuaScript {
  const s = scripts[name];
  if (!s) throw new Error(`no lua script ${name}`);
  return s;
}
