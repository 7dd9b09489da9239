import { AGENT, ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { MAX_CHARS } from '../../src/leases/verified-tokens.ts';

/**
 * Red team, found while filling the introspection cache: a token holds its scopes (up to 100 of 256
 * characters; all of the grant's when a request omits them), and such a token is ~26 KB. Introspection
 * looked at no token over 8,192 characters, so every one of them was answered `active: false` while valid
 * (a resource server that introspects refused the agent's credential). Introspection now reads any token
 * the broker can mint; and since its cache of verified tokens (src/leases/verified-tokens.ts) was bounded by
 * count only (10,000 of up to ~70 KB each, from one agent's issuances), it is bounded by their length too.
 */
let t: TestBroker;
const N = 700; // ~18.5 MB of tokens, past the cache's bound
const scopes = Array.from({ length: 100 }, (_, j) => `${String(j).padStart(3, '0')}${'s'.repeat(253)}`);

beforeAll(async () => {
  t = await startTestBroker('rt-introspect-long', {
    config: { server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } } },
  });
  const open = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId: 'il',
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p',
    ttlSeconds: 3600,
    grants: [{ role: 'demo-api', scopes }],
  });
  expect(open.status).toBe(201);
}, 60_000);
afterAll(async () => t?.close());

/** A 503 (`not_ready`: Redis slower than redis.commandTimeoutMs on a loaded machine) is retried, as by a client. */
const introspect = async (token: string) => {
  for (let attempt = 0; ; attempt++) {
    const res = await fetch(`${t.url}/v1/introspect`, {
      method: 'POST',
      headers: { ...t.as('/rs/demo'), 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token }),
    });
    if (res.status === 503 && attempt < 4) {
      await res.body?.cancel();
      await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
      continue;
    }
    expect({ status: res.status, body: res.status === 200 ? undefined : await res.text() }).toEqual({ status: 200, body: undefined });
    return (await res.json()) as { active: boolean; scope?: string };
  }
};

/** How many tokens the cache holds, and their length as their header and claims. */
function held(): { entries: number; chars: number } {
  const cache = (t.broker.services.leases as unknown as { verified: { entries: Map<string, { header: unknown; claims: unknown }> } })
    .verified.entries;
  let chars = 0;
  let entries = 0;
  for (const v of cache.values()) {
    entries += 1;
    chars += JSON.stringify(v.header).length + JSON.stringify(v.claims).length;
  }
  return { entries, chars };
}

test("a token with its grant's 100 long scopes is active when introspected, and inactive once its task ends", async () => {
  const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'il', role: 'demo-api' });
  expect(r.status).toBe(201);
  const token: string = r.body.credentials.access_token;
  expect(token.length).toBeGreaterThan(25_000);
  // Before: { active: false } (the token is longer than 8,192 characters).
  const answer = await introspect(token);
  expect(answer.active).toBe(true);
  expect(answer.scope).toBe(scopes.join(' '));
});

test('introspecting many long tokens keeps the cache within its length bound; evicted ones are verified again', async () => {
  const tokens: string[] = [];
  // What this test is about is the cache, not availability: a 503 (`not_ready`, with Retry-After) is the broker's
  // answer when Redis does not answer within redis.commandTimeoutMs, which a full CI run on a loaded 2-core machine
  // brought about twice here (~18.5 MB of tokens made in the same process). A client retries it, so the test
  // does, a few times; anything else, or a 503 that stays, fails with the answer in the message.
  const issue = async () => {
    for (let attempt = 0; ; attempt++) {
      const r = await call(t.url, 'POST', '/v1/credentials', t.as(AGENT), { taskId: 'il', role: 'demo-api' });
      if (r.status !== 503 || attempt === 4) return r;
      await new Promise((res) => setTimeout(res, 200 * (attempt + 1)));
    }
  };
  for (let i = 0; i < N; i += 25) {
    const rs = await Promise.all(Array.from({ length: Math.min(25, N - i) }, issue));
    for (const r of rs) {
      expect({ status: r.status, problem: r.status === 201 ? undefined : r.body }).toEqual({ status: 201, problem: undefined });
      tokens.push(r.body.credentials.access_token);
    }
  }
  for (let i = 0; i < N; i += 25) {
    const answers = await Promise.all(tokens.slice(i, i + 25).map(introspect));
    expect(answers.every((a) => a.active)).toBe(true);
  }
  // ~18.5 MB of tokens: the oldest left (a count bound alone kept all 700, and would have kept 10,000).
  const now = held();
  expect(now.entries).toBeLessThan(N);
  expect(now.entries).toBeGreaterThan(N / 2);
  // Header and claims are ~3/4 of a token's length (base64url): what is held stays under the bound.
  expect(now.chars).toBeLessThan(MAX_CHARS);
  // The first ones were evicted: verified again, still active; and inactive once the task ends.
  expect((await introspect(tokens[0]!)).active).toBe(true);
  expect((await call(t.url, 'POST', '/v1/tasks/il/complete', t.as(ORCH))).status).toBe(202);
  expect((await introspect(tokens[0]!)).active).toBe(false);
  expect((await introspect(tokens[N - 1]!)).active).toBe(false);
}, 120_000);
