/**
 * CPU per policy decision, measured with `process.cpuUsage()` over many calls: on a shared machine CPU time
 * moves far less than wall-clock percentiles do. Runs the real engine (src/policy/cedar-engine.ts) through
 * the broker's own entry (src/authz.ts does `authorizeNarrowing` on the same request shape).
 *
 *   node scripts/bench/policy-cpu.ts [runs=7] [calls=20000]
 *
 * Cases (each printed as the median of `runs`, in µs of CPU per decision):
 * - `issuance, cache on`: the bench broker's 24 policies (scripts/bench/setup.ts writePolicies) and the
 *   request `npm run bench` sends (one agent, one task, tickets-api), as POST /v1/credentials asks it;
 * - `issuance, cache off`: the same with every request evaluated by Cedar;
 * - `distinct, cache off`: scripts/bench/policy.ts's 24 policies and 2,000 distinct requests (the
 *   "Cedar, 24 policies, cache off" row of `npm run bench`).
 */
import { rmSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createCedarEngine } from '../../src/policy/cedar-engine.ts';
import { authorizeNarrowing } from '../../src/policy/narrowing.ts';
import type { PolicyEngine, PolicyRequest } from '../../src/policy/types.ts';
import { benchPolicyText, benchRequests } from './policy.ts';
import { writePolicies } from './setup.ts';

/** The request the bench's issuance load makes, as src/authz.ts hands it to the engine. */
export function issuanceRequest(): PolicyRequest {
  const agent = 'spiffe://bench.local/agent/bench';
  return {
    principal: { id: agent, trust: 'bench', kind: 'spiffe', claims: { sub: agent, iss: '', aud: 'jit-broker' } },
    action: 'issue',
    resource: { type: 'Role', id: 'tickets-api' },
    context: {
      task: {
        id: 't-policy-24',
        tenant: 'acme',
        purpose: 'bench',
        agent,
        labels: {},
        roles: ['tickets-api'],
        depth: 0,
        rootId: 't-policy-24',
      },
      ttlSeconds: 600,
      scopes: ['tickets:read'],
      approved: false,
    },
  };
}

/** CPU µs per call of `fn` over `calls` calls (user + system). */
function cpuPerCall(calls: number, fn: (i: number) => void): number {
  const t0 = process.cpuUsage();
  for (let i = 0; i < calls; i++) fn(i);
  const d = process.cpuUsage(t0);
  return (d.user + d.system) / calls;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

export async function policyCpu(opts: { runs: number; calls: number }): Promise<Record<string, number>> {
  const realistic = writePolicies('realistic', 24);
  const distinctDir = await mkdtemp(join(tmpdir(), 'jit-policy-cpu-'));
  await writeFile(join(distinctDir, 'bench.cedar'), benchPolicyText(24));
  const engines: Record<string, PolicyEngine> = {
    'issuance, cache on': await createCedarEngine({ dir: realistic }),
    'issuance, cache off': await createCedarEngine({ dir: realistic, cacheSize: 0 }),
    'distinct, cache off': await createCedarEngine({ dir: distinctDir, cacheSize: 0 }),
  };
  const one = issuanceRequest();
  const distinct = benchRequests(2000);
  const pick = (name: string) => (name.startsWith('distinct') ? (i: number) => distinct[i % distinct.length] as PolicyRequest : () => one);
  // Every case must decide as the broker would: the issuance is permitted.
  for (const [name, e] of Object.entries(engines)) {
    if (name.startsWith('issuance') && !e.authorize(one).allowed) throw new Error(`${name}: the bench request is denied`);
  }
  const samples: Record<string, number[]> = {};
  for (let run = 0; run < opts.runs; run++) {
    // Alternating the cases within each run: a slow moment of the shared machine touches all of them.
    for (const [name, e] of Object.entries(engines)) {
      const req = pick(name);
      if (run === 0) cpuPerCall(opts.calls / 4, (i) => authorizeNarrowing(e, req(i))); // JIT and wasm tier-up
      const xs = samples[name] ?? [];
      samples[name] = xs;
      xs.push(cpuPerCall(opts.calls, (i) => authorizeNarrowing(e, req(i))));
    }
  }
  for (const e of Object.values(engines)) await e.close();
  rmSync(realistic, { recursive: true, force: true });
  rmSync(distinctDir, { recursive: true, force: true });
  return Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, Math.round(median(v) * 100) / 100]));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const runs = Number(process.argv[2] ?? 7);
  const calls = Number(process.argv[3] ?? 20_000);
  console.log(JSON.stringify(await policyCpu({ runs, calls })));
}
