import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ORCH, call } from './broker.ts';

/** A broker to call: a TestBroker, or a broker process with the test issuer's `as`. */
export interface Party {
  url: string;
  as(path: string): { authorization: string };
}

/**
 * A policy directory that permits everything, for tests of the broker's own checks (approvals, quarantine):
 * with the shipped policies some of the requests they make would be denied before those checks are reached.
 */
export function permitAllPolicies(name: string): string {
  const dir = mkdtempSync(join(tmpdir(), `${name}-`));
  writeFileSync(join(dir, 'all.cedar'), 'permit (principal, action, resource);\n');
  return dir;
}

/** Opens `taskId` for the agent at `agentPath` with a grant of `prod-deploy` (approval required); expects 201. */
export async function openDeployTask(b: Party, taskId: string, agentPath: string, ttlSeconds = 600): Promise<void> {
  const open = await call(b.url, 'POST', '/v1/tasks', b.as(ORCH), {
    taskId,
    agent: `spiffe://dev.local${agentPath}`,
    tenant: 'acme',
    purpose: 'deploy',
    ttlSeconds,
    grants: [{ role: 'prod-deploy' }],
  });
  expect(open.status).toBe(201);
}

/**
 * The approval tests' preamble: a prod-deploy task for `agentPath`, its request (202, an approval pending) and
 * `approverPath`'s approval of it (200, `approved`). Returns the approval and `ask`, the agent's same request
 * again (the one that is handed the credential, or not, on that approval).
 */
export async function approvedDeploy(
  b: Party,
  taskId: string,
  agentPath: string,
  approverPath: string,
): Promise<{ approvalId: string; ask: () => ReturnType<typeof call> }> {
  await openDeployTask(b, taskId, agentPath);
  const ask = () => call(b.url, 'POST', '/v1/credentials', b.as(agentPath), { taskId, role: 'prod-deploy' });
  const first = await ask();
  expect(first.status).toBe(202);
  const approvalId = first.body.approvalId as string;
  const decided = await call(b.url, 'POST', `/v1/approvals/${approvalId}`, b.as(approverPath), { decision: 'approve' });
  expect([decided.status, decided.body.status]).toEqual([200, 'approved']);
  return { approvalId, ask };
}
