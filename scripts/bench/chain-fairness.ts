/**
 * Two broker processes on one prefix, both issuing JWTs for one task, so that every issue record goes to the
 * same audit chain (the task's bucket) and the two instances' compare-and-set batches race for its head
 * (src/audit/chain-writer.ts). Closed-loop load (autocannon) on each, at the same time; prints what each
 * instance issued and its latency. Fairness figures: docs/benchmarks.md, "Two instances on one audit chain".
 *
 *   node scripts/bench/chain-fairness.ts [connections on A] [connections on B] [seconds]   (default 20 20 10)
 *
 * Against the Redis at REDIS_URL (default redis://127.0.0.1:6379), under a fresh prefix it deletes after.
 */
import autocannon from 'autocannon';
import { Redis } from 'ioredis';
import { BenchIssuer, openBenchTask, startBrokerProcess, writeBenchConfig, writePolicies } from './setup.ts';

const [ca, cb, seconds] = [20, 20, 10].map((d, i) => Number(process.argv[2 + i] ?? d)) as [number, number, number];
const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const issuer = new BenchIssuer();
const prefix = `bench-fair-${process.pid}`;
const policiesDir = writePolicies('permit-all');
const base = 18_400 + (process.pid % 500);
const configA = writeBenchConfig({ redisUrl, prefix, port: base, issuer, policiesDir });
// Instances sharing a prefix share the KEK.
const kekFile = configA.replace(/broker\.yaml$/, 'kek');
const configB = writeBenchConfig({ redisUrl, prefix, port: base + 1, issuer, policiesDir, kekFile });
const a = await startBrokerProcess(configA, base);
const b = await startBrokerProcess(configB, base + 1);
try {
  await openBenchTask(a.url, issuer.svid('/orchestrator/main'), 't-fair');
  const agent = issuer.svid('/agent/bench');
  const run = (url: string, connections: number) =>
    autocannon({
      url: `${url}/v1/credentials`,
      method: 'POST',
      connections,
      duration: seconds,
      headers: { authorization: `Bearer ${agent}`, 'content-type': 'application/json' },
      body: JSON.stringify({ taskId: 't-fair', role: 'tickets-api', scopes: ['tickets:read'], ttlSeconds: 600 }),
    });
  const results = await Promise.all([run(a.url, ca), run(b.url, cb)]);
  results.forEach((r, i) => {
    const { p50, p99, max } = r.latency;
    console.log(
      `${'AB'[i]}: ${[ca, cb][i]} connections, ${r['2xx']} issued (${r.non2xx} non-2xx, ${r.errors} errors), p50 ${p50} ms, p99 ${p99} ms, max ${max} ms`,
    );
  });
} finally {
  await Promise.all([a.stop(), b.stop()]);
  const redis = new Redis(redisUrl);
  for (let cursor = '0'; ; ) {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    if (keys.length) await redis.del(...keys);
    cursor = next;
    if (cursor === '0') break;
  }
  redis.disconnect();
}
