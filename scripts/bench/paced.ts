/**
 * An open-loop load generator: request i is due at t0 + i/rate, whatever
 * happened to earlier requests, and its latency is measured from that due
 * time (not from when it was actually sent), so a stalled broker cannot hide
 * its delays (no coordinated omission). autocannon's rate limit sends bursts,
 * which measures its own bursts rather than the broker at a steady 1,000/s.
 */
import { Agent, request } from 'node:http';

export interface PacedResult {
  sent: number;
  ok: number;
  failed: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

export async function pacedLoad(opts: {
  url: string;
  path: string;
  headers: Record<string, string>;
  body: string;
  rate: number;
  seconds: number;
}): Promise<PacedResult> {
  const target = new URL(opts.path, opts.url);
  const agent = new Agent({ keepAlive: true, maxSockets: 256 });
  const latencies: number[] = [];
  let ok = 0;
  let failed = 0;
  const total = Math.round(opts.rate * opts.seconds);
  const interval = 1000 / opts.rate;
  const t0 = performance.now() + 20;
  const inflight: Promise<void>[] = [];
  const send = (due: number) =>
    new Promise<void>((resolve) => {
      const req = request(
        {
          host: target.hostname,
          port: target.port,
          path: target.pathname,
          method: 'POST',
          agent,
          headers: { ...opts.headers, 'content-length': Buffer.byteLength(opts.body) },
        },
        (res) => {
          res.resume();
          res.on('end', () => {
            latencies.push(performance.now() - due);
            if (res.statusCode! < 300) ok += 1;
            else failed += 1;
            resolve();
          });
        },
      );
      req.on('error', () => {
        failed += 1;
        resolve();
      });
      req.end(opts.body);
    });
  // Timer-driven: each tick sends every request whose due time has passed, then
  // sleeps until the next one is due, so the event loop stays free for responses.
  await new Promise<void>((done) => {
    let i = 0;
    const tick = () => {
      const now = performance.now();
      while (i < total && t0 + i * interval <= now) {
        inflight.push(send(t0 + i * interval));
        i += 1;
      }
      if (i < total) setTimeout(tick, Math.max(0, t0 + i * interval - performance.now()));
      else done();
    };
    setTimeout(tick, 20);
  });
  await Promise.all(inflight);
  agent.destroy();
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => Math.round(latencies[Math.min(latencies.length - 1, Math.floor((p / 100) * latencies.length))]! * 100) / 100;
  return { sent: total, ok, failed, p50Ms: pct(50), p90Ms: pct(90), p99Ms: pct(99), maxMs: pct(100) };
}
