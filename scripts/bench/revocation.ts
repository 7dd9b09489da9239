/**
 * Revocation at scale (issue 14): how long the broker takes to end 10,000
 * leases at once, and what an active lease costs in Redis, part by part.
 *
 *   node scripts/bench/revocation.ts      (or BENCH_ONLY=revocation npm run bench)
 *
 * Scenarios, each with its own broker process (one API + worker, defaults)
 * against the bench Redis:
 * - burst expiry: 10,000 JWT leases whose `exp` all fall in one wall-clock
 *   second T (each issued with TTL = T − its issue second); measured from
 *   the broker's own records: revokedAt − expiresAt per lease, and the last
 *   revokedAt against the end of second T;
 * - complete: one task with 10,000 live leases; POST /v1/tasks/{id}/complete,
 *   then until the last lease is `revoked` (per lease: revokedAt − the moment
 *   complete was sent);
 * - kill switch: one agent with 10,000 leases over 20 tasks (so over most
 *   buckets); POST /v1/admin/revoke {agent}, same measure;
 * - memory: MEMORY USAGE of the keys one active lease adds (lease hash, its
 *   entries in the task's lease set and the bucket's live index, its
 *   `credential.issue` audit record and task-audit entry) and of a task's keys.
 *
 * Revocation timestamps are the broker's (Redis TIME, ms); the bench's own
 * clock is the same machine's, so the two compare directly.
 */
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { pathToFileURL } from 'node:url';
import type { Redis } from 'ioredis';
import { Keys } from '../../src/redis/keys.ts';
import { BenchIssuer, openBenchTask, startBenchRedis, startBrokerProcess, writeBenchConfig, writePolicies } from './setup.ts';

const PORT = Number(process.env.BENCH_REVOKE_PORT ?? 18_084);
const N = Number(process.env.BENCH_REVOKE_LEASES ?? 10_000);

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Ctx = { url: string; issuer: BenchIssuer; redis: Redis; prefix: string; pid: number };

/** POSTs JSON with a keep-alive agent; resolves status + body. */
function post(agent: Agent, url: string, path: string, token: string, body: unknown): Promise<{ status: number; body: string }> {
  const target = new URL(path, url);
  const data = JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: target.hostname,
        port: target.port,
        path: target.pathname,
        method: 'POST',
        agent,
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString() }));
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

const openTask = (ctx: Ctx, taskId: string, agentPath: string) =>
  openBenchTask(ctx.url, ctx.issuer.svid('/orchestrator/bench'), taskId, { agentPath, grants: [{ role: 'demo-api' }] });

/** Issues `n` demo-api leases, 32 in flight; `ttl()` is asked per request. Returns the lease ids. */
async function issueMany(ctx: Ctx, agentPath: string, n: number, taskOf: (i: number) => string, ttl: () => number): Promise<string[]> {
  const agent = new Agent({ keepAlive: true, maxSockets: 32 });
  const token = ctx.issuer.svid(agentPath);
  const ids: string[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      while (next < n) {
        const i = next++;
        const r = await post(agent, ctx.url, '/v1/credentials', token, { taskId: taskOf(i), role: 'demo-api', ttlSeconds: ttl() });
        if (r.status !== 201) throw new Error(`issue: ${r.status} ${r.body}`);
        ids.push((JSON.parse(r.body) as { leaseId: string }).leaseId);
      }
    }),
  );
  agent.destroy();
  return ids;
}

/** The number of live leases (every bucket's live index). */
async function liveCount(ctx: Ctx): Promise<number> {
  const keys = new Keys(ctx.prefix);
  const counts = await Promise.all(Array.from({ length: keys.buckets }, (_, b) => ctx.redis.zcard(keys.liveLeases(b))));
  return counts.reduce((a, b) => a + b, 0);
}

/** Status, expiresAt and revokedAt of each lease, read straight from Redis. */
async function records(ctx: Ctx, ids: string[]): Promise<{ status: string; expiresAt: number; revokedAt: number }[]> {
  const keyOf = await leaseKeyOf(ctx);
  const out: { status: string; expiresAt: number; revokedAt: number }[] = [];
  for (let i = 0; i < ids.length; i += 1000) {
    const p = ctx.redis.pipeline();
    for (const id of ids.slice(i, i + 1000)) p.hmget(keyOf(id), 'status', 'expiresAt', 'revokedAt');
    for (const [err, v] of (await p.exec())!) {
      if (err) throw err;
      const [status, e, r] = v as [string, string, string | null];
      out.push({ status, expiresAt: Number(e), revokedAt: r ? Number(r) : Number.NaN });
    }
  }
  return out;
}

