/**
 * Micro-benchmark of policy decisions: generates a realistic policy set into a
 * temp dir and measures `authorize()` latency through the real engine.
 *
 *   node scripts/bench/policy.ts [policies]     prints JSON
 *
 * The headline figures are uncached (the decision cache off, every request
 * evaluated by Cedar); `cached` is the same request mix with the cache on.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createCedarEngine } from '../../src/policy/cedar-engine.ts';
import type { PolicyEngine, PolicyRequest } from '../../src/policy/types.ts';

/** Latency of one decision, in microseconds, and throughput. */
export interface PolicyBenchResult {
  policies: number;
  p50us: number;
  p99us: number;
  perSecond: number;
  /** The same requests with the decision cache on (repeats hit it). */
  cached: { p50us: number; p99us: number; perSecond: number };
}

const ROLES = ['tickets-api', 'demo-api', 'orders-db', 'reports-bucket', 'github-pr', 'logs-query', 'prod-deploy', 'vault-ops'];
const TENANTS = ['acme', 'globex', 'initech'];

/** A policy set like an operator would write: per-role permits with conditions, forbids, admin rules. */
export function benchPolicyText(count: number): string {
  const out: string[] = [
    'permit (principal, action in [Action::"openTask", Action::"completeTask"], resource) when { principal.id like "spiffe://bench.local/orchestrator/*" };',
    'permit (principal, action == Action::"revoke", resource);',
    'permit (principal, action == Action::"rotate", resource == Broker::"broker") when { principal.id like "spiffe://bench.local/ops/*" };',
    'forbid (principal, action == Action::"issue", resource == Role::"prod-deploy") unless { context has approved && context.approved };',
    'forbid (principal, action, resource) when { principal.claims has risk && principal.claims.risk == "high" };',
    'forbid (principal, action == Action::"issue", resource) when { context.task.labels has frozen && context.task.labels.frozen == "true" };',
  ];
  for (let i = 0; out.length < count; i++) {
    const role = ROLES[i % ROLES.length];
    const tenant = TENANTS[i % TENANTS.length];
    out.push(
      i % 3 === 2
        ? `forbid (principal, action == Action::"issue", resource == Role::"${role}") when { context.task.tenant == "${tenant}" && context.ttlSeconds > ${600 + i} };`
        : `@id("p${i}")\npermit (principal, action == Action::"issue", resource == Role::"${role}")\nwhen {\n  principal.id like "spiffe://bench.local/agent/*" &&\n  context.task.agent == principal.id &&\n  context.task.roles.contains(resource.id) &&\n  context.task.tenant == "${tenant}" &&\n  principal.claims has tenant && principal.claims.tenant == context.task.tenant &&\n  context.ttlSeconds <= ${900 + i * 10} &&\n  ["${role}:read", "${role}:write"].containsAll(context.scopes)\n};`,
    );
  }
  return `${out.join('\n\n')}\n`;
}

/** Distinct, realistic requests: an agent with a dozen token claims asking for a granted role. */
export function benchRequests(n: number): PolicyRequest[] {
  return Array.from({ length: n }, (_, i) => {
    const role = ROLES[i % ROLES.length] as string;
    const tenant = TENANTS[i % TENANTS.length] as string;
    const agent = `spiffe://bench.local/agent/a${i % 50}`;
    return {
      principal: {
        id: agent,
        trust: 'bench',
        kind: 'spiffe',
        claims: {
          sub: agent,
          iss: 'https://bench.local',
          aud: 'jit-broker',
          tenant,
          team: `team-${i % 7}`,
          env: 'prod',
          region: 'eu-west-1',
          jti: `j${i}`,
          iat: '1700000000',
          exp: '1700003600',
        },
      },
      action: 'issue',
      resource: { type: 'Role', id: role },
      context: {
        task: {
          id: `t-${i}`,
          rootId: `t-${i}`,
          tenant,
          purpose: `ticket ${i}`,
          agent,
          labels: { ticket: String(4000 + i), ticket_status: 'open', priority: 'p2' },
          roles: [role, 'demo-api'],
          depth: 0,
        },
        ttlSeconds: 300 + (i % 600),
        scopes: [`${role}:read`],
      },
    };
  });
}

/** Runs `authorize` over the request mix; returns microsecond percentiles. */
function measure(engine: PolicyEngine, requests: PolicyRequest[], rounds: number): { p50us: number; p99us: number; perSecond: number } {
  for (const r of requests) engine.authorize(r); // warm-up (JIT, wasm tier-up)
  const samples: number[] = [];
  const start = process.hrtime.bigint();
  for (let k = 0; k < rounds; k++) {
    for (const r of requests) {
      const t0 = process.hrtime.bigint();
      engine.authorize(r);
      samples.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
  }
  const totalSeconds = Number(process.hrtime.bigint() - start) / 1e9;
  samples.sort((a, b) => a - b);
  const at = (q: number) => Math.round((samples[Math.min(samples.length - 1, Math.floor(samples.length * q))] ?? 0) * 10) / 10;
  return { p50us: at(0.5), p99us: at(0.99), perSecond: Math.round(samples.length / totalSeconds) };
}

/** Generates `policies` policies (at least 20 is realistic) and measures decisions. */
export async function benchPolicy(opts: { policies: number; requests?: number; rounds?: number }): Promise<PolicyBenchResult> {
  const dir = await mkdtemp(join(tmpdir(), 'jit-policy-bench-'));
  try {
    await writeFile(join(dir, 'bench.cedar'), benchPolicyText(opts.policies));
    const requests = benchRequests(opts.requests ?? 2000);
    const rounds = opts.rounds ?? 5;
    const cold = await createCedarEngine({ dir, cacheSize: 0 });
    const uncached = measure(cold, requests, rounds);
    await cold.close();
    const warm = await createCedarEngine({ dir });
    const cached = measure(warm, requests.slice(0, 500), rounds * 4);
    await warm.close();
    return { policies: opts.policies, ...uncached, cached };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const policies = Number(process.argv[2] ?? 24);
  console.log(JSON.stringify(await benchPolicy({ policies }), null, 2));
}
