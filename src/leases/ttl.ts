/** What the TTL clamp decided, and which bound decided it (for the response and the audit record). */
export interface ClampedTtl {
  ttlSeconds: number;
  /**
   * The bound that set the result: requested, grant, role, task, or upstream_minimum; `approval`: the TTL the
   * approver was shown (credential-service.ts), lower than the clamp of now.
   */
  boundBy: 'requested' | 'grant' | 'role' | 'task' | 'upstream_minimum' | 'approval';
}

/**
 * Effective TTL (contract section 3): min(requested or the grant's max, grant
 * max, role max, time left on the task), then raised to the upstream's minimum
 * if it has one (AWS STS: 900 s). The one place TTLs are clamped.
 */
export function clampTtl(input: {
  requested?: number;
  grantMax: number;
  roleMax: number;
  taskLeftSeconds: number;
  upstreamMin: number;
}): ClampedTtl {
  const candidates: [number, ClampedTtl['boundBy']][] = [
    [input.requested ?? input.grantMax, input.requested === undefined ? 'grant' : 'requested'],
    [input.grantMax, 'grant'],
    [input.roleMax, 'role'],
    [Math.floor(input.taskLeftSeconds), 'task'],
  ];
  let best = candidates[0]!;
  for (const c of candidates) if (c[0] < best[0]) best = c;
  if (best[0] < input.upstreamMin) return { ttlSeconds: input.upstreamMin, boundBy: 'upstream_minimum' };
  return { ttlSeconds: best[0], boundBy: best[1] };
}
