/**
 * `npm run bench`: measures the broker on this machine and prints a summary
 * (also written to bench-results/latest.json). The broker runs as its own
 * process against a private Redis; the load generator (autocannon) runs here.
 *
 * 1. issuance throughput at saturation and p50/p99 at 1,000 req/s, with a
 *    permit-all policy and with a realistic set of 24 Cedar policies (that
 *    one also at 2,000 req/s), next to the peer: node-oidc-provider issuing
 *    ES256 JWT access tokens by client_credentials, same load (peer-oidc.ts);
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
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import autocannon from 'autocannon';
import { BenchIssuer, openBenchTask, startBenchRedis, startBrokerProcess, writeBenchConfig, writePolicies } from './setup.ts';
import { measureReference } from './reference.ts';
import { measureLag } from './lag.ts';
import { pacedLoad } from './paced.ts';
import { peerTokenRequest, startPeerOidc } from './peer-oidc.ts';
import { type LoopStats, mark, since } from './loop-stats.ts';
import { benchAwsOverhead, benchVaultOverhead } from './upstream.ts';
import { benchPolicy } from './policy.ts';
import { benchScale } from './scale.ts';
import { benchRevocation } from './revocation.ts';
import { damonState, kdamondCpuMs } from './host.ts';

const PORT = Number(process.env.BENCH_PORT ?? 18_080);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const LEASES = Number(process.env.BENCH_LEASES ?? 100_000);
/** The open-loop phases' JIT warm-up (closed loop, after the cold-start phase), and that phase's length. */
const WARM_REQUESTS = Number(process.env.BENCH_WARM_REQUESTS ?? 30_000);
const COLD_SECONDS = 5;
/** BENCH_ONLY=issuance|lag|revocation|memory|reference|scale (comma-separated) runs a subset; `issuance` includes the peer. */
const ALL = 'reference,issuance,policy,lag,revocation,upstream,memory,scale';
/** Open-loop rates for the 24-policy broker (and the peer); the permit-all one runs at the first only. */
const RATES = (process.env.BENCH_RATES ?? '1000,2000').split(',').map(Number);
const ONLY = new Set((process.env.BENCH_ONLY ?? ALL).split(','));
const machine = { cpus: (await import('node:os')).cpus().length, node: process.version, damon: damonState() };
const results: Record<string, unknown> = {
  machine,
  at: new Date().toISOString(),
};
const log = (s: string) => console.log(s);
log(`host: ${machine.cpus} cores, Node ${machine.node}, kernel DAMON ${machine.damon}`);

const redis = await startBenchRedis();
const issuer = new BenchIssuer();
const agentToken = issuer.svid('/agent/bench');
const orchToken = issuer.svid('/orchestrator/bench');

const openTask = (url: string, taskId: string, ttlSeconds = 3600) =>
  openBenchTask(url, orchToken, taskId, { ttlSeconds, grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }, { role: 'demo-api' }] });

interface Target {
  url: string;
  path: string;
  headers: Record<string, string>;
  body: string;
}

/** The broker's issuance request (the same on every call). */
const issueTarget = (url: string, taskId: string): Target => ({
  url,
  path: '/v1/credentials',
  headers: { authorization: `Bearer ${agentToken}`, 'content-type': 'application/json' },
  body: JSON.stringify({ taskId, role: 'tickets-api', scopes: ['tickets:read'], ttlSeconds: 600 }),
});

/** Closed-loop load with autocannon: the same settings for the broker and the peer. */
function load(t: Target, opts: { connections: number; overallRate?: number; seconds: number; amount?: number }) {
  return autocannon({
    url: `${t.url}${t.path}`,
    method: 'POST',
    connections: opts.connections,
    duration: opts.seconds,
    ...(opts.amount ? { amount: opts.amount } : {}),
    ...(opts.overallRate ? { overallRate: opts.overallRate } : {}),
    headers: t.headers,
    body: t.body,
  });
}

function issueLoad(url: string, taskId: string, opts: { connections: number; overallRate?: number; seconds: number; amount?: number }) {
  return load(issueTarget(url, taskId), opts);
}

/**
 * Warm-up, saturation (64 connections), then each open-loop rate; `loop`
 * measures the server's event loop. `pid`: the server's CPU time per request
 * at saturation (µs), which a busy shared machine disturbs less than the rate.
 */
