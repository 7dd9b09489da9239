import { connect } from 'node:net';
import { AGENT, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { httpRequestCount } from '../helpers/http-metric.ts';

// Black-box finding: a request Node's HTTP parser cannot read never reaches
// Express, and Node answered it itself with an empty body (400, or 431 for
// oversized headers): not the problem document the contract promises for
// every error, and 431 is not one of its statuses.
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('bb-unparsable', { config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080' } } });
});
afterAll(async () => {
  await t.close();
});

/** Sends `raw` on a fresh connection and reads until the broker closes it. */
function send(raw: Buffer | string): Promise<{ status: number; headers: string; body: string }> {
  const u = new URL(t.url);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const s = connect(Number(u.port), u.hostname, () => s.write(raw));
    s.setTimeout(5000, () => s.destroy(new Error('timeout')));
    s.on('data', (d) => chunks.push(d));
    s.on('error', reject);
    s.on('close', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const [head = '', body = ''] = text.split('\r\n\r\n', 2);
      resolve({ status: Number(head.split(' ')[1]), headers: head.toLowerCase(), body });
    });
  });
}

test('a request that is not well-formed HTTP gets a 400 problem document (found by black-box red team)', async () => {
  const auth = `Authorization: ${t.as(AGENT).authorization}\r\n`;
  for (const [what, raw] of [
    ['a lower-case method', `get /v1/tasks HTTP/1.1\r\nHost: x\r\n${auth}\r\n`],
    ['a path without a slash', `GET v1/tasks HTTP/1.1\r\nHost: x\r\n${auth}\r\n`],
    ['headers over 16 KiB', `GET /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${'a'.repeat(20_000)}\r\n\r\n`],
    ['a query over 16 KiB', `GET /v1/tasks?${'a=1&'.repeat(5000)} HTTP/1.1\r\nHost: x\r\n${auth}\r\n`],
  ] as const) {
    const r = await send(raw);
    // Before: [400, '', ...] for the parse errors and [431, ''] for the oversized ones.
    expect([what, r.status, r.headers.includes('content-type: application/problem+json')]).toEqual([what, 400, true]);
    expect(JSON.parse(r.body)).toMatchObject({ status: 400, code: 'invalid_request', type: 'urn:jit-broker:problem:invalid_request' });
  }
  // A body that breaks off mid-request: that request is already being answered, so (as Node did) a bare
  // 400 head goes out and the connection closes; nothing is written after an answer has started.
  const chunked = await send(
    `POST /v1/tasks HTTP/1.1\r\nHost: x\r\n${auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n`,
  );
  expect(chunked.status).toBe(400);
  // A well-formed request on the same server is unaffected.
  const ok = await fetch(`${t.url}/v1/tasks?limit=1`, { headers: t.as(AGENT) });
  expect(ok.status).toBe(200);
});

test('an unparsable request is counted in the HTTP metric, route "unmatched" (it never reaches Express)', async () => {
  const before = await httpRequestCount(t.url, 'unmatched', 400);
  expect((await send('get /healthz HTTP/1.1\r\nHost: x\r\n\r\n')).status).toBe(400);
  // Before: unchanged (the histogram is observed by Express's middleware only).
  expect(await httpRequestCount(t.url, 'unmatched', 400)).toBe(before + 1);
  // A body that breaks off mid-request: the bare 400 that goes out is counted once too.
  const auth = `Authorization: ${t.as(AGENT).authorization}\r\n`;
  const chunked = await send(
    `POST /v1/tasks HTTP/1.1\r\nHost: x\r\n${auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n`,
  );
  expect(chunked.status).toBe(400);
  const all = async () => (await httpRequestCount(t.url, 'unmatched', 400)) + (await httpRequestCount(t.url, '/v1/tasks', 400));
  expect(await all()).toBe(before + 2);
});
