import { gzipSync } from 'node:zlib';
import { ADMIN, ORCH, startTestBroker, type TestBroker } from '../helpers/broker.ts';

// Black-box findings on request bodies: what the broker does with bytes that
// are not the JSON they claim to be.
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('bb-body', { config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', bodyLimitBytes: 65_536 } } });
});
afterAll(async () => {
  await t.close();
});

async function post(path: string, who: string, body: Buffer | string, headers: Record<string, string> = {}) {
  const res = await fetch(`${t.url}${path}`, {
    method: 'POST',
    headers: { ...t.as(who), 'content-type': 'application/json', ...headers },
    body,
  });
  return { status: res.status, body: (await res.json().catch(() => undefined)) as any };
}

const task = (id: string, tenant: Buffer) =>
  Buffer.concat([
    Buffer.from(`{"taskId":"${id}","agent":"spiffe://dev.local/agent/x","tenant":"`),
    tenant,
    Buffer.from('","purpose":"p","ttlSeconds":60,"grants":[{"role":"demo-api"}]}'),
  ]);

test('a JSON body that does not inflate is 400 malformed_body, not a complaint about the URL (found by black-box red team)', async () => {
  // Before: 400 invalid_request "The request URL could not be read." (a zlib error carries no body-parser type).
  for (const encoding of ['gzip', 'deflate', 'br']) {
    const r = await post('/v1/tasks', ORCH, '{"agent":"x"}', { 'content-encoding': encoding });
    expect([encoding, r.status, r.body.code, r.body.detail]).toEqual([
      encoding,
      400,
      'malformed_body',
      'The request body could not be read.',
    ]);
  }
  // A body that does inflate is still read.
  const ok = await post('/v1/tasks', ORCH, gzipSync(task('bb-gzip-ok', Buffer.from('acme'))), { 'content-encoding': 'gzip' });
  expect(ok.status).toBe(201);
});

test('a JSON body that is not UTF-8 is refused, not stored with U+FFFD in place of its bytes (found by black-box red team)', async () => {
  // Before: 201, tenant "acme\uFFFD": the bytes 0xFF and 0xFE both became the same tenant, one the caller never sent.
  for (const [id, bytes] of [
    ['bb-u8-ff', [0xff]],
    ['bb-u8-trunc', [0xc3]],
    ['bb-u8-overlong', [0xc0, 0xaf]],
  ] as const) {
    const r = await post('/v1/tasks', ORCH, task(id, Buffer.concat([Buffer.from('acme'), Buffer.from(bytes)])));
    expect([id, r.status, r.body.code]).toEqual([id, 400, 'malformed_body']);
  }
  expect((await post('/v1/admin/revoke', ADMIN, '{"tenant":"acme\uFFFD"}')).body).toEqual({ tasks: 0, leases: 0 });
  // Real UTF-8 is fine, also in a compressed body.
  expect((await post('/v1/tasks', ORCH, task('bb-u8-ok', Buffer.from('acmé 🚀')))).status).toBe(201);
  const gz = await post('/v1/tasks', ORCH, gzipSync(task('bb-u8-gz', Buffer.from([0x61, 0xff]))), { 'content-encoding': 'gzip' });
  expect([gz.status, gz.body.code]).toEqual([400, 'malformed_body']);
});
