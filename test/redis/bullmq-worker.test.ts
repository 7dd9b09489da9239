import type { Redis } from 'ioredis';
import { Worker } from '../../src/redis/bullmq-worker.ts';
import { type RedisStandalone, startStandalone } from '../helpers/redis-topology.ts';

/**
 * src/redis/bullmq-worker.ts: a worker closed while its stalled-job check waits out BullMQ's 5-s retry delay
 * (the check failed: here a Redis refusing writes, OOM) ends that wait with the close. Before, the delay was a
 * plain timer close() did not cancel: the closed broker kept its process alive for up to 5 s more (full-redis
 * run in band: "Jest did not exit one second after the test run has completed", every run). Judged on state: the
 * check's loop has ended once close() has, not on how long anything took.
 */
let redis: RedisStandalone;
let admin: Redis;

beforeAll(async () => {
  redis = await startStandalone();
  admin = redis.client();
}, 60_000);
afterAll(async () => {
  admin?.disconnect();
  await redis?.stop();
});

test('close() ends the wait after a failed stalled-job check: the check loop is over when close() returns', async () => {
  const worker = new Worker('bullmq-close', async () => undefined, {
    connection: { host: '127.0.0.1', port: redis.port, maxRetriesPerRequest: null },
    prefix: 'bullmq-close',
    // Only the stalled-job check runs (no job loop), so it is the one that fails.
    autorun: false,
  });
  const errors: string[] = [];
  const failed = new Promise<void>((resolve) =>
    worker.on('error', (err) => {
      errors.push(err.message);
      resolve();
    }),
  );
  await worker.waitUntilReady();
  await admin.config('SET', 'maxmemory', '1'); // every script is refused now (OOM): the check fails
  try {
    await worker.startStalledCheckTimer();
    await failed; // reported; BullMQ's wait before the next try starts right after
    expect(errors[0]).toMatch(/OOM/);
    const checker = (worker as unknown as { stalledCheckerPromise: Promise<void> }).stalledCheckerPromise;
    let ended = false;
    void checker.then(() => {
      ended = true;
    });
    await worker.close();
    // A turn of the event loop for the promise chain; a wait still running would keep it pending for seconds.
    await new Promise((r) => setImmediate(r));
    expect(ended).toBe(true);
  } finally {
    await admin.config('SET', 'maxmemory', '0');
    await worker.close();
  }
});