async function measure(
  t: Target,
  rates: number[],
  server: { pid?: number | undefined; loop?: string; usesRedis?: boolean },
  fresh?: () => Promise<{ t: Target; server: { pid?: number | undefined; loop?: string } }>,
): Promise<Record<string, number | LoopStats>> {
  await load(t, { connections: 16, seconds: 2 }); // warm-up (JIT, connections)
  const cpu0 = cpuMs(server.pid);
  const main0 = cpuMs(server.pid, true);
  const redis0 = server.usesRedis ? await redisCpuMs() : undefined;
  const sat = await load(t, { connections: 64, seconds: SECONDS });
  const cpu1 = cpuMs(server.pid);
  const main1 = cpuMs(server.pid, true);
  const redis1 = server.usesRedis ? await redisCpuMs() : undefined;
  const out: Record<string, number | LoopStats> = {
    saturationPerSecond: Math.round(sat['2xx'] / SECONDS),
    saturationNon2xx: sat.non2xx + sat.errors,
    saturationP99Ms: sat.latency.p99,
    ...(cpu0 !== undefined && cpu1 !== undefined && sat['2xx'] > 0
      ? {
          saturationCpuUsPerRequest: Math.round(((cpu1 - cpu0) * 1000) / sat['2xx']),
          saturationMainThreadCpuUsPerRequest: Math.round(((main1! - main0!) * 1000) / sat['2xx']),
        }
      : {}),
    // The broker's Redis is CPU on the same two cores that the peer, which keeps nothing, does not spend.
    ...(redis0 !== undefined && redis1 !== undefined && sat['2xx'] > 0
      ? { saturationRedisCpuUsPerRequest: Math.round(((redis1 - redis0) * 1000) / sat['2xx']) }
      : {}),
  };
  // The open-loop runs start on a fresh server: the saturation run leaves ~100,000 leases and audit records whose
  // background work would otherwise land in the first open-loop run only. The cold phase and the warm-up below
  // leave ~35,000: the 30-s passes (export, reconcile) over those fall in an open-loop window (the 2,000/s one with
  // the default rates), as they would at a steady load (docs/benchmarks.md, "The tail at 2,000/s").
  if (fresh) ({ t, server } = await fresh());
  // A fresh process's first seconds at load: reported, not the target (JIT and heap still settling).
  const cold = await pacedLoad({ ...t, rate: rates[0]!, seconds: COLD_SECONDS });
  out.coldP99Ms = cold.p99Ms;
  out.coldMaxMs = cold.maxMs;
  // Then the JIT warm-up the steady state needs: the broker's request path was still being optimised
  // ~20,000 requests in, and until then kept more alive across each scavenge (docs/benchmarks.md).
  await load(t, { connections: 16, amount: WARM_REQUESTS, seconds: 60 });
  for (const rate of rates) {
    // Settling at this rate, not measured: the young generation resizes to the new allocation rate.
    await pacedLoad({ ...t, rate, seconds: 2 });
    const before = server.loop ? await mark(server.loop) : undefined;
    const kdamond0 = kdamondCpuMs();
    const paced = await pacedLoad({ ...t, rate, seconds: SECONDS });
    // The kernel's share of the phase: kdamond's stalls every 500 ms set this host's tail (host.ts).
    out[`at${rate}KdamondMs`] = Math.round(kdamondCpuMs() - kdamond0);
    if (server.loop && before) out[`at${rate}Loop`] = await since(server.loop, before);
    out[`at${rate}PerSecondP50Ms`] = paced.p50Ms;
    out[`at${rate}PerSecondP99Ms`] = paced.p99Ms;
    out[`at${rate}PerSecondMaxMs`] = paced.maxMs;
    out[`at${rate}Achieved`] = Math.round(paced.ok / SECONDS);
    out[`at${rate}Non2xx`] = paced.failed;
  }
  return out;
}

/** CPU time the bench's Redis server has used so far (ms, `INFO cpu`: user + system, all its threads). */
async function redisCpuMs(): Promise<number> {
  const info = await redis.redis.info('cpu');
  const field = (name: string) => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? Number.NaN);
  return (field('used_cpu_sys') + field('used_cpu_user')) * 1000;
}

/**
 * User + system CPU time of a process so far (ms), all its threads or only the
 * main one (the event loop), from /proc (Linux); undefined elsewhere.
 */
