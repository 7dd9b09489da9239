/**
 * The bench's open-loop 2,000/s phase alone, with what happened at each slow
 * request (docs/benchmarks.md, "The 2,000/s tail: where it comes from").
 *
 *   node scripts/bench/tail.ts [seconds=20]
 *
 * Runs the sequence `npm run bench` runs before that phase on a fresh broker
 * (24 Cedar policies; 5 s cold at 1,000/s; 30,000 closed-loop requests of JIT
 * warm-up; 2 s of settling at the rate), then measures TAIL_RATE (2000) for
 * `seconds`. TAIL_AT1000=1 puts the bench's 12 s at 1,000/s before it, so the
 * window falls where the bench's does (across the 30-s background passes).
 * The broker gets scripts/bench/tail-probe.ts preloaded (its event-loop gaps,
 * GCs and long timer callbacks, epoch-timed) and TAIL_NODE_FLAGS (e.g.
 * `--cpu-prof --cpu-prof-dir=/tmp/x`); TAIL_TASKSET_BROKER / TAIL_TASKSET_GEN
 * pin the broker and this process (the generator) to CPU lists.
 * BENCH_PORT (default here 18180) and BENCH_REDIS_PORT (6390) as in the bench.
 *
 * It prints p50/p99/max, then 100-ms bins that held 5 or more requests over
 * 10 ms, each with the broker's gaps, GC pauses and timers there and the CPU
 * the kernel's kdamond threads took (host.ts); TAIL_OUT keeps the raw JSON.
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import autocannon from 'autocannon';
import { parse, stringify } from 'yaml';
import { pacedLoad } from './paced.ts';
import { BenchIssuer, openBenchTask, startBenchRedis, startBrokerProcess, writeBenchConfig, writePolicies } from './setup.ts';

const SECONDS = Number(process.argv[2] ?? 20);
const RATE = Number(process.env.TAIL_RATE ?? 2000);
const PORT = Number(process.env.BENCH_PORT ?? 18_180);
const SLOW_MS = 10;
const probeFile = join(tmpdir(), `tail-probe-${process.pid}.json`);
/** TAIL_PROBE=0: no probe in the broker (its 1-ms timers cost a little), only /proc figures. */
const PROBE = process.env.TAIL_PROBE !== '0';

if (process.env.TAIL_TASKSET_GEN) spawnSync('taskset', ['-pac', process.env.TAIL_TASKSET_GEN, String(process.pid)], { stdio: 'ignore' });

const read = (f: string): string | undefined => {
  try {
    return readFileSync(f, 'utf8');
  } catch {
    return undefined;
  }
};
const kdamonds = readdirSync('/proc').filter((p) => /^\d+$/.test(p) && read(`/proc/${p}/comm`)?.startsWith('kdamond'));
const kdamondNs = (): number => kdamonds.reduce((s, p) => s + Number(read(`/proc/${p}/schedstat`)?.split(' ')[0] ?? 0), 0);

/** Busy CPU of the whole machine so far (ms, /proc/stat), and of one process (all threads). */
const machineBusyMs = (): number => {
  const f = (read('/proc/stat') ?? '').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return ((f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!) * 1000) / 100; // user nice system irq softirq steal
};
const procMs = (p: number): number => {
  const st = read(`/proc/${p}/stat`);
  if (!st) return 0;
  const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
  return ((Number(f[11]) + Number(f[12])) * 1000) / 100;
};

/** A thread's user and system CPU (ms) and context switches (voluntary, not), from /proc. */
const threadStats = (p: number, tid: number) => {
  const st = read(`/proc/${p}/task/${tid}/stat`) ?? ')';
  const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
  const status = read(`/proc/${p}/task/${tid}/status`) ?? '';
  const ctx = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? 0);
  return {
    user: (Number(f[11]) * 1000) / 100,
    sys: (Number(f[12]) * 1000) / 100,
    vcs: ctx('voluntary_ctxt_switches'),
    ivcs: ctx('nonvoluntary_ctxt_switches'),
  };
};

