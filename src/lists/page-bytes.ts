/**
 * How many bytes of records (as JSON) a list page may hold, by what it costs its caller. Every list page answers at
 * least one item, so paging always moves on; `nextCursor` goes on from the last item shown.
 */

/**
 * The most any list page holds: a task record may be ~36 KB within every bound, so 500 of them would be ~18 MB read
 * and sent at once.
 */
export const PAGE_BYTES = 2_000_000;

/** A list page costs one rate-limit point per this many records it may hold (`?limit=`; src/http/read-cost.ts). */
export const LIST_POINTS_PER = 100;

/**
 * What one point of a list page buys: a page of `limit=500` (5 points) holds PAGE_BYTES, ~0.4 MB a point. A page
 * of 100 cost one point but held PAGE_BYTES too: for records of the largest shape the API accepts (~26-36 KB each)
 * that was ~2 MB and ~30-50 ms of CPU per point, and one caller at its default 50 requests a second kept more than
 * a core busy.
 */
export const POINT_BYTES = PAGE_BYTES / 4;

/** The points a list page of `limit` items costs (at least one). */
export function listPoints(limit: number): number {
  return Math.max(1, Math.ceil(limit / LIST_POINTS_PER));
}

/** The bytes of records a list page of `limit` items may hold: POINT_BYTES per point it costs, PAGE_BYTES at most. */
export function pageBytes(limit: number): number {
  return Math.min(PAGE_BYTES, listPoints(limit) * POINT_BYTES);
}

/**
 * A round of reads after the first: as many records as the rest of `cap` holds at the page's average record so far
 * (`bytes` over `count`), at least one and at most `max`; `max` while nothing was kept (no average yet).
 */
export function roundSize(cap: number, bytes: number, count: number, max: number): number {
  if (count === 0) return max;
  return Math.min(max, Math.max(1, Math.ceil((cap - bytes) / (bytes / count))));
}

/** A page's first round: as many records as `cap` holds of the largest ones (`largest` bytes), at least one, at most `max`. */
export function firstRound(cap: number, largest: number, max: number): number {
  return Math.min(max, Math.max(1, Math.floor(cap / largest)));
}
