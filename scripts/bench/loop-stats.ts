/**
 * Event-loop delay and GC time of the bench broker over one load phase, from
 * its own /metrics (prom-client's default metrics: a
 * `perf_hooks.monitorEventLoopDelay` histogram that each scrape resets, and
 * `nodejs_gc_duration_seconds` per GC kind). Scrape once before the phase
 * (`mark`) and once after (`since`): the tail of an open-loop run is mostly
 * the event loop being busy, and this says how much of it was GC.
 */
export interface LoopStats {
  /** Event-loop delay over the phase (ms beyond the monitor's 10-ms tick). */
  loopP50Ms: number;
  loopP99Ms: number;
  loopMaxMs: number;
  /** Time spent in GC during the phase (ms), and per second of the phase. */
  gcMs: number;
  gcMsPerSecond: number;
  /** Major (mark-sweep) collections during the phase. */
  majorGcs: number;
}

interface Scrape {
  at: number;
  gcSeconds: number;
  majorCount: number;
  text: string;
}

async function scrape(url: string): Promise<Scrape> {
  const text = await (await fetch(`${url}/metrics`)).text();
  let gcSeconds = 0;
  let majorCount = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('nodejs_gc_duration_seconds_sum')) gcSeconds += Number(line.slice(line.lastIndexOf(' ') + 1));
    if (line.startsWith('nodejs_gc_duration_seconds_count{kind="major"}')) majorCount = Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return { at: performance.now(), gcSeconds, majorCount, text };
}

/**
 * prom-client's sampling tick (`eventLoopMonitoringPrecision`, 10 ms by
 * default). The histogram records the time between two ticks, so an idle loop
 * reads ~10.1 ms; what is reported here is the delay beyond the tick.
 */
const TICK_MS = 10;

const gauge = (text: string, name: string): number => {
  const m = new RegExp(`^${name} ([0-9.e+-]+)`, 'm').exec(text);
  return m ? Math.round(Math.max(0, Number(m[1]) * 1e3 - TICK_MS) * 100) / 100 : Number.NaN;
};

/** Starts a phase: resets the broker's event-loop histogram and notes its GC total. */
export async function mark(url: string): Promise<Scrape> {
  return scrape(url);
}

/** The phase's event-loop delay and GC time. */
export async function since(url: string, start: Scrape): Promise<LoopStats> {
  const end = await scrape(url);
  const seconds = (end.at - start.at) / 1000;
  const gcMs = Math.round((end.gcSeconds - start.gcSeconds) * 1000);
  return {
    loopP50Ms: gauge(end.text, 'nodejs_eventloop_lag_p50_seconds'),
    loopP99Ms: gauge(end.text, 'nodejs_eventloop_lag_p99_seconds'),
    loopMaxMs: gauge(end.text, 'nodejs_eventloop_lag_max_seconds'),
    gcMs,
    gcMsPerSecond: Math.round((gcMs / seconds) * 10) / 10,
    majorGcs: end.majorCount - start.majorCount,
  };
}
