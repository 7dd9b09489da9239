/**
 * `npm run bench`: measures the broker on this machine and prints a summary
 * (also written to bench-results/latest.json). The broker runs as its own
 * process against a private Redis; the load generator (autocannon) runs here.
 *
 * 1. issuance throughput at saturation and p50/p99 at 1,000 req/s, with a
 *    permit-all policy and with a realistic set of 24 Cedar policies;
 * 2. revocation lag from `complete` and from `exp` until the lease shows
 *    revoked/expired and introspection is inactive;
 * 3. Redis memory per active lease for 100,000 leases (BENCH_LEASES);
 * 5. scale-out layouts (scripts/bench/scale.ts): 2 processes, a 3-master Cluster;
 * 4. the bare minimum per issuance (ES256 verify + sign + Redis write +
 *    BullMQ add, no Express) as a reference;
 * 6. revocation at scale (scripts/bench/revocation.ts): 10,000 leases expiring
 *    in one second, 10,000 leases of one completed task, the kill switch for
 *    one agent with 10,000 leases, and Redis bytes per active lease by part.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import autocannon from 'autocannon';
import { BenchIssuer, startBenchRedis, startBrokerProcess, writeBenchConfig, writePolicies } from './setup.ts';
import { measureReference } from './reference.ts';
import { measureLag } from './lag.ts';
import { pacedLoad } from './paced.ts';
import { benchAwsOverhead, benchVaultOverhead } from './upstream.ts';
import { benchPolicy } from './policy.ts';
import { benchScale } from './scale.ts';
import { benchRevocation } from './revocation.ts';

const PORT = 18_080;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const LEASES = Number(process.env.BENCH_LEASES ?? 100_000);
/** BENCH_ONLY=issuance|lag|revocation|memory|reference|scale (comma-separated) runs a subset. */
const ALL = 'reference,issuance,policy,lag,revocation,upstream,memory,scale';
const ONLY = new Set((process.env.BENCH_ONLY ?? ALL).split(','));
const results: Record<string, unknown> = {
  machine: { cpus: (await import('node:os')).cpus().length, node: process.version },
  at: new Date().toISOString(),
};
const log = (s: string) => console.log(s);

const redis = await startBenchRedis();
const issuer = new BenchIssuer();
const agentToken = issuer.svid('/agent/bench');
const orchToken = issuer.svid('/orchestrator/bench');

async function openTask(url: string, taskId: string, ttlSeconds = 3600): Promise<void> {
  const res = await fetch(`${url}/v1/tasks`, {
    method: 'POST',
    headers: { authorization: `Bearer ${orchToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      taskId,
      agent: 'spiffe://bench.local/agent/bench',
      tenant: 'acme',
      purpose: 'bench',
      ttlSeconds,
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }, { role: 'demo-api' }],
    }),
  });
  if (res.status !== 201) throw new Error(`open task: ${res.status} ${await res.text()}`);
}

function issueLoad(url: string, taskId: string, opts: { connections: number; overallRate?: number; seconds: number; amount?: number }) {
  return autocannon({
    url: `${url}/v1/credentials`,
    method: 'POST',
    connections: opts.connections,
    duration: opts.seconds,
    ...(opts.amount ? { amount: opts.amount } : {}),
    ...(opts.overallRate ? { overallRate: opts.overallRate } : {}),
    headers: { authorization: `Bearer ${agentToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ taskId, role: 'tickets-api', scopes: ['tickets:read'], ttlSeconds: 600 }),
  });
}

