/**
 * Scale-out figures (issue: "report, not targets"): the same issuance load and
 * bytes per lease on
 *   - one broker process on one Redis (the baseline, run again here so the
 *     comparison is within one run),
 *   - one broker process on a 3-master Redis Cluster (started here from
 *     redis-server, like the topology tests),
 *   - two broker processes (API + worker, and API only) on one Redis, the load
 *     split evenly between them.
 * On a 2-core machine the load generator, Redis (1 or 3 servers) and the
 * broker(s) share the same two cores: these runs show the overhead of each
 * layout, not its scale.
 */
import { dirname, join } from 'node:path';
import autocannon from 'autocannon';
import { Redis } from 'ioredis';
import { startCluster } from '../../test/helpers/redis-topology.ts';
import { type BenchIssuer, openBenchTask, startBrokerProcess, writeBenchConfig, writePolicies } from './setup.ts';

export interface ScaleRow {
  layout: string;
  perSecond: number;
  p99Ms: number;
  non2xx: number;
  bytesPerLease: number;
}

interface Ctx {
  issuer: BenchIssuer;
  agentToken: string;
  orchToken: string;
  seconds: number;
  /** Leases issued for the memory figure (after the throughput run, on fresh tasks). */
  leases: number;
  port: number;
  log(s: string): void;
}

function load(url: string, ctx: Ctx, taskId: string, connections: number, opts: { seconds?: number; amount?: number }) {
  return autocannon({
    url: `${url}/v1/credentials`,
    method: 'POST',
    connections,
    duration: opts.seconds ?? 120,
    ...(opts.amount ? { amount: opts.amount } : {}),
    headers: { authorization: `Bearer ${ctx.agentToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ taskId, role: 'tickets-api', scopes: ['tickets:read'], ttlSeconds: 600 }),
  });
}

async function usedMemory(nodes: Redis[]): Promise<number> {
  let sum = 0;
  for (const n of nodes) sum += Number((await n.info('memory')).match(/used_memory:(\d+)/)![1]);
  return sum;
}

/** Runs the load over `urls` (64 connections split evenly), then measures bytes per lease over `nodes`. */
async function measure(layout: string, urls: string[], nodes: Redis[], ctx: Ctx): Promise<ScaleRow> {
  const tag = layout.replace(/\W+/g, '-');
  await openBenchTask(urls[0]!, ctx.orchToken, `t-${tag}`);
  const per = Math.floor(64 / urls.length);
  await Promise.all(urls.map((u) => load(u, ctx, `t-${tag}`, per, { seconds: 2 }))); // warm-up
  const runs = await Promise.all(urls.map((u) => load(u, ctx, `t-${tag}`, per, { seconds: ctx.seconds })));
  const ok = runs.reduce((s, r) => s + r['2xx'], 0);
  const non2xx = runs.reduce((s, r) => s + r.non2xx, 0);
  const p99Ms = Math.max(...runs.map((r) => r.latency.p99));
  // Memory: fresh tasks so the figure is per lease of a task of a realistic size (1,000 leases), not of one huge task.
  const tasks = Math.max(1, Math.ceil(ctx.leases / 1000));
  for (let i = 0; i < tasks; i++) await openBenchTask(urls[0]!, ctx.orchToken, `t-${tag}-mem-${i}`);
  await new Promise((r) => setTimeout(r, 500));
  const before = await usedMemory(nodes);
  for (let i = 0; i < tasks; i++) {
    const r = await load(urls[i % urls.length]!, ctx, `t-${tag}-mem-${i}`, 16, { amount: 1000 });
    if (r.non2xx > 0) throw new Error(`${layout}: ${r.non2xx} non-2xx while filling`);
  }
  const after = await usedMemory(nodes);
  const row = {
    layout,
    perSecond: Math.round(ok / ctx.seconds),
    p99Ms,
    non2xx,
    bytesPerLease: Math.round((after - before) / (tasks * 1000)),
  };
  ctx.log(`scale [${layout}]: ${row.perSecond}/s (p99 ${row.p99Ms} ms, non-2xx ${row.non2xx}); ${row.bytesPerLease} B per lease`);
  return row;
}

export async function benchScale(redisUrl: string, ctx: Ctx): Promise<ScaleRow[]> {
  const rows: ScaleRow[] = [];
  const policies = writePolicies('permit-all');
  const single = new Redis(redisUrl);
  try {
    // 1. One process, one Redis.
    {
      const cfg = writeBenchConfig({ redisUrl, prefix: 'bench-scale-1', port: ctx.port, issuer: ctx.issuer, policiesDir: policies });
      const b = await startBrokerProcess(cfg, ctx.port);
      try {
        rows.push(await measure('1 process, 1 Redis', [b.url], [single], ctx));
      } finally {
        await b.stop();
        await single.flushall();
      }
    }
    // 2. Two processes (API + worker, API only), one Redis.
    {
      const cfgA = writeBenchConfig({ redisUrl, prefix: 'bench-scale-2', port: ctx.port, issuer: ctx.issuer, policiesDir: policies });
      const cfgB = writeBenchConfig({
        redisUrl,
        prefix: 'bench-scale-2',
        port: ctx.port + 1,
        issuer: ctx.issuer,
        policiesDir: policies,
        kekFile: join(dirname(cfgA), 'kek'),
      });
      const a = await startBrokerProcess(cfgA, ctx.port);
      const b = await startBrokerProcess(cfgB, ctx.port + 1, ['--api']);
      try {
        rows.push(await measure('2 processes, 1 Redis', [a.url, b.url], [single], ctx));
      } finally {
        await b.stop();
        await a.stop();
        await single.flushall();
      }
    }
    // 3. One process, 3-master Cluster.
    {
      const cluster = await startCluster({ masters: 3, appendonly: 'no' });
      const nodes = [0, 1, 2].map((i) => cluster.client(i));
      try {
        const cfg = writeBenchConfig({
          redisUrl,
          prefix: 'bench-scale-c',
          port: ctx.port,
          issuer: ctx.issuer,
          policiesDir: policies,
          extra: { redis: { cluster: { nodes: cluster.urls }, prefix: 'bench-scale-c' } },
        });
        const b = await startBrokerProcess(cfg, ctx.port);
        try {
          rows.push(await measure('1 process, 3-master Cluster', [b.url], nodes, ctx));
          const keys = await Promise.all(nodes.map((n) => n.dbsize()));
          ctx.log(`scale [cluster]: keys per master ${keys.join(' / ')}`);
        } finally {
          await b.stop();
        }
      } finally {
        for (const n of nodes) n.disconnect();
        await cluster.stop();
      }
    }
  } finally {
    single.disconnect();
  }
  return rows;
}
