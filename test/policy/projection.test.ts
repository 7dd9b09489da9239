import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { isAuthorized, policyToJson, type PolicyJson } from '@cedar-policy/cedar-wasm/nodejs';
import { join } from 'node:path';
import { createCedarEngine, type CedarPolicyEngine } from '../../src/policy/cedar-engine.ts';
import { loadPolicySet, type LoadedPolicySet } from '../../src/policy/load.ts';
import { attributePaths } from '../../src/policy/policy-ast.ts';
import { project, projectionsFor } from '../../src/policy/projection.ts';
import type { PolicyRequest } from '../../src/policy/types.ts';
import { benchRequests } from '../../scripts/bench/policy.ts';
import { ADMIN, AGENT, DEV_ASSISTANT, ORCHESTRATOR, SUPPORT, issue, policyDir, request, task } from './fixtures.ts';

const json = (text: string): PolicyJson => {
  const a = policyToJson(text);
  if (a.type !== 'success') throw new Error('bad policy');
  return a.json;
};

describe('attribute paths and projection', () => {
  test('collects reads and has-tests, including multi-attribute has and quoted names', () => {
    const paths = attributePaths(
      json(
        'permit (principal, action, resource) when { principal has claims.team && principal.claims["x:y"] == "1" && context.task.labels has ticket && resource.id == "r" && principal == Workload::"w" };',
      ),
    );
    expect(paths).toEqual([
      { root: 'principal', attrs: ['claims', 'team'], whole: false },
      { root: 'principal', attrs: ['claims', 'x:y'], whole: true },
      { root: 'context', attrs: ['task', 'labels', 'ticket'], whole: false },
      { root: 'resource', attrs: ['id'], whole: true },
      { root: 'principal', attrs: [], whole: true },
    ]);
  });

  test('keeps only what policies read; a record used whole stays whole', () => {
    const p = projectionsFor(
      attributePaths(
        json(
          'permit (principal, action, resource) when { principal.claims.team == "a" && context.task has parentId && context.task.labels == {"a": "b"} };',
        ),
      ),
    );
    const ctx = { task: { id: 't', parentId: 'p', labels: { a: 'b', c: 'd' }, roles: ['r'] }, ttlSeconds: 5 };
    expect(JSON.parse(JSON.stringify(project(ctx, p.context)))).toEqual({ task: { parentId: 'p', labels: { a: 'b', c: 'd' } } });
    expect(JSON.parse(JSON.stringify(project({ id: 'w', claims: { team: 'a', other: 'x' } }, p.principal)))).toEqual({
      claims: { team: 'a' },
    });
    expect(p.resource).toEqual(new Map());
  });

  // Projected records are plain objects (JSON.stringify's fast path): `__proto__` must stay an own attribute,
  // where plain assignment would set the prototype and the policy below would read no claim.
  test('an attribute named __proto__ is kept as data and decides as before', async () => {
    const text =
      'permit (principal, action, resource) when { principal.claims["__proto__"] == "x" && context.task.labels["__proto__"] == "y" };';
    const p = projectionsFor(attributePaths(json(text)));
    const claims = JSON.parse('{"__proto__":"x","team":"a"}') as Record<string, string>;
    const labels = JSON.parse('{"__proto__":"y","other":"z"}') as Record<string, string>;
    expect(JSON.stringify(project({ id: 'w', claims }, p.principal))).toBe('{"claims":{"__proto__":"x"}}');
    expect(JSON.stringify(project({ task: { labels } }, p.context))).toBe('{"task":{"labels":{"__proto__":"y"}}}');
    const d = await policyDir({ 'p.cedar': `@id("proto")\n${text}\n` });
    const engines = [await createCedarEngine({ dir: d.dir }), await createCedarEngine({ dir: d.dir, cacheSize: 0 })];
    try {
      for (const e of engines) {
        expect(e.authorize(issue(AGENT, 'demo-api', { claims, task: { labels } }))).toEqual({
          allowed: true,
          policies: ['proto'],
          errors: [],
        });
        const other = JSON.parse('{"__proto__":"w"}') as Record<string, string>;
        expect(e.authorize(issue(AGENT, 'demo-api', { claims: other, task: { labels } })).allowed).toBe(false);
      }
    } finally {
      for (const e of engines) await e.close();
      await d.cleanup();
    }
  });

  test('`context` used as a value keeps the whole context', () => {
    const p = projectionsFor(attributePaths(json('permit (principal, action, resource) when { context == {} };')));
    expect(p.context).toBe('all');
  });
});

