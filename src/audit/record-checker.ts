import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import type { Logger } from '../logger.ts';
import { type CheckedRecord, checkRecords } from './record-check.ts';

type Checked = (CheckedRecord | undefined)[];

/** Longest wait before trying a new thread after failures. */
const MAX_RETRY_MS = 3_600_000;

/**
 * Runs `checkRecords` in one worker thread, started on first use; it keeps
 * the process alive only while a page is in it. Why a thread: re-hashing every record
 * on its way to the export file took the event loop for ~6 µs per record,
 * in bursts every seal interval, and showed in issuance's p99. If the
 * thread cannot run (it failed to start or died), pages are checked on the
 * event loop instead, as before: the export never stops for it. A new thread
 * is tried after `retryMs` (default 1 min), doubling up to an hour while it
 * keeps failing, so one crash (say, out of memory) does not put the checks on
 * the loop for the rest of the process's life.
 */
export class RecordChecker {
  private worker: Worker | undefined;
  /**
   * While the thread is unavailable: when to try a new one (performance.now()), and the wait after the next
   * failure. Monotonic: with Date.now(), a wall clock stepped back an hour kept the checks on the event loop
   * (in issuance's p99) for that hour more (test/audit/record-checker.test.ts).
   */
  private retryAt = Number.NEGATIVE_INFINITY;
  private backoffMs: number;
  private readonly retryMs: number;
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve: (c: Checked) => void; raws: readonly string[] }>();
  private readonly logger: Logger;
  private readonly entry: URL;
  /** Records checked in the thread and on the event loop (the fallback), for tests and diagnosis. */
  readonly checked = { thread: 0, loop: 0 };

  /** `entry`: the thread's module (tests give one that cannot start). */
  constructor(logger: Logger, entry = new URL('./record-check-worker.ts', import.meta.url), opts: { retryMs?: number } = {}) {
    this.logger = logger;
    this.entry = entry;
    this.retryMs = opts.retryMs ?? 60_000;
    this.backoffMs = this.retryMs;
  }

  check(raws: readonly string[]): Promise<Checked> {
    const worker = performance.now() < this.retryAt ? undefined : this.start();
    if (!worker) return Promise.resolve(this.onLoop(raws));
    const id = this.nextId++;
    return new Promise<Checked>((resolve) => {
      this.waiting.set(id, { resolve, raws });
      // Held while a page is in it (the process waits for the answer), let go when idle.
      worker.ref();
      worker.postMessage({ id, raws });
    });
  }

  /** Ends the thread; a later check starts a new one. */
  async close(): Promise<void> {
    const w = this.worker;
    this.worker = undefined;
    this.failWaiting();
    if (w) await w.terminate();
  }

  private start(): Worker | undefined {
    if (this.worker) return this.worker;
    try {
      const w = new Worker(this.entry);
      w.on('message', (m: { id: number; checked: Checked }) => {
        const p = this.waiting.get(m.id);
        this.waiting.delete(m.id);
        if (this.waiting.size === 0) w.unref();
        this.backoffMs = this.retryMs; // it works: a later failure waits the shortest time again
        this.checked.thread += m.checked.length;
        p?.resolve(m.checked);
      });
      const fail = (err: Error | number) => {
        if (this.worker !== w) return;
        this.unavailable(typeof err === 'number' ? `exit ${err}` : err.message);
        this.worker = undefined;
        this.failWaiting();
      };
      w.on('error', fail);
      w.on('exit', fail);
      // After the listeners: adding a 'message' listener refs the worker again.
      w.unref();
      this.worker = w;
      return w;
    } catch (err) {
      this.unavailable((err as Error).message);
      return undefined;
    }
  }

  private unavailable(err: string): void {
    this.retryAt = performance.now() + this.backoffMs;
    this.logger.warn(
      { err, retryInMs: this.backoffMs },
      'audit export: record-check thread unavailable; checking on the event loop until a new one is tried',
    );
    this.backoffMs = Math.min(this.backoffMs * 2, MAX_RETRY_MS);
  }

  /** Pages sent to a thread that is gone are checked here instead. */
  private failWaiting(): void {
    for (const [id, p] of this.waiting) {
      this.waiting.delete(id);
      p.resolve(this.onLoop(p.raws));
    }
  }

  private onLoop(raws: readonly string[]): Checked {
    this.checked.loop += raws.length;
    return checkRecords(raws);
  }
}
