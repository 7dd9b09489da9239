import { Worker } from 'node:worker_threads';
import type { Logger } from '../logger.ts';
import { type CheckedRecord, checkRecords } from './record-check.ts';

type Checked = (CheckedRecord | undefined)[];

/**
 * Runs `checkRecords` in one worker thread, started on first use; it keeps
 * the process alive only while a page is in it. Why a thread: re-hashing every record
 * on its way to the export file took the event loop for ~6 µs per record,
 * in bursts every seal interval, and showed in issuance's p99. If the
 * thread cannot run (it failed to start or died), pages are checked on the
 * event loop instead, as before: the export never stops for it.
 */
export class RecordChecker {
  private worker: Worker | undefined;
  private broken = false;
  private nextId = 0;
  private readonly waiting = new Map<number, { resolve: (c: Checked) => void; raws: readonly string[] }>();
  private readonly logger: Logger;
  private readonly entry: URL;
  /** Records checked in the thread and on the event loop (the fallback), for tests and diagnosis. */
  readonly checked = { thread: 0, loop: 0 };

  /** `entry`: the thread's module (tests give one that cannot start). */
  constructor(logger: Logger, entry = new URL('./record-check-worker.ts', import.meta.url)) {
    this.logger = logger;
    this.entry = entry;
  }

  check(raws: readonly string[]): Promise<Checked> {
    const worker = this.broken ? undefined : this.start();
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
        this.checked.thread += m.checked.length;
        p?.resolve(m.checked);
      });
      const fail = (err: Error | number) => {
        if (this.worker !== w) return;
        this.logger.warn(
          { err: typeof err === 'number' ? `exit ${err}` : err.message },
          'audit export: record-check thread unavailable; checking on the event loop',
        );
        this.broken = true;
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
      this.logger.warn({ err: (err as Error).message }, 'audit export: record-check thread unavailable; checking on the event loop');
      this.broken = true;
      return undefined;
    }
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
