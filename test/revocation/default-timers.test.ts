import { silentLogger } from '../../src/logger.ts';
import type { LeaseRecord } from '../../src/leases/types.ts';
import type { JwtProvider } from '../../src/providers/jwt/provider.ts';
import { AGENT, ORCH, call, startSibling, startTestBroker, waitFor, type TestBroker } from '../helpers/broker.ts';

/**
 * The other tests shorten the revocation timers so they do not wait; this one
 * keeps the defaults (sweep every 100 ms; a dead worker's job taken over
 * within lockMs 10 s + stalledCheckMs 5 s) and checks them in real time.
 */
const DEFAULTS = { revocation: {} };

/**
 * How late this process's timers fire while a wait runs: the delays of a 50-ms reference timer past its due
 * times. The sweeper's and BullMQ's timers run on the same event loop and are as late: a loaded machine adds
 * this to a promised deadline, a slow timer setting does not. `worst(from, to)`: the worst delay of the ticks
 * that fired from `from` to just after `to` (a stall in between delays the first tick after it too).
 */
function timerLateness(): { stop(): void; worst(from?: number, to?: number): number } {
  const ticks: { at: number; late: number }[] = [];
  let due = Date.now() + 50;
  const t = setInterval(() => {
    const now = Date.now();
    ticks.push({ at: now, late: Math.max(0, now - due) });
    due = now + 50;
  }, 50);
  return {
    stop: () => clearInterval(t),
    worst: (from = Number.NEGATIVE_INFINITY, to = Number.POSITIVE_INFINITY) =>
      Math.max(0, ...ticks.filter((k) => k.at >= from && k.at <= to + 60).map((k) => k.late)),
  };
}

/** A setup call the test is not about: a loaded machine's shared Redis may make the broker answer 503 (its stall guard). */
async function settled(send: () => ReturnType<typeof call>): ReturnType<typeof call> {
  for (let i = 0; ; i++) {
    const r = await send();
    if (r.status !== 503 || i === 5) return r;
    await new Promise((res) => setTimeout(res, 500));
  }
}

let first: TestBroker;
let second: TestBroker | undefined;
afterAll(async () => {
  await second?.close();
  await first.close();
});

