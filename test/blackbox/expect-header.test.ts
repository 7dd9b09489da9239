import { request } from 'node:http';
import { connect } from 'node:net';
import { AGENT, ORCH, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { httpRequestCount } from '../helpers/http-metric.ts';

// Black-box finding: a request with `Expect: <anything but 100-continue>` never reached Express; Node
// answered it itself, 417 with an empty body: not the problem document the contract promises for every
// error, and 417 is not one of its statuses.
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('bb-expect', { config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080' } } });
});
afterAll(async () => {
  await t.close();
});

interface Answer {
  status: number;
  headers: string;
  body: string;
}

/** Sends `raw` on a fresh connection and reads until `answers` answers arrived (or the broker closes it). */
function send(raw: string, answers = 1): Promise<Answer[]> {
  const u = new URL(t.url);
  return new Promise((resolve, reject) => {
    let text = '';
    const s = connect(Number(u.port), u.hostname, () => s.write(raw));
    s.setTimeout(5000, () => s.destroy(new Error('timeout')));
    const parsed = (): Answer[] => {
      const out: Answer[] = [];
      let rest = text;
      while (rest.includes('\r\n\r\n')) {
        const end = rest.indexOf('\r\n\r\n');
        const head = rest.slice(0, end);
        const length = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
        if (rest.length < end + 4 + length) break;
        out.push({ status: Number(head.split(' ')[1]), headers: head.toLowerCase(), body: rest.slice(end + 4, end + 4 + length) });
        rest = rest.slice(end + 4 + length);
      }
      return out;
    };
    s.on('data', (d) => {
      text += d.toString('utf8');
      const got = parsed();
      if (got.length >= answers) {
        s.destroy();
        resolve(got);
      }
    });
    s.on('error', reject);
    s.on('close', () => resolve(parsed()));
  });
}

const taskBody = (taskId: string) =>
  JSON.stringify({
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 60,
    grants: [{ role: 'demo-api' }],
  });

test('an Expect other than 100-continue answers a 400 expectation_failed problem, not an empty 417 (found by black-box red team)', async () => {
  const auth = `Authorization: ${t.as(ORCH).authorization}\r\n`;
  const body = taskBody('bb-expect-refused');
  for (const [what, raw] of [
    [
      'a POST with a body',
      `POST /v1/tasks HTTP/1.1\r\nHost: x\r\n${auth}Expect: bogus\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    ],
    ['a GET under /v1', `GET /v1/tasks HTTP/1.1\r\nHost: x\r\n${auth}Expect: 200-ok\r\n\r\n`],
    ['a GET outside /v1', 'GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: x\r\n\r\n'],
  ] as const) {
    const [r] = await send(raw);
    // Before: [417, false] and an empty body.
    expect([what, r?.status, r?.headers.includes('content-type: application/problem+json')]).toEqual([what, 400, true]);
    expect(JSON.parse(r!.body)).toMatchObject({
      status: 400,
      code: 'expectation_failed',
      type: 'urn:jit-broker:problem:expectation_failed',
      title: 'Bad Request',
    });
  }
  // Nothing was done: the refused task was never opened.
  const read = await fetch(`${t.url}/v1/tasks/bb-expect-refused`, { headers: t.as(ORCH) });
  expect(read.status).toBe(404);
  // The OAuth endpoints answer their own RFC 6749 error instead.
  const form = 'token=x';
  const [oauth] = await send(
    `POST /v1/introspect HTTP/1.1\r\nHost: x\r\n${auth}Expect: bogus\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: ${form.length}\r\n\r\n${form}`,
  );
  expect([oauth?.status, oauth?.headers.includes('content-type: application/json')]).toEqual([400, true]);
  expect(JSON.parse(oauth!.body)).toEqual({ error: 'invalid_request', error_description: expect.any(String) });
  // The connection stays usable: the next request on it is answered as usual.
  const both = await send(
    `GET /v1/tasks?limit=1 HTTP/1.1\r\nHost: x\r\n${auth}Expect: bogus\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n`,
    2,
  );
  expect(both.map((a) => a.status)).toEqual([400, 200]);
});

test('Expect: 100-continue still works: the broker says 100 Continue, then reads the body (curl sends it for large bodies)', async () => {
  const body = taskBody('bb-expect-continue');
  const u = new URL(t.url);
  const answer = await new Promise<{ continued: boolean; status: number; body: string }>((resolve, reject) => {
    let continued = false;
    const req = request({
      host: u.hostname,
      port: u.port,
      method: 'POST',
      path: '/v1/tasks',
      headers: {
        ...t.as(ORCH),
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
        expect: '100-continue',
      },
    });
    // The body goes only once the broker asked for it.
    req.on('continue', () => {
      continued = true;
      req.end(body);
    });
    req.on('response', (res) => {
      let text = '';
      res.on('data', (d) => {
        text += d;
      });
      res.on('end', () => resolve({ continued, status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.flushHeaders();
  });
  expect([answer.continued, answer.status]).toEqual([true, 201]);
  expect(JSON.parse(answer.body)).toMatchObject({ taskId: 'bb-expect-continue', status: 'open' });
});

test('a request refused for its Expect header is counted in the HTTP metric, route "unmatched" (it never reaches Express)', async () => {
  const before = await httpRequestCount(t.url, 'unmatched', 400);
  const [r] = await send('GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: foo\r\n\r\n');
  expect(r?.status).toBe(400);
  // Before: unchanged (the histogram is observed by Express's middleware only).
  expect(await httpRequestCount(t.url, 'unmatched', 400)).toBe(before + 1);
});
