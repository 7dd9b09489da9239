import fc from 'fast-check';
import { decodeJwt } from 'jose';
import { ORCH, call, startTestBroker, type TestBroker } from '../helpers/broker.ts';

/**
 * Property: whatever an agent asks for, through however many levels of
 * delegation, no sub-task and no credential ever exceeds its parent: roles,
 * scopes, TTLs, deadline, tenant, purpose and labels only narrow; and no
 * request answers 5xx. Random trees and random requests, through the HTTP API.
 */
let t: TestBroker;
beforeAll(async () => {
  t = await startTestBroker('attenuation', {
    config: { tasks: { maxSubtasks: 1000, maxLeases: 0, maxPendingApprovals: 0, maxDelegationDepth: 3 } },
  });
});
afterAll(async () => {
  await t.close();
});

const ROLES = { 'tickets-api': ['tickets:read', 'tickets:write'], 'demo-api': [] as string[] } as const;
type RoleName = keyof typeof ROLES;
const ROLE_MAX: Record<RoleName, number> = { 'tickets-api': 900, 'demo-api': 300 };

const grantArb = fc.record({
  role: fc.constantFrom<RoleName>('tickets-api', 'demo-api'),
  scopes: fc.option(fc.subarray(['tickets:read', 'tickets:write']), { nil: undefined }),
  maxTtlSeconds: fc.option(fc.integer({ min: 1, max: 1200 }), { nil: undefined }),
});
const labelsArb = fc.option(fc.dictionary(fc.constantFrom('ticket', 'env', 'step'), fc.constantFrom('1', '2', 'prod')), { nil: undefined });
const subArb = fc.record({
  grants: fc.uniqueArray(grantArb, { minLength: 1, maxLength: 2, selector: (g) => g.role }),
  labels: labelsArb,
  ttlSeconds: fc.integer({ min: 1, max: 900 }),
  tenant: fc.option(fc.constantFrom('acme', 'globex'), { nil: undefined }),
  purpose: fc.option(fc.constantFrom('triage', 'other'), { nil: undefined }),
});
const requestArb = fc.record({
  role: fc.constantFrom<RoleName | 'prod-deploy'>('tickets-api', 'demo-api', 'prod-deploy'),
  scopes: fc.option(fc.subarray(['tickets:read', 'tickets:write', 'tickets:admin']), { nil: undefined }),
  ttlSeconds: fc.option(fc.integer({ min: 1, max: 2000 }), { nil: undefined }),
});
const scenarioArb = fc.record({
  root: subArb,
  // Each step delegates from one of the tasks made so far (by index), then asks for credentials.
  steps: fc.array(fc.record({ from: fc.nat(), sub: subArb, requests: fc.array(requestArb, { maxLength: 2 }) }), {
    minLength: 1,
    maxLength: 4,
  }),
});

interface Task {
  taskId: string;
  agentPath: string;
  body: {
    grants: { role: string; scopes: string[]; maxTtlSeconds: number }[];
    tenant: string;
    purpose: string;
    labels: Record<string, string>;
    expiresAt: string;
    depth?: number;
  };
}

let run = 0;
test('no sub-task and no credential ever exceeds its parent', async () => {
  await fc.assert(
    fc.asyncProperty(scenarioArb, async ({ root, steps }) => {
      run += 1;
      const agentOf = (i: number) => `/agent/p${run}/a${i}`;
      const r = await call(t.url, 'POST', '/v1/tasks', t.as(ORCH), {
        taskId: `t-prop-${run}`,
        agent: `spiffe://dev.local${agentOf(0)}`,
        tenant: root.tenant ?? 'acme',
        purpose: root.purpose ?? 'triage',
        ttlSeconds: root.ttlSeconds,
        grants: root.grants,
        ...(root.labels ? { labels: root.labels } : {}),
      });
      expect(r.status).toBeLessThan(500);
      if (r.status !== 201) return;
      const tasks: Task[] = [{ taskId: r.body.taskId, agentPath: agentOf(0), body: r.body }];
      for (const [i, step] of steps.entries()) {
        const parent = tasks[step.from % tasks.length]!;
        const agentPath = agentOf(i + 1);
        const s = await call(t.url, 'POST', '/v1/tasks', t.as(parent.agentPath), {
          parentTaskId: parent.taskId,
          agent: `spiffe://dev.local${agentPath}`,
          ttlSeconds: step.sub.ttlSeconds,
          grants: step.sub.grants,
          ...(step.sub.labels ? { labels: step.sub.labels } : {}),
          ...(step.sub.tenant ? { tenant: step.sub.tenant } : {}),
          ...(step.sub.purpose ? { purpose: step.sub.purpose } : {}),
        });
        expect(s.status).toBeLessThan(500);
        if (s.status === 201) {
          const child: Task = { taskId: s.body.taskId, agentPath, body: s.body };
          // The sub-task only narrows its parent.
          expect(child.body.tenant).toBe(parent.body.tenant);
          expect(child.body.purpose).toBe(parent.body.purpose);
          for (const [k, v] of Object.entries(parent.body.labels)) expect(child.body.labels[k]).toBe(v);
          expect(Date.parse(child.body.expiresAt)).toBeLessThanOrEqual(Date.parse(parent.body.expiresAt));
          for (const g of child.body.grants) {
            const pg = parent.body.grants.find((x) => x.role === g.role);
            expect(pg).toBeDefined();
            for (const sc of g.scopes) expect(pg!.scopes).toContain(sc);
            expect(g.maxTtlSeconds).toBeLessThanOrEqual(pg!.maxTtlSeconds);
          }
          tasks.push(child);
        }
        // Credentials on the newest task (or the parent if delegation was refused).
        const on = tasks.at(-1)!;
        for (const req of step.requests) {
          const c = await call(t.url, 'POST', '/v1/credentials', t.as(on.agentPath), {
            taskId: on.taskId,
            role: req.role,
            ...(req.scopes ? { scopes: req.scopes } : {}),
            ...(req.ttlSeconds ? { ttlSeconds: req.ttlSeconds } : {}),
          });
          expect(c.status).toBeLessThan(500);
          if (c.status !== 201) continue;
          const grant = on.body.grants.find((g) => g.role === c.body.role);
          expect(grant).toBeDefined();
          for (const sc of c.body.scopes) expect(grant!.scopes).toContain(sc);
          expect(c.body.ttlSeconds).toBeLessThanOrEqual(Math.min(grant!.maxTtlSeconds, ROLE_MAX[c.body.role as RoleName]));
          expect(Date.parse(c.body.expiresAt)).toBeLessThanOrEqual(Date.parse(on.body.expiresAt) + 1000);
          const claims = decodeJwt(c.body.credentials.access_token);
          expect((claims.scope as string).split(' ').filter(Boolean)).toEqual(c.body.scopes);
        }
      }
    }),
    { numRuns: 40 },
  );
}, 120_000);