test("with the default timers: a TTL ends within a sweep, and a dead worker's revocation is taken over within 15 s", async () => {
  first = await startTestBroker('default-timers', { config: DEFAULTS });
  expect(first.config.revocation).toMatchObject({ sweepMs: 100, lockMs: 10_000, stalledCheckMs: 5_000 });
  const agent = `spiffe://dev.local${AGENT}`;
  const opened = await settled(() =>
    call(first.url, 'POST', '/v1/tasks', first.as(ORCH), {
      taskId: 't-def',
      agent,
      tenant: 'acme',
      purpose: 'p',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }],
    }),
  );
  expect(opened.status).toBe(201);
  // Every sweep of a bucket, as the sweeper runs it: when it began and ended (this process's clock, Redis's
  // host's too). The sweep is judged in sweeps, not in wall-clock time: on a loaded machine a sweep's Redis
  // round trip alone took over a second (the shared Redis busy with other suites).
  const sweeper = first.broker.sweeper as unknown as { sweepBucket(b: number): Promise<void> };
  const sweepBucket = sweeper.sweepBucket.bind(sweeper);
  const sweeps: { bucket: number; start: number; end: number }[] = [];
  sweeper.sweepBucket = async (bucket: number) => {
    const sweep = { bucket, start: Date.now(), end: Number.POSITIVE_INFINITY };
    sweeps.push(sweep);
    try {
      await sweepBucket(bucket);
    } finally {
      sweep.end = Date.now();
    }
  };
  const late = timerLateness();
  const short = await settled(() =>
    call(first.url, 'POST', '/v1/credentials', first.as(AGENT), { taskId: 't-def', role: 'demo-api', ttlSeconds: 1 }),
  );
  expect(short.status).toBe(201);
  const expired = await waitFor(
    async () => {
      const l = await first.broker.deps.leases.get(short.body.leaseId);
      return l?.status === 'expired' && l;
    },
    15_000,
    20,
  );
  const bucket = first.broker.deps.keys.bucketOfId(short.body.leaseId)!;
  const ofBucket = () => sweeps.filter((w) => w.bucket === bucket && Number.isFinite(w.end));
  // Within a sweep: the first sweep of its bucket that began after it expired ended it (revokedAt: the time the
  // sweep's script ran, on Redis's clock). None may have begun after it: a sweep that began just before its
  // deadline, whose script ran after it (a loaded Redis took that long), ended it first.
  const firstAfter = ofBucket().find((w) => w.start > expired.expiresAt);
  if (firstAfter) expect(expired.revokedAt).toBeLessThanOrEqual(firstAfter.end);
  expect(expired.revokedAt).toBeGreaterThanOrEqual(expired.expiresAt);
  // And sweeps come every sweepMs: each begins 100 ms after the one before it ended (a bucket still busy is
  // skipped, not queued), plus however late this process's timers ran in between. Judged over the next several
  // sweeps, on the median gap less that lateness: one gap can outrun the reference timer's ticks on a loaded host
  // (166 ms against a bound of 151 in CI), while a sweep every 300 ms puts every gap, and the median, near 300.
  await waitFor(async () => ofBucket().length >= 8, 30_000, 50);
  late.stop();
  const done = ofBucket();
  const beyondLateness = done
    .slice(1)
    .map((next, i) => next.start - done[i]!.end - late.worst(done[i]!.end, next.start))
    .sort((a, b) => a - b);
  expect(beyondLateness[Math.floor(beyondLateness.length / 2)]).toBeLessThanOrEqual(130);
  sweeper.sweepBucket = sweepBucket;

  // A worker whose upstream call never returns, then dies.
  let hung = 0;
  const real = first.broker.deps.providers.get('jwt') as JwtProvider;
  first.broker.deps.providers.set(
    'jwt',
    Object.assign(Object.create(Object.getPrototypeOf(real)), real, {
      upstream: true,
      revoke: (_l: LeaseRecord) => {
        hung += 1;
        return new Promise<void>(() => {});
      },
    }),
  );
  const cred = await settled(() => call(first.url, 'POST', '/v1/credentials', first.as(AGENT), { taskId: 't-def', role: 'demo-api' }));
  expect(cred.status).toBe(201);
  await call(first.url, 'DELETE', `/v1/leases/${cred.body.leaseId}`, first.as(AGENT));
  await waitFor(async () => hung > 0, 20_000); // a precondition, not a deadline: a loaded machine took over 5 s
  await Promise.all(first.broker.worker!.workers.map((w) => w.close(true)));
  await first.broker.sweeper!.stop();
  const died = Date.now();
  const takeoverLate = timerLateness();
  second = await startSibling(first, { api: false, logger: silentLogger });
  // A sibling slower to start than the dead worker's lock takes to lapse starts the clock later.
  const startedIn = Date.now() - died;
  const revoked = await waitFor(
    async () => {
      const l = await second!.broker.deps.leases.get(cred.body.leaseId);
      return l?.status === 'revoked' && l;
    },
    40_000,
    100,
  ); // long enough for the check below to be the judge
  // revokedAt is when the sibling's revocation ended it (Redis's clock), not when this poll saw it: the lock
  // lapses within lockMs, the next stalled check within stalledCheckMs hands the job over; 1.5 s for the
  // revocation itself, plus however late this process's timers ran (a stalled check that late is the machine's).
  takeoverLate.stop();
  expect(revoked.revokedAt! - died).toBeLessThan(Math.max(10_000, startedIn) + 5_000 + 1500 + takeoverLate.worst());
}, 120_000);
