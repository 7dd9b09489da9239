/**
 * Bytes a JWT issuance allocates and promotes, counted by V8 (not sampled):
 * the bench broker (24 Cedar policies) with gc-window.ts preloaded, the
 * bench's JIT warm-up (30,000 requests closed loop at 16 connections), then
 * a window of open-loop load at ALLOC_RATE (default 2,000/s) for
 * ALLOC_SECONDS (default 10). Prints, per issuance, the bytes allocated in
 * the young generation and the bytes promoted to the old one, and the
 * window's scavenges and mark-compacts. The figures are the whole process's
 * over the window (background passes included), divided by the issuances.
 * A 5-s window with no load comes first (ALLOC_IDLE_SECONDS): its rate times
 * the load window is also printed taken out of the per-issuance figures.
 * ALLOC_CONNECTIONS=n makes the window ALLOC_REQUESTS (default 10,000)
 * requests closed loop at n connections instead: with 1, each request is
 * alone in the broker whatever the host's speed (no batching of Redis calls
 * or audit records), so the bytes per issuance compare across runs on a
 * busy host, where the open-loop figures move with the host's backlog.
 *
 *   node scripts/bench/alloc.ts
 *
 * ALLOC_SNAPSHOTS=1 writes heap snapshots before and after the window (to
 * diff what stays alive); GC_WINDOW_SAMPLE=all (or =promoted) prints a
 * sampling heap profile of the window by frame (gc-window.ts).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { pacedLoad } from './paced.ts';
import { printHeap, summarizeHeap } from './profile.ts';
import { BenchIssuer, openBenchTask, startBenchRedis, startBrokerProcess, writeBenchConfig, writePolicies } from './setup.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits until `file` exists and has stopped growing (a heap snapshot takes seconds to write). */
async function waitFor(file: string): Promise<void> {
  for (let i = 0; i < 600 && !existsSync(file); i++) await sleep(100);
  let size = -1;
  for (let i = 0; i < 600 && statSync(file).size !== size; i++) {
    size = statSync(file).size;
    await sleep(300);
  }
}