const redis = await startBenchRedis();
const redisPid = Number(/process_id:(\d+)/.exec(await redis.redis.info('server'))?.[1] ?? 0);
const issuer = new BenchIssuer();
const agentToken = issuer.svid('/agent/bench');
const orchToken = issuer.svid('/orchestrator/bench');
const config = writeBenchConfig({ redisUrl: redis.url, prefix: 'tail', port: PORT, issuer, policiesDir: writePolicies('realistic', 24) });
// TAIL_CONFIG: JSON merged into the broker's config (e.g. {"audit":{"sealIntervalSeconds":60}} moves the export pass).
if (process.env.TAIL_CONFIG) {
  const merge = (a: Record<string, unknown>, b: Record<string, unknown>): Record<string, unknown> => {
    for (const [k, v] of Object.entries(b))
      a[k] = v && typeof v === 'object' && !Array.isArray(v) && a[k] && typeof a[k] === 'object' ? merge(a[k] as never, v as never) : v;
    return a;
  };
  writeFileSync(config, stringify(merge(parse(readFileSync(config, 'utf8')), JSON.parse(process.env.TAIL_CONFIG))));
}
process.env.BENCH_NODE_FLAGS = [
  PROBE ? `--import=${new URL('./tail-probe.ts', import.meta.url).pathname}` : '',
  process.env.TAIL_NODE_FLAGS ?? '',
]
  .join(' ')
  .trim();
process.env.TAIL_PROBE_FILE = probeFile;
const broker = await startBrokerProcess(config, PORT);
const startedAt = Date.now();
const pid = broker.child.pid!;
if (process.env.TAIL_TASKSET_BROKER) spawnSync('taskset', ['-apc', process.env.TAIL_TASKSET_BROKER, String(pid)], { stdio: 'ignore' });

