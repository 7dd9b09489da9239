/**
 * Pacing for background passes (the audit export, the reconciler) that share
 * the event loop and Redis with issuance: after a slice of work, wait
 * `PACE` times as long as the slice took (at most `MAX_PAUSE_MS`), so a pass
 * takes at most a fifth of either. Unpaced, a pass every 30 s over 50,000
 * live leases and records ran its Redis scripts and pages back to back, and
 * issuance p99 at 2,000/s went from ~4 ms to 14-16 ms while it ran
 * (docs/benchmarks.md, "The tail at 2,000/s").
 */
export const PACE = 4;
export const MAX_PAUSE_MS = 20;

/** Ends a slice that began at `sliceStart` (performance.now()); `paced: false` only yields one turn. */
export function afterSlice(sliceStart: number, paced = true): Promise<void> {
  const ms = Math.min(MAX_PAUSE_MS, (performance.now() - sliceStart) * PACE);
  return new Promise<void>((resolve) => (paced ? setTimeout(resolve, ms) : setImmediate(resolve)));
}
