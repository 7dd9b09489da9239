import { afterAll, beforeAll, expect, jest, test } from '@jest/globals';
import { ADMIN, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { runCollect } from '../helpers/cli.ts';
import { send, startFakeBroker } from '../helpers/fake-broker.ts';

// Each run starts node on the TypeScript script: seconds on a loaded machine.
jest.setTimeout(60_000);

/**
 * `npm run rotate -- <target>` (scripts/rotate.ts) finds the broker where everything else does, in JIT_BROKER_URL,
 * and a broker it cannot reach is one line naming the error code and a non-zero exit, not a stack trace. Found in
 * review: it read BROKER_URL (documented nowhere), so with JIT_BROKER_URL set it went to 127.0.0.1:8080, and a
 * refused connection printed Node's "TypeError: fetch failed" with its stack and cause.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('rotate-script');
}, 120_000);
afterAll(async () => {
  await t?.close();
});

const rotate = (env: Record<string, string>, target = 'signing-key') =>
  runCollect(process.execPath, ['scripts/rotate.ts', target], { JIT_ADMIN_TOKEN: t.issuer.svid(ADMIN), ...env }, { killMs: 50_000 });

async function kids(): Promise<string[]> {
  const jwks = (await (await fetch(`${t.url}/.well-known/jwks.json`)).json()) as { keys: { kid: string }[] };
  return jwks.keys.map((k) => k.kid);
}

test('rotates through the broker JIT_BROKER_URL names', async () => {
  const before = await kids();
  const r = await rotate({ JIT_BROKER_URL: t.url });
  expect([r.code, r.stderr]).toEqual([0, '']);
  expect(JSON.parse(r.stdout)).toMatchObject({ target: 'signing-key' });
  // The new key is published at once (it signs after the lead time).
  expect((await kids()).filter((k) => !before.includes(k))).toHaveLength(1);
});

test('a broker it cannot reach: one line with the error code, exit 3', async () => {
  // A port that was free a moment ago (not 9: fetch refuses that one itself, as a "bad port").
  const gone = await startFakeBroker(() => {});
  await gone.close();
  const r = await rotate({ JIT_BROKER_URL: gone.url });
  expect([r.code, r.stderr, r.stdout]).toEqual([3, `rotate: cannot reach ${gone.url}: ECONNREFUSED\n`, '']);
});

test("an answer that is not JSON (a proxy's error page): one line with the status, exit 3", async () => {
  const proxy = await startFakeBroker((_req, res) => send(res, 502, '<html><body>Bad Gateway</body></html>', 'text/html'));
  try {
    const r = await rotate({ JIT_BROKER_URL: proxy.url });
    expect([r.code, r.stderr, r.stdout]).toEqual([3, `rotate: ${proxy.url} answered 502 with text/html, not the broker's JSON\n`, '']);
  } finally {
    await proxy.close();
  }
});

test('BROKER_URL alone (what the script read before): refused, exit 2, no admin token sent to the default address', async () => {
  // Silently ignored, it sent the admin's bearer token to http://127.0.0.1:8080, whatever listens there (a dev
  // broker, another service), instead of the broker the operator named, and rotated that one's secret if it was one.
  const named = await startFakeBroker((_req, res) => send(res, 202, '{"target":"signing-key"}', 'application/json'));
  try {
    const r = await rotate({ BROKER_URL: named.url });
    expect([r.code, r.stdout]).toEqual([2, '']);
    expect(r.stderr).toBe("rotate: BROKER_URL is no longer read; set JIT_BROKER_URL to the broker's address\n");
  } finally {
    await named.close();
  }
});