/** Lease id -> its key (the bench broker runs with the default bucket count). */
async function leaseKeyOf(ctx: Ctx): Promise<(id: string) => string> {
  const keys = new Keys(ctx.prefix);
  return (id) => keys.lease(id);
}

/** CPU time the broker process has used so far (user + system, ms; Linux /proc, 10 ms resolution). */
function brokerCpuMs(ctx: Ctx): number {
  try {
    const f = readFileSync(`/proc/${ctx.pid}/stat`, 'utf8');
    const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
    return ((Number(rest[11]) + Number(rest[12])) * 1000) / 100;
  } catch {
    return Number.NaN;
  }
}

/** Total time Redis spent executing commands so far (INFO commandstats), in ms, and per-command detail. */
async function redisBusy(ctx: Ctx): Promise<{ totalMs: number; byCommand: Map<string, { calls: number; usec: number }>; cpuMs: number }> {
  const info = await ctx.redis.info('commandstats');
  const byCommand = new Map<string, { calls: number; usec: number }>();
  let usec = 0;
  for (const m of info.matchAll(/cmdstat_([a-z|]+):calls=(\d+),usec=(\d+)/g)) {
    byCommand.set(m[1]!, { calls: Number(m[2]), usec: Number(m[3]) });
    usec += Number(m[3]);
  }
  return { totalMs: usec / 1000, byCommand, cpuMs: brokerCpuMs(ctx) };
}

/** Waits until no lease is live (or `limitMs` passed); returns ms from `t0` to when that was seen. */
async function untilNoneLive(ctx: Ctx, t0: number, limitMs: number): Promise<number> {
  while (performance.now() - t0 < limitMs) {
    if ((await liveCount(ctx)) === 0) return performance.now() - t0;
    await sleep(10);
  }
  return Number.NaN;
}

async function withBroker<T>(
  redis: { url: string; redis: Redis },
  prefix: string,
  run: (ctx: Ctx) => Promise<T>,
  extra: Record<string, unknown> = {},
): Promise<T> {
  const issuer = new BenchIssuer();
  const config = writeBenchConfig({
    redisUrl: redis.url,
    prefix,
    port: PORT,
    issuer,
    policiesDir: writePolicies('permit-all'),
    extra: { tasks: { maxLeases: 0 }, ...extra },
  });
  const broker = await startBrokerProcess(config, PORT);
  try {
    return await run({ url: broker.url, issuer, redis: redis.redis, prefix, pid: broker.child.pid! });
  } finally {
    await broker.stop();
    await redis.redis.flushall();
  }
}

const round = (x: number) => Math.round(x);

/** 10,000 leases whose exp falls in one wall-clock second. */
export async function burstExpiry(ctx: Ctx, n = N) {
  await openTask(ctx, 't-burst', '/agent/burst');
  // Leave enough time to issue them all (at well under 1,000/s on a loaded machine) before T.
  const T = (Math.floor(Date.now() / 1000) + Math.max(20, Math.ceil(n / 500))) * 1000;
  const ids = await issueMany(
    ctx,
    '/agent/burst',
    n,
    () => 't-burst',
    () => (T - Math.floor(Date.now() / 1000) * 1000) / 1000,
  );
  if (Date.now() >= T) throw new Error('burst expiry: issuance took past T; raise the lead time');
  const live = await liveCount(ctx);
  await sleep(T - Date.now());
  const busy0 = await redisBusy(ctx);
  const t0 = performance.now();
  const seen = await untilNoneLive(ctx, t0, 30_000);
  await sleep(1000); // the audit records follow the state change
  const busy1 = await redisBusy(ctx);
  const recs = await records(ctx, ids);
  const notExpired = recs.filter((r) => r.status !== 'expired').length;
  const lag = recs.map((r) => r.revokedAt - r.expiresAt);
  const lastEnd = Math.max(...recs.map((r) => r.revokedAt));
  const exp = recs.map((r) => r.expiresAt);
  // How many ended in each 100 ms from T on, and how many were due in each: shows a stall at a glance.
  const bins = (xs: number[]) => {
    const out: number[] = [];
    for (const x of xs) {
      const i = Math.max(0, Math.floor((x - T) / 100));
      while (out.length <= i) out.push(0);
      out[i]! += 1;
    }
    return out.join(' ');
  };
  return {
    duePer100ms: bins(exp),
    endedPer100ms: bins(recs.map((r) => r.revokedAt)),
    leases: ids.length,
    liveBefore: live,
    notExpired,
    expiresWithinMs: Math.max(...exp) - Math.min(...exp),
    lastExpiredAfterSecondEndsMs: lastEnd - (T + 1000),
    lastExpiredAfterSecondStartsMs: lastEnd - T,
    lagP50Ms: round(pct(lag, 50)),
    lagP99Ms: round(pct(lag, 99)),
    lagMaxMs: round(Math.max(...lag)),
    noneLiveSeenAfterMs: round(seen),
    ...redisCost(busy0, busy1),
  };
}

