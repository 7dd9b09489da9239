import { connect, type Socket } from 'node:net';
import { call, startTestBroker, testConfig, type TestBroker } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';

/**
 * Red team: connections held by slow clients. The broker took Node's HTTP defaults: a request's headers could take
 * 60 s and its whole receipt 300 s, checked every 30 s. Measured: 300 connections of one agent, each a POST
 * /v1/credentials whose headers (and identity) arrived at once and whose body trickled in one byte every 5 s, were
 * all still open after 120 s, having cost one rate-limit point each. At the default rate limit (50/s, burst 100)
 * one identity holds ~15,000 sockets that way, enough with a second one to use up a 20,000-descriptor limit, after
 * which the broker accepts no client and opens no Redis or upstream connection. Slow headers need no identity at
 * all. `server.headersTimeoutSeconds` (default 10) and `server.requestTimeoutSeconds` (default 30) now bound the
 * receipt of a request; what the broker does once it has the request (an upstream call) is not bounded by them.
 */
let t: TestBroker;

beforeAll(async () => {
  t = await startTestBroker('rt-slow', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', headersTimeoutSeconds: 1, requestTimeoutSeconds: 2 } },
  });
});
afterAll(async () => {
  await t.close();
});

test('the defaults: headers within 10 s, the whole request within 30 s', () => {
  const c = testConfig(new TestIssuer(), 'x');
  expect({ headers: c.server.headersTimeoutSeconds, request: c.server.requestTimeoutSeconds }).toEqual({ headers: 10, request: 30 });
});

test('headers longer than the request timeout are a config error naming the key', () => {
  expect(() =>
    testConfig(new TestIssuer(), 'x', { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', headersTimeoutSeconds: 40 } }),
  ).toThrow(/server\.headersTimeoutSeconds/);
});

/** Opens a connection, writes `first`, then `drip` every 250 ms; resolves with ms until the broker closed it, and what it answered. */
function held(first: string, drip: string, capMs: number): Promise<{ ms: number; answer: string }> {
  const u = new URL(t.url);
  const start = Date.now();
  return new Promise((resolve) => {
    const s: Socket = connect(Number(u.port), u.hostname);
    let answer = '';
    const timer = setInterval(() => {
      if (!s.destroyed) s.write(drip);
    }, 250);
    const cap = setTimeout(() => s.destroy(), capMs);
    s.on('data', (d) => {
      answer += d.toString('latin1');
    });
    s.on('error', () => {});
    s.on('close', () => {
      clearInterval(timer);
      clearTimeout(cap);
      resolve({ ms: Date.now() - start, answer });
    });
    s.write(first);
  });
}

/** The broker's answer to a request that did not arrive in time: 408, a problem document (not a bare close). */
function expectTimedOut(answer: string): void {
  expect(answer).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
  expect(JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4))).toMatchObject({ status: 408, code: 'request_timeout' });
}

test('an authenticated request whose body trickles in is cut off at the request timeout', async () => {
  const auth = t.as('/agent/slow').authorization;
  const head = `POST /v1/credentials HTTP/1.1\r\nHost: x\r\nAuthorization: ${auth}\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{`;
  const all = await Promise.all(Array.from({ length: 5 }, () => held(head, ' ', 15_000)));
  // 2 s, checked every second; the client is told why (before: the connection was closed without a word).
  for (const { ms, answer } of all) {
    expect(ms).toBeLessThan(5000);
    expectTimedOut(answer);
  }
  // The broker still answers.
  expect((await call(t.url, 'GET', '/healthz', {})).status).toBe(200);
});

test('headers that trickle in are cut off at the headers timeout, without any identity', async () => {
  const { ms, answer } = await held('GET /v1/tasks HTTP/1.1\r\nHost: x\r\n', 'X-A: b\r\n', 15_000);
  expect(ms).toBeLessThan(4000);
  expectTimedOut(answer);
});
