import {
  ADMIN,
  AGENT,
  ORCH,
  REDIS_URL,
  call,
  startSibling,
  startTestBroker,
  uniquePrefix,
  waitFor,
  type TestBroker,
} from '../helpers/broker.ts';
import { LeaseStore } from '../../src/leases/lease-store.ts';

/** The agent every race test's tasks are for. */
export const AGENT_ID = `spiffe://dev.local${AGENT}`;

/**
 * The race tests' world: two broker instances (API + worker each) on one Redis prefix, rate limits off, small
 * task bounds so that concurrency meets them; `either(i)` spreads requests over both. Started in beforeAll.
 */
export function twoBrokers(name: string) {
  let a: TestBroker;
  let b: TestBroker;
  beforeAll(async () => {
    const prefix = uniquePrefix(name);
    a = await startTestBroker(name, {
      prefix,
      config: {
        redis: { url: REDIS_URL, prefix },
        server: { port: 0, publicUrl: 'http://127.0.0.1:8080', rateLimit: { perSecond: 0 } },
        tasks: { maxLeases: 7, maxSubtasks: 9, maxPendingApprovals: 4 },
      },
    });
    b = await startSibling(a);
  });
  afterAll(async () => {
    await b?.close();
    await a?.close();
  });

  const either = (i: number) => (i % 2 === 0 ? a : b);

  const open = (t: TestBroker, taskId: string, grants: Record<string, unknown>[], ttlSeconds = 600, agent = AGENT_ID) =>
    call(t.url, 'POST', '/v1/tasks', t.as(ORCH), { taskId, agent, tenant: 'acme', purpose: 'race', ttlSeconds, grants });

  async function introspect(t: TestBroker, token: string): Promise<boolean> {
    const res = await fetch(`${t.url}/v1/introspect`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...t.as(ADMIN) },
      body: new URLSearchParams({ token }),
    });
    expect(res.status).toBe(200);
    return ((await res.json()) as { active: boolean }).active;
  }

  /** The leases of these tasks not ended yet, as `id:status`. */
  async function liveLeasesOf(taskIds: string[]): Promise<string[]> {
    const live: string[] = [];
    for (const id of taskIds) {
      for (const l of await a.broker.deps.leases.getMany(await a.broker.deps.tasks.leaseIds(id)))
        if (!LeaseStore.isEnded(l.status)) live.push(`${l.leaseId}:${l.status}`);
    }
    return live;
  }

  /** No token handed out is active on either instance, and every lease of the tasks ends (the worker's part). */
  async function expectNothingOutlives(taskIds: string[], tokens: string[]): Promise<void> {
    for (const tok of tokens) {
      expect(await introspect(a, tok)).toBe(false);
      expect(await introspect(b, tok)).toBe(false);
    }
    await waitFor(async () => (await liveLeasesOf(taskIds)).length === 0, 10_000).catch(async () => {
      throw new Error(`leases left live: ${(await liveLeasesOf(taskIds)).join(', ')}`);
    });
    // Each task's live-lease count (what tasks.maxLeases is checked on) came back to exactly none.
    for (const t of await a.broker.deps.tasks.getMany(taskIds)) expect([t.taskId, t.liveLeases]).toEqual([t.taskId, 0]);
  }

  return { a: () => a, b: () => b, either, open, liveLeasesOf, expectNothingOutlives };
}
