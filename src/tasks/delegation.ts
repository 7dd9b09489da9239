import { nfc } from './nfc.ts';
import type { Grant, TaskFixed } from './types.ts';

/** Why a sub-task would exceed its parent (the detail of a 403 delegation_widens). */
export type Widening = string;

const isSubset = (a: readonly string[], b: readonly string[]) => a.every((x) => b.includes(x));

/**
 * Attenuation: what a sub-task may and may not change (docs/policy.md,
 * "Delegation"). Everything Cedar sees about a task can only narrow:
 * - `tenant`: kept (omitted = inherited; another value is refused);
 * - `labels`: every parent label kept with its value (omitted = inherited);
 *   new keys may be added, an existing key never changed; added keys are
 *   recorded (`delegatedLabels`) so that policy sees them only as narrowing;
 * - `purpose`: kept (omitted = inherited): free text cannot be judged narrower
 *   or wider, so a different purpose is refused;
 * - `grants`: roles the parent has, scopes within the parent grant's (literal),
 *   a TTL ceiling no higher than the parent grant's;
 * - `agent`: any identity (delegating to another agent is the point); that
 *   agent still needs its own identity and passes policy on its own.
 * The deadline (within the parent's) is checked on Redis's clock when the
 * sub-task is stored; depth by the caller.
 */
export function attenuate(
  parent: TaskFixed,
  child: { tenant?: string | undefined; purpose?: string | undefined; labels?: Record<string, string> | undefined; grants: Grant[] },
): { tenant: string; purpose: string; labels: Record<string, string>; delegatedLabels?: string[] } | { widens: Widening } {
  // The child's text comes in NFC; a parent stored before that may not be (src/tasks/nfc.ts).
  if (child.tenant !== undefined && child.tenant !== nfc(parent.tenant)) return { widens: "A sub-task must keep its parent's tenant." };
  if (child.purpose !== undefined && child.purpose !== nfc(parent.purpose)) return { widens: "A sub-task must keep its parent's purpose." };
  // Null-prototype records and own-property checks: `__proto__` or `constructor` is a label like any other.
  const labels: Record<string, string> = Object.create(null);
  for (const [k, v] of Object.entries(parent.labels)) labels[k] = v;
  // A new key can still widen under a policy that permits on its presence (`labels has approved`):
  // the added keys are recorded, and policy must permit with and without them (src/policy/narrowing.ts).
  const added = new Set(parent.delegatedLabels ?? []);
  for (const [k, v] of Object.entries(child.labels ?? {})) {
    if (Object.hasOwn(parent.labels, k)) {
      if (nfc(parent.labels[k]!) !== v) return { widens: `A sub-task may not change the parent's label "${k}".` };
      continue;
    }
    labels[k] = v;
    added.add(k);
  }
  for (const g of child.grants) {
    const pg = parent.grants.find((x) => x.role === g.role);
    if (!pg) return { widens: `Role "${g.role}" is not granted to the parent task.` };
    if (!isSubset(g.scopes, pg.scopes)) return { widens: `Grant "${g.role}" asks for scopes the parent's grant lacks.` };
    if (g.maxTtlSeconds > pg.maxTtlSeconds) return { widens: `Grant "${g.role}" has a longer TTL ceiling than the parent's.` };
  }
  return {
    tenant: parent.tenant,
    purpose: parent.purpose,
    labels,
    ...(added.size > 0 ? { delegatedLabels: [...added].sort() } : {}),
  };
}