/** Redis's own execution time between two readings (the poll of this bench included: ZCARDs). */
function redisCost(a: Awaited<ReturnType<typeof redisBusy>>, b: Awaited<ReturnType<typeof redisBusy>>) {
  const scripts = ['evalsha', 'eval'].reduce((n, c) => n + (b.byCommand.get(c)?.usec ?? 0) - (a.byCommand.get(c)?.usec ?? 0), 0);
  return {
    redisBusyMs: round(b.totalMs - a.totalMs),
    redisScriptsMs: round(scripts / 1000),
    brokerCpuMs: round(b.cpuMs - a.cpuMs),
  };
}

/**
 * Sends the one call that ends every lease in `ids` (a complete, the kill
 * switch) as `callerPath`, then waits until none is live: how long the call
 * took to answer, each lease's lag from the moment it was sent until its
 * `revokedAt`, and what Redis spent meanwhile.
 */
async function endAndMeasure(ctx: Ctx, ids: string[], path: string, callerPath: string, body: unknown) {
  await sleep(500);
  const busy0 = await redisBusy(ctx);
  const agent = new Agent({ keepAlive: false });
  const sentAt = Date.now();
  const t0 = performance.now();
  const r = await post(agent, ctx.url, path, ctx.issuer.svid(callerPath), body);
  const answeredMs = performance.now() - t0;
  agent.destroy();
  if (r.status >= 300) throw new Error(`${path}: ${r.status} ${r.body}`);
  const seen = await untilNoneLive(ctx, t0, 60_000);
  await sleep(1000);
  const busy1 = await redisBusy(ctx);
  const recs = await records(ctx, ids);
  const lag = recs.map((x) => x.revokedAt - sentAt);
  return {
    answeredMs: round(answeredMs),
    notRevoked: recs.filter((x) => x.status !== 'revoked').length,
    allRevokedMs: round(Math.max(...lag)),
    lagP50Ms: round(pct(lag, 50)),
    lagP99Ms: round(pct(lag, 99)),
    noneLiveSeenAfterMs: round(seen),
    ...redisCost(busy0, busy1),
  };
}

/** One task with `n` live leases; complete it. */
export async function completeMany(ctx: Ctx, n = N) {
  await openTask(ctx, 't-complete', '/agent/complete');
  const ids = await issueMany(
    ctx,
    '/agent/complete',
    n,
    () => 't-complete',
    () => 600,
  );
  const memory = await memoryBreakdown(ctx, ids, ['t-complete']);
  const { answeredMs, ...ended } = await endAndMeasure(ctx, ids, '/v1/tasks/t-complete/complete', '/orchestrator/bench', {});
  return {
    result: { leases: ids.length, completeAnsweredMs: answeredMs, ...ended },
    memory,
  };
}

/** One agent with `n` leases over `tasks` tasks; the kill switch for that agent. */
export async function killSwitch(ctx: Ctx, n = N, tasks = 20) {
  for (let t = 0; t < tasks; t++) await openTask(ctx, `t-kill-${t}`, '/agent/kill');
  const ids = await issueMany(
    ctx,
    '/agent/kill',
    n,
    (i) => `t-kill-${i % tasks}`,
    () => 600,
  );
  const { answeredMs, ...ended } = await endAndMeasure(ctx, ids, '/v1/admin/revoke', '/ops/bench', {
    agent: 'spiffe://bench.local/agent/kill',
  });
  return { leases: ids.length, tasks, revokeAnsweredMs: answeredMs, ...ended };
}

/**
 * Bytes per active lease, part by part: MEMORY USAGE (exact, SAMPLES 0) of a
 * sample of lease hashes, and of the shared keys divided by their entries.
 * The audit stream and task-audit list also hold the task's own records
 * (task.open): negligible against `n` leases.
 */