async function main(): Promise<void> {
  const rate = Number(process.env.ALLOC_RATE ?? 2000);
  const seconds = Number(process.env.ALLOC_SECONDS ?? 10);
  const warm = Number(process.env.ALLOC_WARM ?? 30_000);
  const snapshots = process.env.ALLOC_SNAPSHOTS === '1';
  const closed = Number(process.env.ALLOC_CONNECTIONS ?? 0);
  const requests = Number(process.env.ALLOC_REQUESTS ?? 10_000);
  const port = Number(process.env.BENCH_PORT ?? 18_080) + 3;
  const dir = mkdtempSync(join(tmpdir(), 'jit-alloc-'));
  const out = join(dir, 'window.json');
  const redis = await startBenchRedis();
  const issuer = new BenchIssuer();
  // ALLOC_CONFIG: JSON merged over the bench config's top-level sections, e.g. to move a background pass out of the window.
  const extra = process.env.ALLOC_CONFIG ? (JSON.parse(process.env.ALLOC_CONFIG) as Record<string, unknown>) : undefined;
  const config = writeBenchConfig({
    redisUrl: redis.url,
    prefix: 'bench-alloc',
    port,
    issuer,
    policiesDir: writePolicies('realistic', 24),
    extra,
  });
  process.env.GC_WINDOW_FILE = out;
  process.env.BENCH_NODE_FLAGS = `--import=${fileURLToPath(new URL('./gc-window.ts', import.meta.url))}${process.env.ALLOC_NODE_FLAGS ? ` ${process.env.ALLOC_NODE_FLAGS}` : ''}`;
  const broker = await startBrokerProcess(config, port);
  const orch = issuer.svid('/orchestrator/bench');
  const agent = issuer.svid('/agent/bench');
  await openBenchTask(broker.url, orch, 't-alloc');
  const headers = { authorization: `Bearer ${agent}`, 'content-type': 'application/json' };
  const body = JSON.stringify({ taskId: 't-alloc', role: 'tickets-api', scopes: ['tickets:read'], ttlSeconds: 600 });
  await autocannon({ url: `${broker.url}/v1/credentials`, method: 'POST', connections: 16, amount: warm, headers, body });
  await sleep(500);
  if (snapshots) {
    broker.child.kill('SIGWINCH');
    await waitFor(`${out}.1.heapsnapshot`);
  }
  // What the process allocates with no load (timers, the sweeper's ticks), to take out of the per-issuance figure.
  const idleSeconds = Number(process.env.ALLOC_IDLE_SECONDS ?? 5);
  broker.child.kill('SIGUSR2');
  await sleep(idleSeconds * 1000);
  broker.child.kill('SIGUSR2');
  await waitFor(out);
  const idle = JSON.parse(readFileSync(out, 'utf8'));
  rmSync(out);
  broker.child.kill('SIGUSR2');
  await sleep(50);
  const p = closed
    ? await autocannon({ url: `${broker.url}/v1/credentials`, method: 'POST', connections: closed, amount: requests, headers, body }).then(
        (r) => ({ ok: r['2xx'], failed: r.non2xx, p50Ms: r.latency.p50, p99Ms: r.latency.p99, maxMs: r.latency.max }),
      )
    : await pacedLoad({ url: broker.url, path: '/v1/credentials', headers, body, rate, seconds });
  broker.child.kill('SIGUSR2');
  await waitFor(out);
  const w = JSON.parse(readFileSync(out, 'utf8'));
  if (snapshots) {
    broker.child.kill('SIGWINCH');
    await waitFor(`${out}.2.heapsnapshot`);
  }
  await broker.stop();
  await redis.stop();
  const kb = (b: number) => (b / p.ok / 1024).toFixed(1);
  console.log(
    `${p.ok} issued (failed ${p.failed}) ${closed ? `closed loop, ${closed} connections` : `at ${rate}/s`}: p50 ${p.p50Ms} ms, p99 ${p.p99Ms} ms, max ${p.maxMs} ms\n` +
      `idle: ${(idle.allocated / idle.seconds / 1024).toFixed(0)} KiB/s allocated, ${(idle.promoted / idle.seconds / 1024).toFixed(1)} KiB/s promoted\n` +
      `per issuance, idle rate x window taken out: allocated ${kb(w.allocated - (idle.allocated / idle.seconds) * w.seconds)} KiB, promoted ${((w.promoted - (idle.promoted / idle.seconds) * w.seconds) / p.ok).toFixed(0)} B\n` +
      `per issuance: allocated ${kb(w.allocated)} KiB, promoted ${(w.promoted / p.ok).toFixed(0)} B, allocated old directly ${(w.oldDirect / p.ok).toFixed(0)} B, CPU ${((w.cpuMs * 1000) / p.ok).toFixed(0)} µs\n` +
      `window ${w.seconds.toFixed(1)} s: ${w.scavenges} scavenges (${(w.scavengeMs / Math.max(1, w.scavenges)).toFixed(2)} ms each), ` +
      `${w.majors.length} mark-compacts ${JSON.stringify(w.majors.map((m: { oldBeforeMB: number; oldAfterMB: number }) => `${m.oldBeforeMB.toFixed(1)}->${m.oldAfterMB.toFixed(1)} MB`))}, ` +
      `old space ${w.oldStartMB.toFixed(1)} -> ${w.oldEndMB.toFixed(1)} MB`,
  );
  if (process.env.GC_WINDOW_SAMPLE) {
    await waitFor(`${out}.heapprofile`);
    printHeap(summarizeHeap(JSON.parse(readFileSync(`${out}.heapprofile`, 'utf8')).head), p.ok);
  }
  if (snapshots) console.log(`snapshots: ${out}.1.heapsnapshot ${out}.2.heapsnapshot`);
  else if (!process.env.GC_WINDOW_SAMPLE) rmSync(dir, { recursive: true, force: true });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await main();
  process.exit(0);
}
