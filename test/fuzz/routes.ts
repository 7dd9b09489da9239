/**
 * Every route the broker serves, as one table the fuzzer reads. Adding a
 * route is adding a line: its method, its path with `{param}` slots, what
 * body it takes, which query parameters it reads, and (optionally) a
 * near-valid body the fuzzer mutates so that malformed input reaches deep
 * into the handler instead of stopping at the first check.
 *
 * Routes listed before they exist answer 404 today; that is fine (no 5xx),
 * and they are fuzzed the moment they are added.
 */

/** What the route expects as its body. */
export type BodyKind = 'none' | 'json' | 'form';
/** How the caller proves who it is. */
export type AuthKind = 'none' | 'bearer' | 'subject_token' | 'container';

export interface RouteSpec {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** Path with `{name}` slots for ids. */
  path: string;
  body: BodyKind;
  auth: AuthKind;
  /** Query parameters the route reads (the fuzzer also sends unknown ones). */
  query?: readonly string[];
  /** A near-valid body, given the ids of the fixtures (a task, a lease, an approval). */
  example?: (ids: FixtureIds) => Record<string, unknown>;
}

/** Ids of real objects the fuzz broker holds, so mutated requests can hit existing state. */
export interface FixtureIds {
  taskId: string;
  leaseId: string;
  approvalId: string;
  agent: string;
}

const LIST = ['limit', 'cursor'] as const;

export const ROUTES: readonly RouteSpec[] = [
  // Operations and discovery (no identity).
  { method: 'GET', path: '/healthz', body: 'none', auth: 'none' },
  { method: 'GET', path: '/readyz', body: 'none', auth: 'none' },
  { method: 'GET', path: '/metrics', body: 'none', auth: 'none' },
  { method: 'GET', path: '/.well-known/jwks.json', body: 'none', auth: 'none' },
  { method: 'GET', path: '/.well-known/oauth-authorization-server', body: 'none', auth: 'none' },
  { method: 'GET', path: '/openapi.json', body: 'none', auth: 'none' },

  // OAuth.
  {
    method: 'POST',
    path: '/v1/token',
    body: 'form',
    auth: 'subject_token',
    example: (ids) => ({
      grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
      subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
      audience: 'tickets-api',
      resource: 'https://tickets.internal',
      scope: 'tickets:read',
      requested_token_type: 'urn:ietf:params:oauth:token-type:access_token',
      task_id: ids.taskId,
    }),
  },
  {
    method: 'POST',
    path: '/v1/introspect',
    body: 'form',
    auth: 'bearer',
    example: () => ({ token: 'x', token_type_hint: 'access_token' }),
  },

  // Tasks.
  {
    method: 'POST',
    path: '/v1/tasks',
    body: 'json',
    auth: 'bearer',
    example: (ids) => ({
      taskId: 't-new',
      parentTaskId: ids.taskId,
      agent: ids.agent,
      tenant: 'acme',
      purpose: 'fuzz',
      ttlSeconds: 60,
      grants: [{ role: 'tickets-api', scopes: ['tickets:read'], maxTtlSeconds: 60 }],
      labels: { k: 'v' },
    }),
  },
  { method: 'GET', path: '/v1/tasks', body: 'none', auth: 'bearer', query: ['status', 'agent', 'tenant', 'orchestrator', ...LIST] },
  { method: 'GET', path: '/v1/tasks/{taskId}', body: 'none', auth: 'bearer' },
  { method: 'POST', path: '/v1/tasks/{taskId}/complete', body: 'json', auth: 'bearer', example: () => ({}) },
  { method: 'GET', path: '/v1/tasks/{taskId}/evidence', body: 'none', auth: 'bearer', query: LIST },

  // Credentials, leases, approvals.
  {
    method: 'POST',
    path: '/v1/credentials',
    body: 'json',
    auth: 'bearer',
    example: (ids) => ({ taskId: ids.taskId, role: 'tickets-api', scopes: ['tickets:read'], ttlSeconds: 60 }),
  },
  { method: 'GET', path: '/v1/leases/{leaseId}', body: 'none', auth: 'bearer' },
  { method: 'DELETE', path: '/v1/leases/{leaseId}', body: 'none', auth: 'bearer' },
  { method: 'GET', path: '/v1/approvals', body: 'none', auth: 'bearer', query: ['status', ...LIST] },
  { method: 'GET', path: '/v1/approvals/{approvalId}', body: 'none', auth: 'bearer' },
  {
    method: 'POST',
    path: '/v1/approvals/{approvalId}',
    body: 'json',
    auth: 'bearer',
    example: () => ({ decision: 'approve', reason: 'ok' }),
  },
  { method: 'GET', path: '/v1/audit', body: 'none', auth: 'bearer', query: ['taskId', 'actor', 'action', 'since', 'until', ...LIST] },

  // Admin.
  { method: 'POST', path: '/v1/admin/rotate', body: 'json', auth: 'bearer', example: () => ({ target: 'signing-key', immediate: false }) },
  { method: 'POST', path: '/v1/admin/policy/reload', body: 'json', auth: 'bearer', example: () => ({}) },
  { method: 'POST', path: '/v1/admin/revoke', body: 'json', auth: 'bearer', example: (ids) => ({ agent: `${ids.agent}/*` }) },
  {
    method: 'POST',
    path: '/v1/admin/quarantine',
    body: 'json',
    auth: 'bearer',
    example: () => ({ agent: 'spiffe://dev.local/agent/quarantined', reason: 'fuzz' }),
  },
  { method: 'GET', path: '/v1/admin/quarantine', body: 'none', auth: 'bearer' },
  { method: 'DELETE', path: '/v1/admin/quarantine/{pattern}', body: 'none', auth: 'bearer' },

  // AWS SDK container credentials.
  { method: 'GET', path: '/v1/aws/container-credentials/{taskId}/{role}', body: 'none', auth: 'container', query: ['scope'] },
];
