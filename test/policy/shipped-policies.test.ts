import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { join } from 'node:path';
import { createCedarEngine, type CedarPolicyEngine } from '../../src/policy/cedar-engine.ts';
import type { PolicyRequest } from '../../src/policy/types.ts';
import { ADMIN, AGENT, DEV_ASSISTANT, ORCHESTRATOR, SUPPORT, issue, request, task } from './fixtures.ts';

// The dev default set (config/policies) as a table: who may do what.
let engine: CedarPolicyEngine;
beforeAll(async () => {
  engine = await createCedarEngine({ dir: join(process.cwd(), 'config/policies') });
});
afterAll(() => engine.close());

const openSupport = (over: Parameters<typeof issue>[2] = {}) =>
  issue(SUPPORT, 'tickets-api', {
    claims: { tenant: 'acme' },
    ...over,
    task: { labels: { ticket_status: 'open' }, ...over.task },
    context: { scopes: ['tickets:read'], ...over.context },
  });
const taskReq = (who: string, action: 'openTask' | 'completeTask', over: Partial<ReturnType<typeof task>> = {}) =>
  request(who, action, { type: 'Task', id: 't-1' }, { task: task(over), ttlSeconds: 600, scopes: [] });

const cases: Array<[string, PolicyRequest, boolean, string]> = [
  ['orchestrator opens a task', taskReq(ORCHESTRATOR, 'openTask'), true, 'orchestrators-manage-tasks'],
  ['orchestrator completes a task', taskReq(ORCHESTRATOR, 'completeTask'), true, 'orchestrators-manage-tasks'],
  ['agent cannot open a root task', taskReq(AGENT, 'openTask'), false, ''],
  ['agent opens a sub-task', taskReq(AGENT, 'openTask', { parentId: 't-0', depth: 1 }), true, 'agents-delegate'],
  ['agent cannot delegate deeper than 2', taskReq(AGENT, 'openTask', { parentId: 't-0', depth: 3 }), false, ''],
  ['agent issues a granted role', issue(AGENT, 'demo-api'), true, 'agents-issue-within-task'],
  ['agent: ttl above an hour', issue(AGENT, 'demo-api', { context: { ttlSeconds: 3601 } }), false, ''],
  ['agent: role not granted to the task', issue(AGENT, 'demo-api', { task: { roles: ['tickets-api'] } }), false, ''],
  ["agent: someone else's task", issue(AGENT, 'demo-api', { task: { agent: 'spiffe://dev.local/agent/other' } }), false, ''],
  ['outside the agent path', issue('spiffe://other.org/agent/a', 'demo-api'), false, ''],
  ['anyone the broker lets revoke may', request(AGENT, 'revoke', { type: 'Task', id: 't-1' }, { task: task() }), true, 'revoke-own-leases'],
  ['admin rotates', request(ADMIN, 'rotate', { type: 'Broker', id: 'broker' }, { target: 'signing-key' }), true, 'admins-rotate'],
  ['agent cannot rotate', request(AGENT, 'rotate', { type: 'Broker', id: 'broker' }, { target: 'signing-key' }), false, ''],
  ['support reads an open ticket of its tenant', openSupport(), true, 'support-read-tickets'],
  ['support: ticket closed', openSupport({ task: { labels: { ticket_status: 'closed' } } }), false, 'support-only-open-tickets'],
  ['support: no ticket_status label', openSupport({ task: { labels: {} } }), false, 'support-only-open-tickets'],
  ['support: other tenant', openSupport({ claims: { tenant: 'globex' } }), false, 'support-own-tenant-only'],
  ['support: no tenant claim', openSupport({ claims: {} }), false, 'support-own-tenant-only'],
  ['support: write scope', openSupport({ context: { scopes: ['tickets:write'] } }), false, 'support-only-case-records'],
  ['support: longer than 15 minutes', openSupport({ context: { ttlSeconds: 901 } }), false, 'support-short-lived'],
  ['support: another role', issue(SUPPORT, 'demo-api', { claims: { tenant: 'acme' } }), false, 'support-only-case-records'],
  ['dev assistant opens a PR', issue(DEV_ASSISTANT, 'github-pr'), true, 'dev-assistant-pr-and-logs'],
  ['dev assistant queries logs', issue(DEV_ASSISTANT, 'logs-query'), true, 'dev-assistant-pr-and-logs'],
  [
    'prod-deploy without approval',
    issue(DEV_ASSISTANT, 'prod-deploy', { context: { approved: false } }),
    false,
    'prod-deploy-needs-approval',
  ],
  ['prod-deploy, approved unknown', issue(DEV_ASSISTANT, 'prod-deploy'), false, 'prod-deploy-needs-approval'],
  ['prod-deploy approved', issue(DEV_ASSISTANT, 'prod-deploy', { context: { approved: true } }), true, 'agents-issue-within-task'],
];

describe('config/policies', () => {
  test.each(cases)('%s', (_name, req, allowed, policy) => {
    const d = engine.authorize(req);
    expect(d.allowed).toBe(allowed);
    if (policy) expect(d.policies).toContain(policy);
    else expect(d.policies).toEqual([]);
  });
});
