import type { RedisClient } from '../redis/scripts.ts';

/** A position in a newest-first listing: an entry's score (ms) and id. */
export interface Pos {
  s: number;
  id: string;
}

/** An entry read from an index: its position and the index it came from. */
export interface Entry extends Pos {
  key: string;
}

/** Whether `a` comes after `b` in newest-first order (score desc, then id desc, as ZREVRANGEBYSCORE orders ties). */
const after = (a: Pos, b: Pos) => a.s < b.s || (a.s === b.s && a.id < b.id);

/** One sorted set read newest first, in batches, strictly after a position. */
class Source {
  private buf: Pos[] = [];
  private done = false;
  private last: Pos | undefined;
  private readonly redis: RedisClient;
  readonly key: string;

  constructor(redis: RedisClient, key: string, start: Pos | undefined) {
    this.redis = redis;
    this.key = key;
    this.last = start;
  }

  async peek(batch: number): Promise<Pos | undefined> {
    if (this.buf.length === 0 && !this.done) await this.fill(batch);
    return this.buf[0];
  }

  take(): Pos | undefined {
    const p = this.buf.shift();
    if (p) this.last = p;
    return p;
  }

  private async fill(batch: number): Promise<void> {
    // Scores are inclusive in ZREVRANGEBYSCORE: read from the last score and drop what was already seen;
    // when a whole batch is ties already seen, read a wider batch.
    for (let n = batch; ; n *= 2) {
      const max = this.last ? String(this.last.s) : '+inf';
      const flat = await this.redis.zrevrangebyscore(this.key, max, '-inf', 'WITHSCORES', 'LIMIT', '0', String(n));
      const got: Pos[] = [];
      for (let i = 0; i + 1 < flat.length; i += 2) got.push({ id: flat[i]!, s: Number(flat[i + 1]) });
      const fresh = this.last ? got.filter((p) => after(p, this.last!)) : got;
      if (fresh.length > 0) {
        this.buf = fresh;
        return;
      }
      if (got.length < n) {
        this.done = true;
        return;
      }
    }
  }
}

/**
 * Reads several sorted sets (one per bucket, or several indexes) as one
 * newest-first list, strictly after `start`, without duplicates. Stops after
 * `max` entries.
 */
export async function* scanNewestFirst(
  redis: RedisClient,
  keys: readonly string[],
  start: Pos | undefined,
  batch = 100,
): AsyncGenerator<Entry> {
  const sources = keys.map((k) => new Source(redis, k, start));
  let prev: Pos | undefined;
  for (;;) {
    // Sources with an empty buffer read their next batch at the same time (one round trip, not one per index).
    const heads = await Promise.all(sources.map((src) => src.peek(batch)));
    let best: { src: Source; pos: Pos } | undefined;
    sources.forEach((src, i) => {
      const p = heads[i];
      if (p && (!best || after(best.pos, p))) best = { src, pos: p };
    });
    if (!best) return;
    best.src.take();
    // The same id in two indexes (a caller who is both agent and orchestrator) is listed once.
    if (prev && prev.s === best.pos.s && prev.id === best.pos.id) continue;
    prev = best.pos;
    yield { ...best.pos, key: best.src.key };
  }
}