let stopped = false;
const stopBroker = async () => {
  if (stopped) return;
  stopped = true;
  await broker.stop();
};
const load1 = uptime();
try {
  await openBenchTask(broker.url, orchToken, 't-tail', {
    ttlSeconds: 3600,
    grants: [{ role: 'tickets-api', scopes: ['tickets:read'] }, { role: 'demo-api' }],
  });
  const t = {
    url: broker.url,
    path: '/v1/credentials',
    headers: { authorization: `Bearer ${agentToken}`, 'content-type': 'application/json' },
    body: JSON.stringify({ taskId: 't-tail', role: 'tickets-api', scopes: ['tickets:read'], ttlSeconds: 600 }),
  };
  await pacedLoad({ ...t, rate: 1000, seconds: 5 });
  await autocannon({
    url: `${t.url}${t.path}`,
    method: 'POST',
    connections: 16,
    amount: 30_000,
    duration: 60,
    headers: t.headers,
    body: t.body,
  });
  if (process.env.TAIL_AT1000) await pacedLoad({ ...t, rate: 1000, seconds: 12 });
  await pacedLoad({ ...t, rate: RATE, seconds: 2 });

  const reqs: { due: number; ms: number; status: number }[] = [];
  const kd: { at: number; ns: number }[] = [];
  // Every 100 ms: the machine's and each party's CPU, and the export file's size (the audit export pass's progress).
  const exportFile = join(dirname(config), 'audit.jsonl');
  const size = () => {
    try {
      return statSync(exportFile).size;
    } catch {
      return 0;
    }
  };
  const ticks: { at: number; machine: number; broker: number; gen: number; redis: number; kd: number; exportBytes: number }[] = [];
  const tick = () =>
    ticks.push({
      at: Date.now(),
      machine: machineBusyMs(),
      broker: procMs(pid),
      gen: procMs(process.pid),
      redis: procMs(redisPid),
      kd: kdamondNs() / 1e6,
      exportBytes: size(),
    });
  let n20 = 0;
  const sampler = setInterval(() => {
    kd.push({ at: Date.now(), ns: kdamondNs() });
    if (++n20 % 5 === 0) tick();
  }, 20);
  tick();
  kd.push({ at: Date.now(), ns: kdamondNs() });
  const main0 = threadStats(pid, pid);
  const cpu0 = { machine: machineBusyMs(), broker: procMs(pid), gen: procMs(process.pid), redis: procMs(redisPid), kd: kdamondNs() / 1e6 };
  if (PROBE) process.kill(pid, 'SIGUSR2');
  const windowStart = Date.now();
  const r = await pacedLoad({ ...t, rate: RATE, seconds: SECONDS, record: (due, ms, status) => reqs.push({ due, ms, status }) });
  if (PROBE) process.kill(pid, 'SIGUSR2');
  const main1 = threadStats(pid, pid);
  const cpu1 = { machine: machineBusyMs(), broker: procMs(pid), gen: procMs(process.pid), redis: procMs(redisPid), kd: kdamondNs() / 1e6 };
  clearInterval(sampler);
  await new Promise((res) => setTimeout(res, 300));
  const probe = (PROBE ? JSON.parse(readFileSync(probeFile, 'utf8')) : { loop: {}, gaps: [], gcs: [], timers: [], clock: undefined }) as {
    loop: Record<string, number>;
    gaps: { at: number; ms: number }[];
    gcs: { at: number; ms: number; kind: number }[];
    timers: { at: number; ms: number; where: string }[];
  };
  const kdMs = (kd.at(-1)!.ns - kd[0]!.ns) / 1e6;
  const gcMs = probe.gcs.reduce((s, g) => s + g.ms, 0);
  console.log(
    `window at ${((windowStart - startedAt) / 1000).toFixed(1)}-${((Date.now() - startedAt) / 1000).toFixed(1)} s after start; load average ${load1} -> ${uptime()}`,
  );
  console.log(
    `${RATE}/s for ${SECONDS} s: p50 ${r.p50Ms} ms, p90 ${r.p90Ms} ms, p99 ${r.p99Ms} ms, max ${r.maxMs} ms, non-2xx ${r.failed}; ` +
      `over ${SLOW_MS} ms: ${reqs.filter((q) => q.ms > SLOW_MS).length}`,
  );
  const d = (k: keyof typeof cpu0) => cpu1[k] - cpu0[k];
  const m = (k: keyof typeof main0) => main1[k] - main0[k];
  const mainMs = m('user') + m('sys');
  const others = d('machine') - d('broker') - d('gen') - d('redis') - d('kd');
  console.log(
    `CPU over the window (ms/s of 2,000): broker ${Math.round(d('broker') / SECONDS)}, generator ${Math.round(d('gen') / SECONDS)}, redis ${Math.round(d('redis') / SECONDS)}, ` +
      `kdamond ${Math.round(d('kd') / SECONDS)}, everything else ${Math.round(others / SECONDS)} (machine ${Math.round(d('machine') / SECONDS)})`,
  );
  console.log(
    `broker: main thread ${Math.round(mainMs)} ms CPU (${Math.round((mainMs * 1000) / r.ok)} µs/req: user ${Math.round((m('user') * 1000) / r.ok)}, system ${Math.round((m('sys') * 1000) / r.ok)}; context switches per req ${(m('vcs') / r.ok).toFixed(2)} voluntary, ${(m('ivcs') / r.ok).toFixed(2)} not); ` +
      `loop delay (1 ms res.) p50 ${probe.loop.p50} p99 ${probe.loop.p99} max ${probe.loop.max} ms; gaps > 2 ms: ${probe.gaps.length} (${Math.round(probe.gaps.reduce((s, g) => s + g.ms, 0))} ms), ` +
      `> 5 ms: ${probe.gaps.filter((g) => g.ms > 5).length}; GC ${probe.gcs.length} (${Math.round(gcMs)} ms, max ${Math.max(0, ...probe.gcs.map((g) => g.ms)).toFixed(1)} ms, major ${probe.gcs.filter((g) => g.kind === 4).length}); ` +
      `timers > 1 ms: ${probe.timers.length}; kdamond ${Math.round(kdMs)} ms`,
  );
  // 100-ms bins: where the slow requests are, and what the broker and the kernel did there.
  const t0 = Math.min(...reqs.map((q) => q.due));
  const bins = new Map<number, { n: number; slow: number; max: number }>();
  for (const q of reqs) {
    const b = Math.floor((q.due - t0) / 100);
    const x = bins.get(b) ?? { n: 0, slow: 0, max: 0 };
    x.n += 1;
    if (q.ms > SLOW_MS) x.slow += 1;
    x.max = Math.max(x.max, q.ms);
    bins.set(b, x);
  }
  const inBin = <T extends { at: number }>(xs: T[], b: number, padMs = 30) =>
    xs.filter((x) => x.at >= t0 + b * 100 - padMs && x.at < t0 + (b + 1) * 100);
  const kdIn = (b: number): number => {
    const xs = kd.filter((x) => x.at >= t0 + b * 100 - 40 && x.at <= t0 + (b + 1) * 100 + 20);
    return xs.length > 1 ? (xs.at(-1)!.ns - xs[0]!.ns) / 1e6 : 0;
  };
  const slowBins = [...bins.entries()].filter(([, x]) => x.slow >= 5).sort((a, b) => a[0] - b[0]);
  let withGap = 0;
  let withGc = 0;
  let withKd = 0;
  let shown = 0;
  for (const [b, x] of slowBins) {
    const gaps = inBin(probe.gaps, b);
    const gcs = inBin(probe.gcs, b);
    const tm = inBin(probe.timers, b, 50);
    const k = kdIn(b);
    if (gaps.some((g) => g.ms > 5)) withGap += 1;
    if (gcs.some((g) => g.ms > 2)) withGc += 1;
    if (k > 2) withKd += 1;
    if (++shown > 40) continue;
    console.log(
      `  ${(b / 10).toFixed(1)} s: ${x.slow}/${x.n} slow, max ${x.max.toFixed(1)} ms | gaps ${gaps.map((g) => g.ms.toFixed(1)).join(',') || '-'} | gc ${gcs.map((g) => `${g.ms.toFixed(1)}${g.kind === 4 ? 'M' : ''}`).join(',') || '-'} | kdamond ${k.toFixed(1)} ms | ${tm.map((m) => `${m.ms.toFixed(1)} ms ${m.where}`).join('; ') || ''}`,
    );
  }
  console.log(
    `slow bins: ${slowBins.length}, with a broker gap > 5 ms: ${withGap}, with a GC > 2 ms: ${withGc}, with kdamond > 2 ms: ${withKd}; ` +
      `slow requests in them: ${slowBins.reduce((s, [, x]) => s + x.slow, 0)}`,
  );
  const long = probe.timers.filter((m) => m.ms > 1);
  const bySite = new Map<string, { n: number; ms: number; max: number }>();
  for (const m of long) {
    const x = bySite.get(m.where) ?? { n: 0, ms: 0, max: 0 };
    x.n += 1;
    x.ms += m.ms;
    x.max = Math.max(x.max, m.ms);
    bySite.set(m.where, x);
  }
  for (const [w, x] of [...bySite.entries()].sort((a, b) => b[1].ms - a[1].ms).slice(0, 10)) {
    console.log(`  timer ${x.n}x, ${x.ms.toFixed(1)} ms in all, max ${x.max.toFixed(1)} ms: ${w}`);
  }
  // Per second of the window: the tail, the CPU of everyone else on the machine, and whether the export pass wrote.
  const perSecond: { s: number; p99: number; slow: number; othersMs: number; brokerMs: number; exportKiB: number }[] = [];
  for (let sec = 0; sec < SECONDS; sec++) {
    const l = reqs.filter((q) => q.due >= t0 + sec * 1000 && q.due < t0 + (sec + 1) * 1000).map((q) => q.ms);
    l.sort((a, b) => a - b);
    const a = ticks.filter((x) => x.at >= t0 + sec * 1000).at(0);
    const b = ticks.filter((x) => x.at <= t0 + (sec + 1) * 1000).at(-1);
    if (!a || !b || b.at <= a.at || l.length === 0) continue;
    const per = 1000 / (b.at - a.at);
    const others = b.machine - a.machine - (b.broker - a.broker) - (b.gen - a.gen) - (b.redis - a.redis) - (b.kd - a.kd);
    perSecond.push({
      s: sec,
      p99: Math.round(l[Math.floor(l.length * 0.99)]! * 10) / 10,
      slow: l.filter((v) => v > SLOW_MS).length,
      othersMs: Math.round(others * per),
      brokerMs: Math.round((b.broker - a.broker) * per),
      exportKiB: Math.round((b.exportBytes - a.exportBytes) / 1024),
    });
  }
  console.log(
    `per second: ${perSecond.map((x) => `${x.s}: p99 ${x.p99} broker ${x.brokerMs} others ${x.othersMs} export ${x.exportKiB} KiB`).join(' | ')}`,
  );
  if (process.env.TAIL_OUT)
    writeFileSync(process.env.TAIL_OUT, JSON.stringify({ result: r, reqs, kd, ticks, perSecond, probe, windowStart, startedAt }));
  await stopBroker();
  const profDir = /--cpu-prof-dir[= ](\S+)/.exec(process.env.TAIL_NODE_FLAGS ?? '')?.[1];
  if (profDir) profileBins(profDir, probe as never, t0, new Set(slowBins.map(([b]) => b)), bins.size);
} finally {
  await stopBroker();
  await redis.stop();
}
process.exit(0);