export async function memoryBreakdown(ctx: Ctx, ids: string[], taskIds: string[]) {
  const usage = async (k: string) => Number((await ctx.redis.call('MEMORY', 'USAGE', k, 'SAMPLES', '0')) ?? 0);
  const keyOf = await leaseKeyOf(ctx);
  const sample = ids.filter((_, i) => i % Math.max(1, Math.floor(ids.length / 200)) === 0);
  let leaseHash = 0;
  for (const id of sample) leaseHash += await usage(keyOf(id));
  leaseHash /= sample.length;
  // A hash with a value over hash-max-listpack-value (64 B by default) is a real hash table: ~2x the bytes.
  const leaseEncoding = String(await ctx.redis.object('ENCODING', keyOf(sample[0]!)));
  const all = await ctx.redis.keys(`${ctx.prefix}:*`);
  const sum = async (match: (k: string) => boolean) => {
    let s = 0;
    for (const k of all.filter(match)) s += await usage(k);
    return s;
  };
  const n = ids.length;
  const parts = {
    leaseHash: leaseHash,
    taskLeaseSet: (await sum((k) => k.includes('}:task-lease-ids:'))) / n,
    // The set the previous release reads, written beside the index for a rolling upgrade (lease-create.lua).
    legacyLeaseSet: (await sum((k) => k.includes('}:task-leases:'))) / n,
    liveIndex: (await sum((k) => k.endsWith('}:leases-live'))) / n,
    auditStream: (await sum((k) => k.endsWith('}:audit'))) / n,
    taskAuditList: (await sum((k) => k.includes('}:task-audit:'))) / n,
  };
  const perLease = Object.values(parts).reduce((a, b) => a + b, 0);
  const taskKeys = await sum(
    (k) => /\}:(task|tasks-[a-z-]+(:.*)?)(:|$)/.test(k) && !k.includes('task-lease-ids') && !k.includes('task-audit'),
  );
  return {
    leases: n,
    leaseHash: round(parts.leaseHash),
    taskLeaseSet: round(parts.taskLeaseSet),
    legacyLeaseSet: round(parts.legacyLeaseSet),
    liveIndex: round(parts.liveIndex),
    auditStream: round(parts.auditStream),
    taskAuditList: round(parts.taskAuditList),
    perLease: round(perLease),
    perTaskKeys: round(taskKeys / taskIds.length),
    leaseEncoding,
  };
}

export async function benchRevocation(redis: { url: string; redis: Redis }, log: (s: string) => void = console.log) {
  const burst = await withBroker(redis, 'bench-burst', (ctx) => burstExpiry(ctx));
  log(
    `burst expiry: ${burst.leases} leases with exp in one second (spread ${burst.expiresWithinMs} ms): last expired ${burst.lastExpiredAfterSecondEndsMs} ms after that second ended; lag from exp p50 ${burst.lagP50Ms} ms, p99 ${burst.lagP99Ms} ms, max ${burst.lagMaxMs} ms (${burst.notExpired} not expired)`,
  );
  const complete = await withBroker(redis, 'bench-complete', (ctx) => completeMany(ctx));
  log(
    `complete: ${complete.result.leases} leases of one task revoked within ${complete.result.allRevokedMs} ms of complete (answered in ${complete.result.completeAnsweredMs} ms; p50 ${complete.result.lagP50Ms} ms, p99 ${complete.result.lagP99Ms} ms; ${complete.result.notRevoked} not revoked)`,
  );
  const m = complete.memory;
  log(
    `memory per active lease: ${m.perLease} B = lease hash ${m.leaseHash} + task lease index ${m.taskLeaseSet} + previous release's lease set ${m.legacyLeaseSet} + live index ${m.liveIndex} + audit record ${m.auditStream} + task-audit entry ${m.taskAuditList}; task keys ${m.perTaskKeys} B per task`,
  );
  const kill = await withBroker(redis, 'bench-kill', (ctx) => killSwitch(ctx));
  log(
    `kill switch: ${kill.leases} leases of one agent over ${kill.tasks} tasks revoked within ${kill.allRevokedMs} ms (answered in ${kill.revokeAnsweredMs} ms; p50 ${kill.lagP50Ms} ms, p99 ${kill.lagP99Ms} ms; ${kill.notRevoked} not revoked)`,
  );
  return { burstExpiry: burst, complete: complete.result, killSwitch: kill, memoryPerLease: m };
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const redis = await startBenchRedis();
  // To see what Redis's own settings change (e.g. BENCH_REDIS_CONFIG="hash-max-listpack-value 1024").
  if (process.env.BENCH_REDIS_CONFIG) await redis.redis.config('SET', ...(process.env.BENCH_REDIS_CONFIG.split(' ') as [string, string]));
  try {
    const only = new Set((process.env.BENCH_REVOKE_ONLY ?? 'burst,complete,kill').split(','));
    const out: Record<string, unknown> = {};
    if (only.has('burst')) out.burstExpiry = await withBroker(redis, 'bench-burst', (ctx) => burstExpiry(ctx));
    if (only.has('complete')) out.complete = await withBroker(redis, 'bench-complete', (ctx) => completeMany(ctx));
    if (only.has('kill')) out.killSwitch = await withBroker(redis, 'bench-kill', (ctx) => killSwitch(ctx));
    console.log(JSON.stringify(out, null, 2));
  } finally {
    await redis.stop();
  }
  process.exit(0);
}
