import { ADMIN, AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

// Contract section 3: "404 unknown task or lease". A lease id (and an approval id) is opaque to clients: the
// contract never says what one looks like, so an id the broker never issued, whatever its form, is an unknown
// lease. Before: any id that was not 32 lowercase hex characters answered 400 invalid_id, so a client asking
// for `/v1/leases/does-not-exist` (or a UUID) was told its request was malformed instead of "no such lease".
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('conf-ids');
});
afterAll(async () => {
  await t.close();
});

const UNKNOWN = ['does-not-exist', '00000000-0000-0000-0000-000000000000', 'NOT-HEX', 'A'.repeat(32), 'x', 'a'.repeat(300), '%F0%9F%99%82'];

test('an unknown lease id of any form: 404 lease_not_found on GET and DELETE', async () => {
  for (const id of UNKNOWN) {
    for (const [method, who] of [
      ['GET', AGENT],
      ['DELETE', AGENT],
      ['GET', ADMIN],
      ['DELETE', ORCH],
    ] as const) {
      const r = await call(t.url, method, `/v1/leases/${id}`, t.as(who));
      expect([method, id, r.status, r.body.code, r.headers.get('content-type')]).toEqual([
        method,
        id,
        404,
        'lease_not_found',
        'application/problem+json; charset=utf-8',
      ]);
      expect(r.body.detail).not.toContain(id.length > 20 ? id : '\u0000');
    }
  }
});

test('an unknown approval id of any form: 404 approval_not_found on GET and POST', async () => {
  for (const id of UNKNOWN) {
    const get = await call(t.url, 'GET', `/v1/approvals/${id}`, t.as(ADMIN));
    expect([id, get.status, get.body.code]).toEqual([id, 404, 'approval_not_found']);
    const post = await call(t.url, 'POST', `/v1/approvals/${id}`, t.as(ADMIN), { decision: 'approve' });
    expect([id, post.status, post.body.code]).toEqual([id, 404, 'approval_not_found']);
  }
});

test('a caller outside approvers is refused (403 not_approver) before any id is looked at, whatever its form', async () => {
  for (const id of ['does-not-exist', '0'.repeat(32)]) {
    const r = await call(t.url, 'POST', `/v1/approvals/${id}`, t.as(AGENT), { decision: 'approve' });
    expect([id, r.status, r.body.code]).toEqual([id, 403, 'not_approver']);
  }
});

test('the identity is still checked first: no token is 401, whatever the id', async () => {
  for (const path of ['/v1/leases/does-not-exist', '/v1/approvals/does-not-exist']) {
    const r = await call(t.url, 'GET', path, {});
    expect([path, r.status]).toEqual([path, 401]);
  }
});
