/**
 * What one uncached cedar-wasm call costs, part by part: the call the engine makes for the bench's issuance
 * (scripts/bench/policy-cpu.ts), then the same with fewer policies, no entities, an empty context. CPU per
 * call (`process.cpuUsage`), median of 7 rounds, the variants alternating within each round.
 *
 *   node scripts/bench/cedar-cost.ts
 */
import { preparsePolicySet, type StatefulAuthorizationCall, statefulIsAuthorized } from '@cedar-policy/cedar-wasm/nodejs';
import { sliceByScope } from '../../src/policy/compile.ts';
import { loadPolicySet } from '../../src/policy/load.ts';
import { toCedarCall } from '../../src/policy/request.ts';
import { issuanceRequest } from './policy-cpu.ts';
import { writePolicies } from './setup.ts';

const slice = sliceByScope(await loadPolicySet(writePolicies('realistic', 24))).get('issue')?.anyResource;
if (!slice) throw new Error('no issue slice');
preparsePolicySet('bench-slice', { staticPolicies: slice.policies });
preparsePolicySet('bench-one', { staticPolicies: Object.fromEntries(Object.entries(slice.policies).slice(0, 1)) });
preparsePolicySet('bench-all', { staticPolicies: { a: 'permit (principal, action, resource);' } });
const call = toCedarCall(issuanceRequest(), slice.projections, 'bench-slice');
const variants: Record<string, StatefulAuthorizationCall> = {
  [`the engine's call (${slice.count} policies)`]: call,
  'same request, 1 policy': { ...call, preparsedPolicySetId: 'bench-one' },
  'same request, permit-all': { ...call, preparsedPolicySetId: 'bench-all' },
  'permit-all, no entities': { ...call, entities: [], preparsedPolicySetId: 'bench-all' },
  'permit-all, 1 entity, empty context': { ...call, entities: call.entities.slice(0, 1), context: {}, preparsedPolicySetId: 'bench-all' },
  'permit-all, no entities, empty context': { ...call, entities: [], context: {}, preparsedPolicySetId: 'bench-all' },
};
const samples: Record<string, number[]> = {};
for (let round = 0; round < 7; round++) {
  for (const [name, v] of Object.entries(variants)) {
    if (round === 0) for (let i = 0; i < 2000; i++) statefulIsAuthorized(v);
    const t0 = process.cpuUsage();
    for (let i = 0; i < 5000; i++) statefulIsAuthorized(v);
    const d = process.cpuUsage(t0);
    const xs = samples[name] ?? [];
    samples[name] = xs;
    xs.push((d.user + d.system) / 5000);
  }
}
for (const [name, xs] of Object.entries(samples)) {
  console.log(`${name.padEnd(42)} ${(xs.sort((a, b) => a - b)[3] as number).toFixed(1)} µs`);
}
