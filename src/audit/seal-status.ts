import type { AuditChain, Keys } from '../redis/keys.ts';
import type { RedisClient } from '../redis/scripts.ts';
import { markerSeq } from './retention.ts';
import { isSeal, sealIsValid } from './seal.ts';

/**
 * Default of `audit.sealMaxAgeSeconds`: how long a chain may go without a seal before that is a failure
 * (metrics, the worker's log, `audit:verify`). Several seal intervals: a pass the export lock's TTL
 * (30 s) held up after its holder died, and the next tick, fit in it even at the longest interval (60 s).
 */
export const DEFAULT_SEAL_MAX_AGE_MS = 180_000;

/** Where a chain's sealing stands, as Redis says it (seal MAC checked). */
export interface SealStatus {
  chain: AuditChain;
  /** Seq of the chain's head (its last record); 0 when it has none. */
  headSeq: number;
  /** The chain's newest seal in Redis, when its MAC verifies. */
  sealed?: { seq: number; time: string };
  /** Redis holds something under the seal key that is not a seal of ours (forged, another KEK, malformed). */
  invalidSeal: boolean;
  /** Records after the seal (all of them without a valid seal). */
  unsealed: number;
  /**
   * How long the chain went without a seal: since the seal's time or, with no valid seal, since the
   * first record Redis holds (Infinity when that is unknown). Absent for a chain with no record.
   * The exporter seals every chain it has exported on every pass, moved or not, so this stays below
   * about one seal interval while sealing runs, idle chains included.
   */
  ageMs?: number;
  /** Records are unsealed and the chain has gone without a seal for longer than the bound. */
  stale: boolean;
}

/** Stream ids are `<ms>-<n>`: when the entry was appended, on Redis's clock. */
const idMs = (id: string) => Number(id.slice(0, id.indexOf('-')));

/** The seal status of every chain of `keys`, at `now` (Redis's clock), with `maxAgeMs` as the bound. */
export async function sealStatus(
  redis: RedisClient,
  keys: Keys,
  sealKey: Buffer,
  now: number,
  maxAgeMs: number = DEFAULT_SEAL_MAX_AGE_MS,
): Promise<SealStatus[]> {
  return Promise.all(
    keys.auditChains().map(async (chain): Promise<SealStatus> => {
      const [head, raw] = await Promise.all([redis.get(keys.auditHead(chain)), redis.get(keys.auditSeal(chain))]);
      const headSeq = markerSeq(head);
      let sealed: SealStatus['sealed'];
      let invalidSeal = false;
      if (raw !== null) {
        let s: unknown;
        try {
          s = JSON.parse(raw);
        } catch {
          s = undefined;
        }
        // Only a seal made with the KEK counts: anyone who can write Redis can write a fresh-looking one.
        if (isSeal(s) && sealIsValid(sealKey, chain, s) && Number.isFinite(Date.parse(s.time))) sealed = { seq: s.seq, time: s.time };
        else invalidSeal = true;
      }
      const unsealed = Math.max(0, headSeq - (sealed?.seq ?? 0));
      if (headSeq === 0 && !sealed) return { chain, headSeq, invalidSeal, unsealed, stale: false };
      let since: number | undefined = sealed ? Date.parse(sealed.time) : undefined;
      if (since === undefined) {
        const first = (await redis.xrange(keys.auditStream(chain), '-', '+', 'COUNT', 1))[0];
        if (first) since = idMs(first[0]);
      }
      const ageMs = since === undefined || !Number.isFinite(since) ? Number.POSITIVE_INFINITY : Math.max(0, now - since);
      return { chain, headSeq, ...(sealed ? { sealed } : {}), invalidSeal, unsealed, ageMs, stale: unsealed > 0 && ageMs > maxAgeMs };
    }),
  );
}