/**
 * The broker's CPU profile over the window, in the same 100-ms bins: how busy
 * its main thread was in the slow bins against the others, and which broker
 * code (the innermost frame under src/) and which leaf frames took the time.
 */
function profileBins(
  dir: string,
  probe: { clock: { monoUs: number; epochMs: number } },
  t0: number,
  slow: Set<number>,
  nBins: number,
): void {
  const file = readdirSync(dir)
    .filter((f) => /\.0\.\d+\.cpuprofile$/.test(f)) // the main thread's (thread 0), not the record checker's
    .map((f) => join(dir, f))
    .sort()
    .at(-1);
  if (!file) return;
  type N = { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] };
  const prof = JSON.parse(readFileSync(file, 'utf8')) as { nodes: N[]; samples: number[]; timeDeltas: number[]; startTime: number };
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const name = (n: N) =>
    `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.replace(/^.*\/(src|node_modules)\//, '$1/').replace(/^file:\/\//, '')}:${n.callFrame.lineNumber + 1}`;
  const owner = new Map<number, string>();
  const ownerOf = (id: number): string => {
    let o = owner.get(id);
    if (o !== undefined) return o;
    o = '(not broker code)';
    for (let x: number | undefined = id; x !== undefined; x = parent.get(x)) {
      const n = byId.get(x)!;
      if (/\/src\//.test(n.callFrame.url) && !/node_modules/.test(n.callFrame.url)) {
        o = name(n);
        break;
      }
    }
    owner.set(id, o);
    return o;
  };
  const agg = () => ({ busyUs: 0, totalUs: 0, leaf: new Map<string, number>(), own: new Map<string, number>() });
  const inSlow = agg();
  const inRest = agg();
  let t = prof.startTime;
  for (let i = 0; i < prof.samples.length; i++) {
    t += prof.timeDeltas[i]!;
    const dt = prof.timeDeltas[i + 1] ?? 0;
    const at = probe.clock.epochMs + (t - probe.clock.monoUs) / 1000;
    const b = Math.floor((at - t0) / 100);
    if (b < 0 || b >= nBins) continue;
    const a = slow.has(b) ? inSlow : inRest;
    const n = byId.get(prof.samples[i]!)!;
    a.totalUs += dt;
    if (n.callFrame.functionName === '(idle)') continue;
    a.busyUs += dt;
    a.leaf.set(name(n), (a.leaf.get(name(n)) ?? 0) + dt);
    const o = ownerOf(n.id);
    a.own.set(o, (a.own.get(o) ?? 0) + dt);
  }
  const top = (m: Map<string, number>, of: number) =>
    [...m.entries()]
      .sort((x, y) => y[1] - x[1])
      .slice(0, 12)
      .map(([k, v]) => `    ${((100 * v) / of).toFixed(1)}% ${k}`)
      .join('\n');
  for (const [label, a] of [
    ['slow bins', inSlow],
    ['other bins', inRest],
  ] as const) {
    if (a.totalUs === 0) continue;
    console.log(`profile, ${label}: main thread busy ${((100 * a.busyUs) / a.totalUs).toFixed(0)}% of ${(a.totalUs / 1e6).toFixed(1)} s`);
    console.log(`  by broker code (innermost src/ frame), % of busy:\n${top(a.own, a.busyUs)}`);
    console.log(`  by leaf frame, % of busy:\n${top(a.leaf, a.busyUs)}`);
  }
}

function uptime(): string {
  return (read('/proc/loadavg') ?? '').split(' ').slice(0, 3).join(' ');
}
