import { resolve } from 'node:path';
import { AGENT, ORCH, call, dropPrefix, testConfigFile, uniquePrefix } from '../helpers/broker.ts';
import { TestIssuer } from '../helpers/identity.ts';
import { type BrokerProcess, START_TIMEOUT_MS, startBrokerProcess } from '../helpers/process.ts';

/**
 * Red team, a bad day: an API process whose clock is a minute slow (a VM
 * whose NTP broke). docs/security.md: "a process clock a minute off:
 * deadlines, expiries and key activation are decided on Redis's clock". The
 * identity check compared a token's `iat` with the process clock (30 s
 * leeway), so a freshly minted SVID (SPIRE mints them with iat = now) was
 * "not yet valid" there and every caller of that instance got 401; token
 * times are now judged on Redis's clock too.
 */
const SHIM = resolve('test/faults/skew-clock.mjs');
const issuer = new TestIssuer();
const prefix = uniquePrefix('rt-skew');
let api: BrokerProcess;

beforeAll(async () => {
  api = await startBrokerProcess(testConfigFile(issuer, prefix), {
    env: { NODE_OPTIONS: `--import=${SHIM}`, JIT_TEST_CLOCK_SKEW_MS: String(-60_000) },
  });
}, START_TIMEOUT_MS + 10_000);
afterAll(async () => {
  await api?.kill();
  await dropPrefix(prefix);
});

test('an instance 60 s slow accepts an identity token minted just now', async () => {
  const r = await call(
    api.url,
    'POST',
    '/v1/tasks',
    { authorization: `Bearer ${issuer.svid(ORCH)}` },
    {
      taskId: 'rt-skew-1',
      agent: `spiffe://dev.local${AGENT}`,
      tenant: 'acme',
      purpose: 'p',
      ttlSeconds: 600,
      grants: [{ role: 'demo-api' }],
    },
  );
  expect({ status: r.status, code: r.body.code, reason: r.body.reason }).toEqual({ status: 201, code: undefined, reason: undefined });
}, 30_000);
