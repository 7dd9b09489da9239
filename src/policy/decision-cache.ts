import type { StatefulAuthorizationCall } from '@cedar-policy/cedar-wasm/nodejs';
import type { PolicyDecision } from './types.ts';

/**
 * Remembers decisions of one policy set, keyed by the exact Cedar call.
 *
 * Why this is safe: a Cedar decision is a pure function of the policy set and
 * the request (Cedar has no clock or I/O), the key is the serialised call
 * after projection, and each set gets its own cache, so a reload starts empty.
 * Why it helps: handing a request to cedar-wasm costs about 1-2 µs per value;
 * an agent repeating a request pays that once. Bounded, oldest evicted first.
 */
export class DecisionCache {
  private readonly max: number;
  private readonly entries = new Map<string, PolicyDecision>();

  constructor(max: number) {
    this.max = max;
  }

  /** The remembered decision for `call`, or `compute()`'s (remembered). Always a fresh copy. */
  get(call: StatefulAuthorizationCall, compute: () => PolicyDecision): PolicyDecision {
    if (this.max <= 0) return compute();
    const key = JSON.stringify(call);
    let d = this.entries.get(key);
    if (!d) {
      d = compute();
      if (this.entries.size >= this.max) this.entries.delete(this.entries.keys().next().value as string);
      this.entries.set(key, d);
    }
    return { allowed: d.allowed, policies: [...d.policies], errors: [...d.errors] };
  }
}
