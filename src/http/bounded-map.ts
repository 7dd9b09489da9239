/** How many of a full map's oldest entries are looked at for ones that are over before the oldest is forgotten. */
const LOOK = 32;

/**
 * Makes room for one more entry in a map kept to at most `max` entries (the in-memory rate-limit blocks and
 * insurance counts, one per caller: an attacker with many identities or addresses must not grow them without
 * bound). Entries are set in the order they end (callers delete before they set again, so a refreshed entry
 * moves to the end), so the ones `gone` says are over sit at the front: the first {@link LOOK} are looked at and
 * those over leave; if none were, the oldest is forgotten. Bounded work per insertion: a full scan of the map
 * each time, as before, cost ~3 ms per new caller at 100,000 live entries, on the request path.
 */
export function makeRoom<V>(m: Map<string, V>, max: number, gone: (v: V) => boolean): void {
  if (m.size < max) return;
  let looked = 0;
  for (const [k, v] of m) {
    if (looked++ === LOOK) break;
    if (gone(v)) m.delete(k);
  }
  if (m.size >= max) m.delete(m.keys().next().value!);
}
