import { setTimeout as sleep } from 'node:timers/promises';
import { Worker as BullWorker } from 'bullmq';

/** BullMQ's wait before trying a failed Redis call again (its checkConnectionError default, DELAY_TIME_5). */
const RETRY_WAIT_MS = 5000;

/**
 * BullMQ's Worker, with one change: the wait after a failed Redis call of its stalled-job check (5 s, on an
 * error such as OOM or MISCONF from a Redis refusing writes) ends when the worker closes. BullMQ's own wait is
 * a plain timer that close() neither cancels nor awaits: it kept a process whose broker had closed alive for up
 * to 5 s (jest: "did not exit one second after the test run", or a worker "failed to exit gracefully"; a
 * container: a late exit after SIGTERM). The wait itself, and which errors are reported, are BullMQ's.
 */
export class Worker<DataType = unknown, ResultType = unknown, NameType extends string = string> extends BullWorker<
  DataType,
  ResultType,
  NameType
> {
  private readonly closingSignal = new AbortController();

  protected override async checkConnectionError<T>(fn: () => Promise<T>, delayInMs = RETRY_WAIT_MS): Promise<T | undefined> {
    let failed = false;
    // BullMQ's handling (the error reported unless it is a connection error), without its wait (0).
    const value = await super.checkConnectionError(async () => {
      try {
        return await fn();
      } catch (err) {
        failed = true;
        throw err;
      }
    }, 0);
    if (failed && delayInMs > 0) await sleep(delayInMs, undefined, { signal: this.closingSignal.signal }).catch(() => {});
    return value;
  }

  override async close(force = false): Promise<void> {
    this.closingSignal.abort();
    await super.close(force);
  }
}
