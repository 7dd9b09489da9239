import type { StatefulAuthorizationCall } from '@cedar-policy/cedar-wasm/nodejs';
import { LRUCache } from 'lru-cache';
import type { PolicyDecision } from './types.ts';

/**
 * Remembers decisions of one policy set, keyed by the exact Cedar call.
 *
 * Why this is safe: a Cedar decision is a pure function of the policy set and
 * the request (Cedar has no clock or I/O), the key is the serialised call
 * after projection, and each set gets its own cache, so a reload starts empty.
 * Why it helps: handing a request to cedar-wasm costs about 1-2 µs per value;
 * an agent repeating a request pays that once. Bounded by lru-cache: the
 * least recently used decision goes first.
 */
export class DecisionCache {
  private readonly entries: LRUCache<string, PolicyDecision> | undefined;

  constructor(max: number) {
    this.entries = max > 0 ? new LRUCache({ max }) : undefined;
  }

  /** The remembered decision for `call`, or `compute()`'s (remembered). Always a fresh copy. */
  get(call: StatefulAuthorizationCall, compute: () => PolicyDecision): PolicyDecision {
    if (!this.entries) return compute();
    const key = JSON.stringify(call);
    let d = this.entries.get(key);
    if (!d) {
      d = compute();
      this.entries.set(key, d);
    }
    return { allowed: d.allowed, policies: [...d.policies], errors: [...d.errors] };
  }
}
