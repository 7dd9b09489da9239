import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createCedarEngine, type CedarPolicyEngine } from '../../src/policy/cedar-engine.ts';
import type { PolicyRequest } from '../../src/policy/types.ts';
import { issue, policyDir, request, task } from './fixtures.ts';

// A small set exercising each rule of the engine; ids name what they test.
const POLICIES = {
  'a.cedar': `
@id("issue-demo")
permit (principal, action == Action::"issue", resource == Role::"demo-api")
when { context.ttlSeconds <= 600 };

@id("issue-by-claim")
permit (principal, action == Action::"issue", resource == Role::"tickets-api")
when { principal.claims has team && principal.claims.team == "support" && context.task.tenant == "acme" };

@id("forbid-frozen")
forbid (principal, action == Action::"issue", resource)
when { context.task.labels has frozen && context.task.labels.frozen == "yes" };

// Reads the claim without \`has\`: for a token without it, this forbid errors, and must still deny.
@id("forbid-risky")
forbid (principal, action == Action::"issue", resource == Role::"demo-api")
when { principal.claims.risk == "high" };

// Reads context.task without \`has\` for every action; rotate has no task, so it errors there and must not permit.
@id("permit-acme-anything")
permit (principal, action, resource)
when { context.task.tenant == "acme-everything" };

@id("rotate-by-id")
permit (principal, action == Action::"rotate", resource == Broker::"broker")
when { principal.id like "spiffe://dev.local/ops/*" && context has target && context.target == "signing-key" };
`,
};

let fixture: Awaited<ReturnType<typeof policyDir>>;
let engine: CedarPolicyEngine;

beforeAll(async () => {
  fixture = await policyDir(POLICIES);
  engine = await createCedarEngine({ dir: fixture.dir });
});
afterAll(async () => {
  await engine.close();
  await fixture.cleanup();
});

const A = 'spiffe://dev.local/agent/a';
const riskLow = { risk: 'low' };

describe('decisions', () => {
  const cases: Array<[string, PolicyRequest, boolean, string[], RegExp | null]> = [
    ['allow: a permit applies', issue(A, 'demo-api', { claims: riskLow }), true, ['issue-demo'], null],
    ['deny by default: no permit for this role', issue(A, 'orders-db', { claims: riskLow }), false, [], null],
    [
      'deny: permit condition false (ttl too long)',
      issue(A, 'demo-api', { claims: riskLow, context: { ttlSeconds: 601 } }),
      false,
      [],
      null,
    ],
    [
      'forbid wins over permit',
      issue(A, 'demo-api', { claims: riskLow, task: { labels: { frozen: 'yes' } } }),
      false,
      ['forbid-frozen'],
      null,
    ],
    ['forbid on a claim', issue(A, 'demo-api', { claims: { risk: 'high' } }), false, ['forbid-risky'], null],
    ['an erroring forbid denies (claim missing)', issue(A, 'demo-api'), false, ['forbid-risky'], /forbid-risky/],
    ['claims access: matching claim permits', issue(A, 'tickets-api', { claims: { team: 'support' } }), true, ['issue-by-claim'], null],
    ['claims access: other claim value', issue(A, 'tickets-api', { claims: { team: 'sales' } }), false, [], null],
    ['claims access: claim absent (guarded by has)', issue(A, 'tickets-api'), false, [], null],
    ['unknown role: no permit names it', issue(A, 'no-such-role', { claims: riskLow }), false, [], null],
    [
      'issue without a task (missing context) does not permit',
      request(A, 'issue', { type: 'Role', id: 'tickets-api' }, { ttlSeconds: 60, scopes: [] }, { team: 'support' }),
      false,
      ['forbid-frozen'],
      /issue-by-claim/,
    ],
    [
      'rotate: admin with target',
      request('spiffe://dev.local/ops/x', 'rotate', { type: 'Broker', id: 'broker' }, { target: 'signing-key' }),
      true,
      ['rotate-by-id'],
      null,
    ],
    [
      'rotate: no task, a policy reading context.task errors and does not permit',
      request('spiffe://dev.local/agent/a', 'rotate', { type: 'Broker', id: 'broker' }, {}),
      false,
      [],
      /permit-acme-anything/,
    ],
    [
      'rotate: wrong identity',
      request('spiffe://dev.local/agent/a', 'rotate', { type: 'Broker', id: 'broker' }, { target: 'signing-key' }),
      false,
      [],
      null,
    ],
    [
      'openTask: no permit',
      request(A, 'openTask', { type: 'Task', id: 't-1' }, { task: task(), ttlSeconds: 60, scopes: [] }),
      false,
      [],
      null,
    ],
    [
      'non-integer ttl is refused, not rounded',
      issue(A, 'demo-api', { claims: riskLow, context: { ttlSeconds: 1.5 } }),
      false,
      [],
      /could not be evaluated/,
    ],
  ];

  test.each(cases)('%s', (_name, req, allowed, policies, error) => {
    const d = engine.authorize(req);
    expect(d.allowed).toBe(allowed);
    expect([...d.policies].sort()).toEqual([...policies].sort());
    if (error) expect(d.errors.join('\n')).toMatch(error);
  });

  test('an unknown action is denied with an error', () => {
    const d = engine.authorize({ ...issue(A, 'demo-api'), action: 'explode' as PolicyRequest['action'] });
    expect(d).toEqual({ allowed: false, policies: [], errors: [expect.stringContaining('unknown action')] });
  });

  test('decisions are fresh objects (the cache hands out copies)', () => {
    const req = issue(A, 'demo-api', { claims: riskLow });
    const first = engine.authorize(req);
    first.policies.push('tampered');
    expect(engine.authorize(req).policies).toEqual(['issue-demo']);
  });

  test('claims and labels named like Object.prototype members are plain data', () => {
    const req = issue(A, 'demo-api', { claims: JSON.parse('{"__proto__":"x","risk":"low","constructor":"y"}') as Record<string, string> });
    expect(engine.authorize(req).allowed).toBe(true);
  });

  test('exposes the version of the set in force', () => {
    expect(engine.version).toMatch(/^[0-9a-f]{64}$/);
  });
});

describe('decision cache off gives the same answers', () => {
  test('every case', async () => {
    const uncached = await createCedarEngine({ dir: fixture.dir, cacheSize: 0 });
    try {
      for (const req of [
        issue(A, 'demo-api', { claims: riskLow }),
        issue(A, 'demo-api'),
        issue(A, 'tickets-api', { claims: { team: 'support' } }),
      ]) {
        expect(uncached.authorize(req)).toEqual(engine.authorize(req));
      }
    } finally {
      await uncached.close();
    }
  });
});
