/**
 * The broker's CPU per issuance (from /proc: all threads, and the main thread alone), permit-all against
 * the bench's 24 Cedar policies, measured in turn on two broker processes that run side by side: each round
 * loads one and then the other, so a slow moment of a shared machine touches both. Prints the median of the
 * rounds. Much shorter than `npm run bench` (about a minute); it measures CPU, not rates or the tail.
 *
 *   node scripts/bench/issue-cpu.ts [rounds=5] [requests=10000]     (BENCH_PORT, BENCH_REDIS_PORT as the bench)
 */
import { readFileSync } from 'node:fs';
import autocannon from 'autocannon';
import { BenchIssuer, openBenchTask, startBenchRedis, startBrokerProcess, writeBenchConfig, writePolicies } from './setup.ts';

/** utime + stime of `pid` (or its main thread), in µs. */
function cpuUs(pid: number, mainThread: boolean): number {
  const stat = readFileSync(mainThread ? `/proc/${pid}/task/${pid}/stat` : `/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) * 10_000; // USER_HZ is 100
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

async function main(): Promise<void> {
  const rounds = Number(process.argv[2] ?? 5);
  const requests = Number(process.argv[3] ?? 10_000);
  const port = Number(process.env.BENCH_PORT ?? 18_080) + 4;
  const redis = await startBenchRedis();
  const issuer = new BenchIssuer();
  const agent = issuer.svid('/agent/bench');
  const orch = issuer.svid('/orchestrator/bench');
  const kinds = ['permit-all', 'realistic'] as const;
  const brokers = await Promise.all(
    kinds.map(async (kind, i) => {
      const policiesDir = kind === 'permit-all' ? writePolicies('permit-all') : writePolicies('realistic', 24);
      const config = writeBenchConfig({ redisUrl: redis.url, prefix: `bench-cpu-${i}`, port: port + i, issuer, policiesDir });
      const b = await startBrokerProcess(config, port + i);
      await openBenchTask(b.url, orch, `t-cpu-${i}`);
      return { kind, b, task: `t-cpu-${i}`, all: [] as number[], main: [] as number[] };
    }),
  );
  const load = (url: string, task: string, amount: number) =>
    autocannon({
      url: `${url}/v1/credentials`,
      method: 'POST',
      connections: 32,
      amount,
      headers: { authorization: `Bearer ${agent}`, 'content-type': 'application/json' },
      body: JSON.stringify({ taskId: task, role: 'tickets-api', scopes: ['tickets:read'], ttlSeconds: 600 }),
    });
  try {
    for (const x of brokers) await load(x.b.url, x.task, 10_000); // warm-up (JIT, connections)
    for (let r = 0; r < rounds; r++) {
      for (const x of r % 2 ? [...brokers].reverse() : brokers) {
        const pid = x.b.child.pid as number;
        const a0 = cpuUs(pid, false);
        const m0 = cpuUs(pid, true);
        const res = await load(x.b.url, x.task, requests);
        if (res.non2xx > 0 || res['2xx'] === 0) throw new Error(`${x.kind}: ${res.non2xx} non-2xx`);
        x.all.push((cpuUs(pid, false) - a0) / res['2xx']);
        x.main.push((cpuUs(pid, true) - m0) / res['2xx']);
      }
    }
  } finally {
    for (const x of brokers) await x.b.stop();
    await redis.stop();
  }
  const out = Object.fromEntries(
    brokers.map((x) => [
      x.kind === 'permit-all' ? 'permit-all' : '24 policies',
      { cpuUsPerIssuance: Math.round(median(x.all)), mainThreadUs: Math.round(median(x.main)), rounds: x.all.map(Math.round) },
    ]),
  );
  console.log(JSON.stringify(out));
}

await main();
process.exit(0);
