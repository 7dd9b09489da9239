import { expect } from '@jest/globals';
import { AGENT, ORCH, call, type TestBroker } from './broker.ts';

/**
 * The largest task the API accepts, for the read-cost red-team tests: 100 scopes of `scopeChars` characters (the
 * most a scope may have is 256), 32 labels of 256 characters, a purpose of `purposeChars`.
 */
export function largestShape(scopeChars = 250) {
  return {
    scopes: Array.from({ length: 100 }, (_, j) => `${String(j).padStart(3, '0')}${'s'.repeat(scopeChars - 3)}`),
    labels: Object.fromEntries(Array.from({ length: 32 }, (_, j) => [`k${j}`, 'v'.repeat(256)])),
  };
}

/** Opens `taskId` for the test agent with the largest shape's grant and labels (on role demo-api); expects 201. */
export async function openLargestTask(t: TestBroker, taskId: string, o: { scopeChars?: number; purposeChars?: number } = {}) {
  const { scopes, labels } = largestShape(o.scopeChars);
  const res = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${AGENT}`,
    tenant: 'acme',
    purpose: 'p'.repeat(o.purposeChars ?? 1000),
    ttlSeconds: 3600,
    grants: [{ role: 'demo-api', scopes }],
    labels,
  });
  expect(res.status).toBe(201);
}

/** GET `path` as the test agent: 200 expected; the answer's size in characters and its body. */
export async function sizedGet(t: TestBroker, path: string): Promise<{ bytes: number; body: any }> {
  const res = await fetch(`${t.url}${path}`, { headers: t.as(AGENT) });
  expect(res.status).toBe(200);
  const text = await res.text();
  return { bytes: text.length, body: JSON.parse(text) };
}