async function issuance(label: string, policiesDir: string): Promise<Record<string, number>> {
  const prefix = `bench-${label}`;
  const config = writeBenchConfig({ redisUrl: redis.url, prefix, port: PORT, issuer, policiesDir });
  const broker = await startBrokerProcess(config, PORT);
  await openTask(broker.url, `t-${label}`);
  await issueLoad(broker.url, `t-${label}`, { connections: 16, seconds: 2 }); // warm-up (JIT, connections)
  const sat = await issueLoad(broker.url, `t-${label}`, { connections: 64, seconds: SECONDS });
  const paced = await pacedLoad({
    url: broker.url,
    path: '/v1/credentials',
    rate: 1000,
    seconds: SECONDS,
    headers: { authorization: `Bearer ${agentToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ taskId: `t-${label}`, role: 'tickets-api', scopes: ['tickets:read'], ttlSeconds: 600 }),
  });
  await broker.stop();
  await redis.redis.flushall();
  const out = {
    saturationPerSecond: Math.round(sat['2xx'] / SECONDS),
    saturationNon2xx: sat.non2xx,
    saturationP99Ms: sat.latency.p99,
    at1000PerSecondP50Ms: paced.p50Ms,
    at1000PerSecondP99Ms: paced.p99Ms,
    at1000PerSecondMaxMs: paced.maxMs,
    at1000Achieved: Math.round(paced.ok / SECONDS),
    at1000Non2xx: paced.failed,
  };
  log(
    `issuance [${label}]: ${out.saturationPerSecond}/s at saturation (p99 ${out.saturationP99Ms} ms); at 1000/s p50 ${out.at1000PerSecondP50Ms} ms, p99 ${out.at1000PerSecondP99Ms} ms (${out.at1000Achieved}/s achieved, non-2xx ${out.saturationNon2xx + out.at1000Non2xx})`,
  );
  return out;
}

async function memory(): Promise<Record<string, number>> {
  const prefix = 'bench-mem';
  const config = writeBenchConfig({ redisUrl: redis.url, prefix, port: PORT, issuer, policiesDir: writePolicies('permit-all') });
  const broker = await startBrokerProcess(config, PORT);
  await openTask(broker.url, 't-mem-warm');
  await issueLoad(broker.url, 't-mem-warm', { connections: 8, seconds: 1 });
  await fetch(`${broker.url}/v1/tasks/t-mem-warm/complete`, { method: 'POST', headers: { authorization: `Bearer ${orchToken}` } });
  await new Promise((r) => setTimeout(r, 1500));
  const tasks = 100;
  for (let i = 0; i < tasks; i++) await openTask(broker.url, `t-mem-${i}`);
  const before = Number((await redis.redis.info('memory')).match(/used_memory:(\d+)/)![1]);
  const per = Math.ceil(LEASES / tasks);
  const t0 = Date.now();
  for (let i = 0; i < tasks; i++) {
    const r = await issueLoad(broker.url, `t-mem-${i}`, { connections: 32, amount: per, seconds: 120 });
    if (r.non2xx > 0) throw new Error(`memory run: ${r.non2xx} non-2xx`);
  }
  const issued = per * tasks;
  const after = Number((await redis.redis.info('memory')).match(/used_memory:(\d+)/)![1]);
  const live = await redis.redis.zcard(`${prefix}:leases:live`);
  await broker.stop();
  await redis.redis.flushall();
  const bytesPerLease = Math.round((after - before) / issued);
  log(
    `memory: ${issued} active leases (${live} live) used ${((after - before) / 1048576).toFixed(1)} MiB of Redis: ${bytesPerLease} B per lease (issued in ${((Date.now() - t0) / 1000).toFixed(1)} s)`,
  );
  return { leases: issued, live, bytesPerLease };
}

try {
  if (ONLY.has('reference')) results.reference = await measureReference({ redisUrl: redis.url, seconds: Math.min(SECONDS, 5) });
  if (results.reference)
    log(`reference (verify + sign + SET + BullMQ add, no Express): ${(results.reference as { perSecond: number }).perSecond}/s`);
  await redis.redis.flushall();
  if (ONLY.has('issuance')) {
    results.issuancePermitAll = await issuance('permit-all', writePolicies('permit-all'));
    results.issuancePolicy = await issuance('policy-24', writePolicies('realistic', 24));
  }
  if (ONLY.has('lag')) {
    const config = writeBenchConfig({
      redisUrl: redis.url,
      prefix: 'bench-lag',
      port: PORT,
      issuer,
      policiesDir: writePolicies('permit-all'),
    });
    const broker = await startBrokerProcess(config, PORT);
    results.revocationLag = await measureLag(broker.url, {
      orchToken,
      agentToken,
      samples: 200,
      openTask: (id, ttl) => openTask(broker.url, id, ttl),
    });
    log(
      `revocation lag: from complete p50 ${(results.revocationLag as any).fromComplete.p50} ms p99 ${(results.revocationLag as any).fromComplete.p99} ms; from exp p50 ${(results.revocationLag as any).fromExp.p50} ms p99 ${(results.revocationLag as any).fromExp.p99} ms`,
    );
    await broker.stop();
    await redis.redis.flushall();
  }
  if (ONLY.has('revocation')) results.revocation = await benchRevocation(redis, log);
  if (ONLY.has('policy')) {
    results.policyEvaluation = await benchPolicy({ policies: 24 });
    log(`policy evaluation (24 policies, decision cache off): ${JSON.stringify(results.policyEvaluation)}`);
  }
  if (ONLY.has('upstream')) {
    results.awsOverhead = await benchAwsOverhead(redis.url);
    log(`aws: broker overhead on top of STS AssumeRole: ${JSON.stringify(results.awsOverhead)}`);
    await redis.redis.flushall();
    results.vaultOverhead = await benchVaultOverhead(redis.url);
    log(`vault: broker overhead on top of token create: ${JSON.stringify(results.vaultOverhead)}`);
    await redis.redis.flushall();
  }
  if (LEASES > 0 && ONLY.has('memory')) results.memory = await memory();
  if (ONLY.has('scale')) {
    // Reported, not targets: on 2 cores these show each layout's overhead, not its scale (docs/benchmarks.md).
    results.scale = await benchScale(redis.url, {
      issuer,
      agentToken,
      orchToken,
      seconds: SECONDS,
      leases: Number(process.env.BENCH_SCALE_LEASES ?? 20_000),
      port: PORT,
      log,
    });
  }
  const ref = (results.reference as { perSecond: number } | undefined)?.perSecond;
  const a = results.issuancePermitAll as Record<string, number> | undefined;
  const p = results.issuancePolicy as Record<string, number> | undefined;
  if (ref && a && p) {
    results.ratios = {
      brokerVsReference: +(a.saturationPerSecond! / ref).toFixed(2),
      policyVsNoPolicy: +(p.saturationPerSecond! / a.saturationPerSecond!).toFixed(2),
    };
    log(
      `ratios: broker/reference ${(results.ratios as any).brokerVsReference}, with policy/without ${(results.ratios as any).policyVsNoPolicy}`,
    );
  }
  mkdirSync('bench-results', { recursive: true });
  const file = `bench-results/${process.env.BENCH_ONLY ? 'partial' : 'latest'}.json`;
  writeFileSync(file, `${JSON.stringify(results, null, 2)}\n`);
  log(`written to ${file}`);
} finally {
  await redis.stop();
}
process.exit(0);
