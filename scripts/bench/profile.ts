/**
 * CPU profile of the broker's issuance path: starts the bench broker with
 * `--cpu-prof` (24 Cedar policies, like the paced figures), drives
 * POST /v1/credentials with autocannon (64 connections, a fixed number of
 * requests), stops it and prints the heaviest frames by self time, and self
 * time summed per source area (the broker's modules, its dependencies, node
 * internals, GC). The .cpuprofile is kept (open it in Chrome DevTools or
 * speedscope for the flame graph).
 *
 *   node scripts/bench/profile.ts [requests=40000]   (PROFILE_POLICIES=permit-all for one permit-all policy)
 *
 * PROFILE_RATE=2000 sends the requests open loop at that rate instead
 * (scripts/bench/paced.ts), to see what else holds the event loop meanwhile.
 *
 * PROFILE_KIND=heap takes a sampling heap profile instead (heap-sampler.ts,
 * one sample per 8 KiB allocated, freed objects included) and prints bytes allocated per issuance by
 * area and by frame: allocation is what sets how often the young generation
 * is scavenged, and each scavenge is a pause in the tail.
 */
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { pacedLoad } from './paced.ts';
import { BenchIssuer, openBenchTask, startBenchRedis, startBrokerProcess, writeBenchConfig, writePolicies } from './setup.ts';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
}

/** Totals, and the same broken down by frame and by area, heaviest first. */
type Summary = { total: number; frames: [string, number][]; areas: [string, number][] };

/** A frame's name (function file:line) and its area: a dependency, a node: module, a folder of src/. */
function frameOf(f: Node['callFrame']): { name: string; area: string } {
  const file = f.url.replace(/^file:\/\//, '');
  const short = file.replace(/^.*\/node_modules\//, '').replace(/^.*?\/(src|scripts)\//, '$1/');
  const name = `${f.functionName || '(anonymous)'} ${short ? `${short}:${f.lineNumber + 1}` : ''}`.trim();
  const area = !file
    ? f.functionName // (program), (garbage collector), (idle), native
    : file.includes('/node_modules/')
      ? file.replace(/^.*\/node_modules\/((@[^/]+\/)?[^/]+).*$/, '$1')
      : file.startsWith('node:')
        ? file.split('/').slice(0, 2).join('/') // node:internal/crypto, node:_http_server
        : file.replace(/^.*?\/(src\/[^/]+).*$/, '$1');
  return { name, area };
}

/**
 * Self time per frame and per area (ms), from a V8 .cpuprofile, over the load
 * only: from the first sample inside the issuance handler to the last (start-up
 * and shutdown left out).
 */
export function summarize(profile: Profile): Summary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const inIssuance = new Map<number, boolean>();
  const issuing = (id: number): boolean => {
    let v = inIssuance.get(id);
    if (v === undefined) {
      const p = parent.get(id);
      const f = byId.get(id)!.callFrame;
      v = (f.functionName === 'request' && f.url.endsWith('/src/credentials/credential-service.ts')) || (p !== undefined && issuing(p));
      inIssuance.set(id, v);
    }
    return v;
  };
  const first = profile.samples.findIndex(issuing);
  const last = profile.samples.findLastIndex(issuing);
  const self = new Map<number, number>();
  for (let i = Math.max(0, first); i <= last; i++) {
    const id = profile.samples[i]!;
    self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0) / 1000);
  }
  const frames = new Map<string, number>();
  const areas = new Map<string, number>();
  let total = 0;
  for (const [id, ms] of self) {
    const f = byId.get(id)!.callFrame;
    const { name, area } = frameOf(f);
    frames.set(name, (frames.get(name) ?? 0) + ms);
    areas.set(area, (areas.get(area) ?? 0) + ms);
    if (f.functionName !== '(idle)') total += ms;
  }
  const sorted = (m: Map<string, number>) => [...m].filter(([k]) => k !== '(idle)').sort((a, b) => b[1] - a[1]);
  return { total, frames: sorted(frames), areas: sorted(areas) };
}

interface HeapNode {
  callFrame: Node['callFrame'];
  selfSize: number;
  children: HeapNode[];
}

/**
 * Bytes allocated by frame and by area from a V8 sampling heap profile. The
 * whole process's life is counted (the profile has no timeline); with tens
 * of thousands of requests start-up is a small share.
 */
export function summarizeHeap(root: HeapNode): Summary {
  const frames = new Map<string, number>();
  const areas = new Map<string, number>();
  let total = 0;
  const visit = (n: HeapNode): void => {
    if (n.selfSize > 0) {
      const { name, area } = frameOf(n.callFrame);
      frames.set(name, (frames.get(name) ?? 0) + n.selfSize);
      areas.set(area, (areas.get(area) ?? 0) + n.selfSize);
      total += n.selfSize;
    }
    for (const c of n.children) visit(c);
  };
  visit(root);
  const sorted = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]);
  return { total, frames: sorted(frames), areas: sorted(areas) };
}

