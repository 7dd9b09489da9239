import { AGENT, ORCH, REDIS_URL, call, startSibling, startTestBroker, uniquePrefix, type TestBroker } from '../helpers/broker.ts';

/**
 * Red team: one identity's budget (server.rateLimit) spent by many concurrent requests on two instances at
 * once. The budget is counted across all instances: at most `burst` requests pass in a burst, not one burst
 * per instance or per batch.
 */
let a: TestBroker;
let b: TestBroker;

beforeAll(async () => {
  const prefix = uniquePrefix('rt-races-rate');
  a = await startTestBroker('rt-races-rate', {
    prefix,
    config: {
      redis: { url: REDIS_URL, prefix },
      server: {
        port: 0,
        publicUrl: 'http://127.0.0.1:8080',
        rateLimit: { perSecond: 10, burst: 20, introspect: { perSecond: 10, burst: 20 } },
      },
    },
  });
  b = await startSibling(a);
});
afterAll(async () => {
  await b?.close();
  await a?.close();
});

const either = (i: number) => (i % 2 === 0 ? a : b);

test('200 concurrent requests of one identity on two instances: no more than the burst passes', async () => {
  const started = Date.now();
  const got = await Promise.all(Array.from({ length: 200 }, (_, i) => call(either(i).url, 'GET', '/v1/leases/l-none', either(i).as(ORCH))));
  const seconds = Math.ceil((Date.now() - started) / 1000);
  const passed = got.filter((r) => r.status !== 429).length;
  expect(got.filter((r) => r.status !== 429 && r.status !== 404)).toEqual([]);
  // The burst, plus perSecond for each further one-second window the storm reached (a loaded machine spreads it).
  expect(passed).toBeGreaterThanOrEqual(10);
  expect(passed).toBeLessThanOrEqual(20 + 10 * seconds);
});

test('waves of concurrent requests on two instances for 3 s: about perSecond a second after the burst', async () => {
  const started = Date.now();
  let passed = 0;
  let i = 0;
  while (Date.now() - started < 3000) {
    const got = await Promise.all(
      Array.from({ length: 40 }, () => {
        const t = either(i++);
        return call(t.url, 'GET', '/v1/leases/l-none', t.as(AGENT));
      }),
    );
    passed += got.filter((r) => r.status !== 429).length;
  }
  const seconds = (Date.now() - started) / 1000;
  // burst (20) + perSecond (10) a second, with a margin of one window for the run's edges.
  expect(passed).toBeLessThanOrEqual(20 + 10 * Math.ceil(seconds) + 10);
});

test('introspection: 200 concurrent calls on two instances spend one shared budget', async () => {
  const intro = (t: TestBroker) =>
    fetch(`${t.url}/v1/introspect`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...t.as('/agent/rt-rate-intro') },
      body: new URLSearchParams({ token: 'x.y.z' }),
    }).then((r) => r.status);
  const started = Date.now();
  const got = await Promise.all(Array.from({ length: 200 }, (_, i) => intro(either(i))));
  const seconds = Math.ceil((Date.now() - started) / 1000);
  const passed = got.filter((s) => s !== 429 && s !== 400).length;
  expect(got.filter((s) => s !== 200 && s !== 429 && s !== 400)).toEqual([]);
  expect(passed).toBeLessThanOrEqual(20 + 10 * seconds);
});
