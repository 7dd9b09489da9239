import type { LoadedPolicy, LoadedPolicySet } from './load.ts';
import { POLICY_ACTIONS } from './policy-ast.ts';
import { projectionsFor, type Projections } from './projection.ts';
import type { PolicyAction } from './types.ts';

/** The policies of a set that can apply to one action (and resource). */
export interface PolicySlice {
  /** `issue` or `issue Role::"tickets-api"`: names the slice for Cedar and in logs. */
  readonly name: string;
  /** Policy id → text, as handed to Cedar. */
  readonly policies: Readonly<Record<string, string>>;
  readonly count: number;
  /** What of a request these policies can observe. */
  readonly projections: Projections;
}

/** The slices for one action: one for resources no policy names, one per named resource. */
export interface ActionSlices {
  readonly anyResource: PolicySlice;
  readonly byResource: ReadonlyMap<string, PolicySlice>;
}

/**
 * Splits a set by action and by the resource a policy's scope names.
 *
 * Why: Cedar evaluates every policy of a set on every request. A policy whose
 * scope excludes the request's action or resource is false before its
 * conditions run (no error, no reason), so leaving it out gives the same
 * decision and diagnostics in less time, and the request needs to carry only
 * what the remaining policies read.
 */
export function sliceByScope(set: LoadedPolicySet): Map<PolicyAction, ActionSlices> {
  const out = new Map<PolicyAction, ActionSlices>();
  for (const action of POLICY_ACTIONS) {
    const mine = set.policies.filter((p) => p.actions.includes(action));
    const general = mine.filter((p) => p.resource === undefined);
    const byResource = new Map<string, PolicySlice>();
    for (const r of new Set(mine.map((p) => p.resource))) {
      if (r !== undefined) byResource.set(r, slice(`${action} ${r}`, [...general, ...mine.filter((p) => p.resource === r)]));
    }
    out.set(action, { anyResource: slice(action, general), byResource });
  }
  return out;
}

function slice(name: string, policies: LoadedPolicy[]): PolicySlice {
  const texts: Record<string, string> = Object.create(null);
  for (const p of policies) texts[p.id] = p.text;
  return { name, policies: texts, count: policies.length, projections: projectionsFor(policies.flatMap((p) => p.paths)) };
}
