import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { PolicyRequest, PolicyTaskContext } from '../../src/policy/types.ts';
import { rootTaskId } from '../../src/tasks/types.ts';

/** A temp policy directory with the given files; `cleanup` removes it. */
export async function policyDir(
  files: Record<string, string>,
): Promise<{ dir: string; write: (f: Record<string, string>) => Promise<void>; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'jit-policy-test-'));
  const write = async (f: Record<string, string>) => {
    for (const [name, text] of Object.entries(f)) await writeFile(join(dir, name), text);
  };
  await write(files);
  return { dir, write, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export const AGENT = 'spiffe://dev.local/agent/a1';
export const SUPPORT = 'spiffe://dev.local/agent/support/s1';
export const DEV_ASSISTANT = 'spiffe://dev.local/agent/dev-assistant/d1';
export const ORCHESTRATOR = 'spiffe://dev.local/orchestrator/o1';
export const ADMIN = 'spiffe://dev.local/ops/alice';

export function task(over: Partial<PolicyTaskContext> = {}): PolicyTaskContext {
  const t = { id: 't-1', tenant: 'acme', purpose: 'test', agent: AGENT, labels: {}, roles: ['tickets-api'], depth: 0, ...over };
  return { ...t, rootId: over.rootId ?? rootTaskId(t.id) };
}

/** An `issue` request for `role` by `agent` in its own task; `over` replaces parts of it. */
export function issue(
  agent: string,
  role: string,
  over: { claims?: Record<string, string>; task?: Partial<PolicyTaskContext>; context?: Partial<PolicyRequest['context']> } = {},
): PolicyRequest {
  return {
    principal: { id: agent, trust: 'dev', kind: 'spiffe', claims: over.claims ?? {} },
    action: 'issue',
    resource: { type: 'Role', id: role },
    context: { task: task({ agent, roles: [role], ...over.task }), ttlSeconds: 300, scopes: [], ...over.context },
  };
}

export function request(
  principal: string,
  action: PolicyRequest['action'],
  resource: PolicyRequest['resource'],
  context: PolicyRequest['context'] = {},
  claims: Record<string, string> = {},
): PolicyRequest {
  return { principal: { id: principal, trust: 'dev', kind: 'spiffe', claims }, action, resource, context };
}
