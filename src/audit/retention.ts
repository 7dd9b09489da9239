import type { AuditChain, Keys } from '../redis/keys.ts';
import type { RedisClient } from '../redis/scripts.ts';

/** How long and how many records a chain keeps in Redis (`audit.retention`). */
export interface RetentionLimits {
  maxAgeDays: number;
  maxRecords: number;
}

/** Stream ids are `<ms>-<n>`; the id right after one (for an exclusive XTRIM MINID bound). */
function nextId(id: string): string {
  const dash = id.indexOf('-');
  return `${id.slice(0, dash)}-${BigInt(id.slice(dash + 1)) + 1n}`;
}

/** `<seq>` of a `<seq>:<hash>` marker, 0 for none. */
export function markerSeq(marker: string | null | undefined): number {
  if (!marker) return 0;
  const n = Number(marker.slice(0, marker.indexOf(':')));
  return Number.isSafeInteger(n) && n > 0 ? n : 0;
}

/**
 * Removes from Redis the records of `chain` that are older than
 * `maxAgeDays` (by their stream id, i.e. Redis's clock when appended) or
 * beyond the newest `maxRecords`, oldest first, but never one the export
 * marker does not cover: a record leaves Redis only once it is in the
 * export file. Returns how many records were removed.
 *
 * Called by the exporter under the export lock, so the marker cannot move
 * backwards under it; the stream only grows at its end, so trimming its start
 * with XTRIM MINID never races an append.
 */
export async function trimChain(
  redis: RedisClient,
  keys: Keys,
  chain: AuditChain,
  limits: RetentionLimits,
  nowMs: number,
): Promise<number> {
  const stream = keys.auditStream(chain);
  const exported = markerSeq(await redis.get(keys.auditExported(chain)));
  if (exported === 0) return 0;
  const cutoffMs = nowMs - limits.maxAgeDays * 86_400_000;
  let length = await redis.xlen(stream);
  let removed = 0;
  for (;;) {
    const excess = length - limits.maxRecords;
    const page = await redis.xrange(stream, '-', '+', 'COUNT', 1000);
    let last: string | undefined;
    for (let i = 0; i < page.length; i++) {
      const [id, fields] = page[i]!;
      const seq = seqOf(fields);
      if (seq === undefined || seq > exported) break;
      const oldEnough = Number(id.slice(0, id.indexOf('-'))) < cutoffMs;
      if (!oldEnough && i >= excess) break;
      last = id;
    }
    if (last === undefined) break;
    const n = Number(await redis.xtrim(stream, 'MINID', nextId(last)));
    if (n <= 0) break;
    removed += n;
    length -= n;
    if (n < page.length) break;
  }
  return removed;
}

/** The `seq` of a stream entry's record, undefined when it is not one of ours. */
export function seqOf(fields: string[]): number | undefined {
  const raw = fields[fields.indexOf('r') + 1];
  if (raw === undefined) return undefined;
  try {
    const seq = (JSON.parse(raw) as { seq?: unknown }).seq;
    return typeof seq === 'number' ? seq : undefined;
  } catch {
    return undefined;
  }
}
