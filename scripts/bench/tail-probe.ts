/**
 * Preloaded into the bench broker by scripts/bench/tail.ts (`--import`): what
 * stopped the broker's event loop during an open-loop window, with wall-clock
 * times that the generator's slow requests can be matched against.
 *
 * The first SIGUSR2 opens a window, the second closes it and writes to
 * TAIL_PROBE_FILE (JSON):
 * - `gaps`: every turn of a 1-ms timer chain that fired more than 2 ms late
 *   (the loop was busy, or the process had no core);
 * - `gcs`: every GC (PerformanceObserver), its kind and pause;
 * - `timers`: every timer callback (setTimeout, setInterval, setImmediate not
 *   included) whose synchronous run took over 1 ms, and where it was set;
 * - `loop`: perf_hooks.monitorEventLoopDelay at 1-ms resolution over the window.
 * Times are epoch ms (performance.timeOrigin + now).
 */
import { writeFileSync } from 'node:fs';
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks';

const file = process.env.TAIL_PROBE_FILE;
const epoch = () => performance.timeOrigin + performance.now();

if (file) {
  let open = false;
  let gaps: { at: number; ms: number }[] = [];
  let gcs: { at: number; ms: number; kind: number }[] = [];
  let timers: { at: number; ms: number; where: string }[] = [];
  const hist = monitorEventLoopDelay({ resolution: 1 });
  let start = 0;

  new PerformanceObserver((list) => {
    if (!open) return;
    for (const e of list.getEntries()) {
      gcs.push({
        at: performance.timeOrigin + e.startTime,
        ms: e.duration,
        kind: (e as unknown as { detail: { kind: number } }).detail.kind,
      });
    }
  }).observe({ entryTypes: ['gc'] });

  // Timer callbacks that run long: wrap the globals (the broker's modules load after this preload).
  const where = (): string => {
    const lines = (new Error().stack ?? '').split('\n').slice(3, 6);
    return lines
      .map((l) =>
        l
          .trim()
          .replace(/^at /, '')
          .replace(/\(?file:\/\/[^)]*\/(src|node_modules)\//, '$1/'),
      )
      .join(' < ');
  };
  const wrap = <T extends (...a: never[]) => unknown>(orig: T, long: boolean): T =>
    function (this: unknown, fn: (...a: unknown[]) => unknown, ms?: number, ...rest: unknown[]) {
      if (typeof fn !== 'function') return (orig as unknown as (...a: unknown[]) => unknown).call(this, fn, ms, ...rest);
      // A call site for periodic jobs only: a stack per setTimeout would tax every request (each Redis
      // command sets one for its timeout).
      let site: string | undefined = long ? where() : undefined;
      const run = function (this: unknown, ...a: unknown[]) {
        const t0 = performance.now();
        try {
          return fn.apply(this, a);
        } finally {
          const d = performance.now() - t0;
          if (open && d > 1) {
            site ??= `${fn.name || '(anonymous)'}: ${String(fn).slice(0, 80).replace(/\s+/g, ' ')}`;
            timers.push({ at: epoch() - d, ms: d, where: site });
          }
        }
      };
      return (orig as unknown as (...a: unknown[]) => unknown).call(this, run, ms, ...rest);
    } as unknown as T;
  globalThis.setInterval = wrap(globalThis.setInterval, true);
  globalThis.setTimeout = wrap(globalThis.setTimeout, false);

  // The gap detector: a 1-ms chain, its own lateness recorded.
  let due = performance.now() + 1;
  const origSetTimeout = setTimeout;
  const beat = () => {
    const now = performance.now();
    const late = now - due;
    if (open && late > 2) gaps.push({ at: performance.timeOrigin + due, ms: late });
    due = now + 1;
    origSetTimeout(beat, 1).unref();
  };
  origSetTimeout(beat, 1).unref();

  process.on('SIGUSR2', () => {
    if (!open) {
      gaps = [];
      gcs = [];
      timers = [];
      hist.reset();
      hist.enable();
      start = epoch();
      open = true;
      return;
    }
    open = false;
    hist.disable();
    const ms = (ns: number) => Math.round(ns / 1e4) / 100;
    writeFileSync(
      file,
      JSON.stringify({
        // The clock a .cpuprofile's timestamps use (monotonic µs), paired with epoch ms, to line the two up.
        clock: { monoUs: Number(process.hrtime.bigint() / 1000n), epochMs: epoch() },
        from: start,
        to: epoch(),
        loop: { p50: ms(hist.percentile(50)), p99: ms(hist.percentile(99)), max: ms(hist.max), mean: ms(hist.mean) },
        gaps,
        gcs,
        timers,
      }),
    );
  });
}