/** Cedar on the full request with every policy at once: the reference the engine must agree with. */
function reference(set: LoadedPolicySet, req: PolicyRequest) {
  const policies = Object.fromEntries(set.policies.map((p) => [p.id, p.text]));
  const principal = { type: 'Workload', id: req.principal.id };
  const resource = { type: req.resource.type, id: req.resource.id };
  const answer = isAuthorized({
    principal,
    resource,
    action: { type: 'Action', id: req.action },
    context: JSON.parse(JSON.stringify(req.context)),
    policies: { staticPolicies: policies },
    entities: [
      { uid: principal, attrs: { ...req.principal }, parents: [] },
      { uid: resource, attrs: { id: req.resource.id }, parents: [] },
    ],
  });
  if (answer.type !== 'success') throw new Error(JSON.stringify(answer.errors));
  return answer.response;
}

describe('the engine decides exactly as Cedar on the full request', () => {
  let shipped: CedarPolicyEngine;
  let bench: CedarPolicyEngine;
  beforeAll(async () => {
    shipped = await createCedarEngine({ dir: join(process.cwd(), 'config/policies'), cacheSize: 0 });
  });
  afterAll(async () => {
    await shipped.close();
    await bench?.close();
  });

  const requests: PolicyRequest[] = [];
  for (const who of [AGENT, SUPPORT, DEV_ASSISTANT, ORCHESTRATOR, ADMIN]) {
    for (const role of ['tickets-api', 'demo-api', 'prod-deploy', 'github-pr']) {
      for (const claims of [{}, { tenant: 'acme' }, { tenant: 'globex', team: 'x' }] as Array<Record<string, string>>) {
        for (const labels of [{}, { ticket_status: 'open' }, { ticket_status: 'closed', ticket: '1' }] as Array<Record<string, string>>) {
          for (const ttlSeconds of [60, 900, 901, 3601]) {
            requests.push(
              issue(who, role, {
                claims,
                task: { labels },
                context: { ttlSeconds, scopes: ['tickets:read'], approved: ttlSeconds === 60 },
              }),
            );
          }
        }
      }
    }
    requests.push(request(who, 'rotate', { type: 'Broker', id: 'broker' }, { target: 'signing-key' }));
    requests.push(
      request(who, 'openTask', { type: 'Task', id: 't' }, { task: task({ parentId: 'p', depth: 1 }), ttlSeconds: 60, scopes: [] }),
    );
    requests.push(request(who, 'issue', { type: 'Role', id: 'demo-api' }, {}));
  }

  test(`shipped policies, ${requests.length} requests`, async () => {
    const set = shipped.policySet;
    for (const req of requests) expectSame(shipped, set, req);
  });

  test('the benchmark policy set, its requests', async () => {
    const { benchPolicyText } = await import('../../scripts/bench/policy.ts');
    const { policyDir } = await import('./fixtures.ts');
    const fixture = await policyDir({ 'bench.cedar': benchPolicyText(40) });
    try {
      bench = await createCedarEngine({ dir: fixture.dir, cacheSize: 0 });
      const set = await loadPolicySet(fixture.dir);
      for (const req of benchRequests(200)) expectSame(bench, set, req);
    } finally {
      await fixture.cleanup();
    }
  });
});

function expectSame(engine: CedarPolicyEngine, set: LoadedPolicySet, req: PolicyRequest): void {
  const ref = reference(set, req);
  const got = engine.authorize(req);
  const erroredForbids = ref.diagnostics.errors.map((e) => e.policyId).filter((id) => engine.policy(id)?.effect === 'forbid');
  if (erroredForbids.length > 0) {
    expect({ req, allowed: got.allowed, policies: [...got.policies].sort() }).toEqual({
      req,
      allowed: false,
      policies: [...new Set(erroredForbids)].sort(),
    });
  } else {
    expect({ req, allowed: got.allowed, policies: [...got.policies].sort() }).toEqual({
      req,
      allowed: ref.decision === 'allow',
      policies: [...ref.diagnostics.reason].sort(),
    });
  }
  expect(got.errors.map((e) => e.split(':')[0]).sort()).toEqual(ref.diagnostics.errors.map((e) => e.policyId.split(':')[0]).sort());
}
