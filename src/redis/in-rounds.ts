/**
 * The most Redis reads one request keeps in flight. A request's reads (a page, a tree) go out in rounds of
 * this many: 40 pages of 500 at once had queued 20,000 commands on the shared connection, and the stall
 * guard took that for Redis stalling (503 for everyone).
 */
export const READS_IN_FLIGHT = 100;

/** `read` of every item, results in `items` order, at most READS_IN_FLIGHT at once (one round trip per round). */
export async function inRounds<T, R>(items: readonly T[], read: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = [];
  for (let i = 0; i < items.length; i += READS_IN_FLIGHT)
    out.push(...(await Promise.all(items.slice(i, i + READS_IN_FLIGHT).map((x) => read(x)))));
  return out;
}