function cpuMs(pid: number | undefined, mainThread = false): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(mainThread ? `/proc/${pid}/task/${pid}/stat` : `/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime + stime, in USER_HZ (100/s)
  } catch {
    return undefined;
  }
}

const describe = (out: Record<string, number | LoopStats>, rates: number[]): string =>
  [
    `${out.saturationPerSecond}/s at saturation (p99 ${out.saturationP99Ms} ms, non-2xx ${out.saturationNon2xx}${out.saturationCpuUsPerRequest ? `, CPU per request ${out.saturationCpuUsPerRequest} µs, ${out.saturationMainThreadCpuUsPerRequest} µs on the main thread` : ''}${out.saturationRedisCpuUsPerRequest !== undefined ? `, ${out.saturationRedisCpuUsPerRequest} µs in Redis` : ''})`,
    ...(out.coldP99Ms === undefined
      ? []
      : [`cold start (a fresh process's first ${COLD_SECONDS} s, at ${rates[0]}/s) p99 ${out.coldP99Ms} ms, max ${out.coldMaxMs} ms`]),
    ...rates.map((rate) => {
      const loop = out[`at${rate}Loop`] as LoopStats | undefined;
      return `at ${rate}/s p50 ${out[`at${rate}PerSecondP50Ms`]} ms, p99 ${out[`at${rate}PerSecondP99Ms`]} ms, max ${out[`at${rate}PerSecondMaxMs`]} ms (${out[`at${rate}Achieved`]}/s achieved, non-2xx ${out[`at${rate}Non2xx`]}, kdamond ${out[`at${rate}KdamondMs`]} ms)${loop ? `; event-loop delay p99 ${loop.loopP99Ms} ms max ${loop.loopMaxMs} ms, GC ${loop.gcMsPerSecond} ms/s, ${loop.majorGcs} major` : ''}`;
    }),
  ].join('; ');

/** The peer: node-oidc-provider, its own process, the same load. */
async function peer(): Promise<Record<string, number | LoopStats>> {
  let p = await startPeerOidc(PORT + 1);
  try {
    const out = await measure({ url: p.url, ...peerTokenRequest() }, RATES, { pid: p.child.pid }, async () => {
      await p.stop();
      p = await startPeerOidc(PORT + 1);
      return { t: { url: p.url, ...peerTokenRequest() }, server: { pid: p.child.pid } };
    });
    log(`peer [oidc-provider, ES256 JWT client_credentials]: ${describe(out, RATES)}`);
    return out;
  } finally {
    await p.stop();
  }
}

async function issuance(label: string, policiesDir: string, rates: number[]): Promise<Record<string, number | LoopStats>> {
  const prefix = `bench-${label}`;
  const config = writeBenchConfig({ redisUrl: redis.url, prefix, port: PORT, issuer, policiesDir });
  let broker = await startBrokerProcess(config, PORT);
  let out: Record<string, number | LoopStats>;
  try {
    await openTask(broker.url, `t-${label}`);
    out = await measure(
      issueTarget(broker.url, `t-${label}`),
      rates,
      { pid: broker.child.pid, loop: broker.url, usesRedis: true },
      async () => {
        await broker.stop();
        await redis.redis.flushall();
        broker = await startBrokerProcess(config, PORT);
        await openTask(broker.url, `t-${label}`);
        return { t: issueTarget(broker.url, `t-${label}`), server: { pid: broker.child.pid, loop: broker.url } };
      },
    );
  } finally {
    await broker.stop();
  }
  await redis.redis.flushall();
  log(`issuance [${label}]: ${describe(out, rates)}`);
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
  await broker.stop();
  await redis.redis.flushall();
  const bytesPerLease = Math.round((after - before) / issued);
  log(
    `memory: ${issued} active leases used ${((after - before) / 1048576).toFixed(1)} MiB of Redis: ${bytesPerLease} B per lease (issued in ${((Date.now() - t0) / 1000).toFixed(1)} s)`,
  );
  return { leases: issued, bytesPerLease };
}

try {
  if (ONLY.has('reference')) results.reference = await measureReference({ redisUrl: redis.url, seconds: Math.min(SECONDS, 5) });
  if (results.reference)
    log(`reference (verify + sign + SET + BullMQ add, no Express): ${(results.reference as { perSecond: number }).perSecond}/s`);
  await redis.redis.flushall();
  if (ONLY.has('issuance')) {
    results.peerOidcProvider = await peer();
    results.issuancePermitAll = await issuance('permit-all', writePolicies('permit-all'), RATES.slice(0, 1));
    results.issuancePolicy = await issuance('policy-24', writePolicies('realistic', 24), RATES);
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
  const o = results.peerOidcProvider as Record<string, number> | undefined;
  const ratios: Record<string, number> = {};
  if (ref && a) ratios.brokerVsReference = +(a.saturationPerSecond! / ref).toFixed(2);
  if (a && p) ratios.policyVsNoPolicy = +(p.saturationPerSecond! / a.saturationPerSecond!).toFixed(2);
  if (a?.saturationCpuUsPerRequest && o?.saturationCpuUsPerRequest)
    ratios.peerVsBrokerCpuPerRequest = +(o.saturationCpuUsPerRequest / a.saturationCpuUsPerRequest).toFixed(2);
  if (a?.saturationCpuUsPerRequest && a.saturationRedisCpuUsPerRequest !== undefined && o?.saturationCpuUsPerRequest)
    ratios.peerVsBrokerWithRedisCpuPerRequest = +(
      o.saturationCpuUsPerRequest /
      (a.saturationCpuUsPerRequest + a.saturationRedisCpuUsPerRequest)
    ).toFixed(2);
  if (a && o) ratios.brokerVsPeer = +(a.saturationPerSecond! / o.saturationPerSecond!).toFixed(2);
  if (p && o) ratios.brokerPolicyVsPeer = +(p.saturationPerSecond! / o.saturationPerSecond!).toFixed(2);
  if (Object.keys(ratios).length > 0) {
    results.ratios = ratios;
    log(
      `ratios: ${Object.entries({
        'broker/reference': ratios.brokerVsReference,
        'broker/peer (oidc-provider)': ratios.brokerVsPeer,
        'broker with 24 policies/peer': ratios.brokerPolicyVsPeer,
        'with policy/without': ratios.policyVsNoPolicy,
        'CPU per request peer/broker': ratios.peerVsBrokerCpuPerRequest,
        'peer/(broker + its Redis)': ratios.peerVsBrokerWithRedisCpuPerRequest,
      })
        .filter(([, v]) => v !== undefined)
        .map(([k, v]) => `${k} ${v}`)
        .join(', ')}`,
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