async function main(): Promise<void> {
  const requests = Number(process.argv[2] ?? 40_000);
  const port = Number(process.env.BENCH_PORT ?? 18_080) + 2;
  const dir = mkdtempSync(join(tmpdir(), 'jit-prof-'));
  const redis = await startBenchRedis();
  const issuer = new BenchIssuer();
  const policies = process.env.PROFILE_POLICIES === 'permit-all' ? writePolicies('permit-all') : writePolicies('realistic', 24);
  const config = writeBenchConfig({ redisUrl: redis.url, prefix: 'bench-prof', port, issuer, policiesDir: policies });
  const heap = process.env.PROFILE_KIND === 'heap';
  if (heap) process.env.HEAP_PROFILE_FILE = join(dir, 'broker.heapprofile');
  process.env.BENCH_NODE_FLAGS = heap
    ? `--import=${fileURLToPath(new URL('./heap-sampler.ts', import.meta.url))}`
    : `--cpu-prof --cpu-prof-dir=${dir} --cpu-prof-interval=200`;
  const broker = await startBrokerProcess(config, port);
  const orch = issuer.svid('/orchestrator/bench');
  const agent = issuer.svid('/agent/bench');
  await openBenchTask(broker.url, orch, 't-prof');
  const t0 = performance.now();
  const headers = { authorization: `Bearer ${agent}`, 'content-type': 'application/json' };
  const body = JSON.stringify({ taskId: 't-prof', role: 'tickets-api', scopes: ['tickets:read'], ttlSeconds: 600 });
  const rate = Number(process.env.PROFILE_RATE ?? 0);
  let r: { '2xx': number; non2xx: number };
  if (rate > 0) {
    const p = await pacedLoad({ url: broker.url, path: '/v1/credentials', headers, body, rate, seconds: requests / rate });
    r = { '2xx': p.ok, non2xx: p.failed };
    console.log(`open loop at ${rate}/s: p50 ${p.p50Ms} ms, p99 ${p.p99Ms} ms, max ${p.maxMs} ms`);
  } else {
    r = await autocannon({ url: `${broker.url}/v1/credentials`, method: 'POST', connections: 64, amount: requests, headers, body });
  }
  const seconds = (performance.now() - t0) / 1000;
  await broker.stop();
  await redis.stop();
  const file = readdirSync(dir).find((f) => f.endsWith(heap ? '.heapprofile' : '.cpuprofile'));
  if (!file) throw new Error(`no profile written in ${dir}`);
  const data = JSON.parse(readFileSync(join(dir, file), 'utf8'));
  console.log(`${r['2xx']} issued (non-2xx ${r.non2xx}) in ${seconds.toFixed(1)} s`);
  if (heap) printHeap(summarizeHeap((data as { head: HeapNode }).head), r['2xx']);
  else printCpu(summarize(data as Profile), r['2xx']);
  console.log(`\nprofile: ${join(dir, file)}`);
}

function printCpu(s: Summary, issued: number): void {
  console.log(
    `broker busy ${(s.total / 1000).toFixed(1)} s = ${Math.round((s.total * 1000) / issued)} µs CPU (on its main thread) per issuance`,
  );
  printTop(s, (ms) => `${((ms * 1000) / issued).toFixed(1).padStart(6)} µs`, 'self time', 'µs');
}

export function printHeap(s: Summary, issued: number): void {
  console.log(`allocated ${(s.total / 2 ** 20).toFixed(0)} MiB (sampled) = ${(s.total / issued / 1024).toFixed(1)} KiB per issuance`);
  printTop(s, (b) => `${(b / issued / 1024).toFixed(2).padStart(6)} KiB`, 'bytes allocated', 'KiB');
}

/** The top areas and frames, each as a share of the total and per issuance (`perIssuance`). */
function printTop({ total, frames, areas }: Summary, perIssuance: (v: number) => string, what: string, unit: string): void {
  const row = (v: number) => `${((100 * v) / total).toFixed(1).padStart(5)}% ${perIssuance(v)}`;
  console.log(`\n${what} by area (share, ${unit} per issuance):`);
  for (const [k, v] of areas.slice(0, 16)) console.log(`${row(v)}  ${k}`);
  console.log(`\ntop frames by ${what} (share, ${unit} per issuance):`);
  for (const [k, v] of frames.slice(0, 30)) console.log(`${row(v)}  ${k}`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await main();
  process.exit(0);
}
