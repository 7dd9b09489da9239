import type { Approval, ApprovalStatus } from '../../client/types.ts';
import type { Command } from '../command.ts';
import type { Out } from '../output.ts';
import { listOptions, printPage } from './paging.ts';

export const approvalsList: Command = {
  path: ['approvals', 'list'],
  usage: 'jit approvals list [--status pending|approved|rejected|consumed|expired] [--limit N] [--cursor C] [--all]',
  summary: 'approvals you may see (approvers: all; agents and orchestrators: their tasks’); default --status pending',
  options: { status: { type: 'string' }, ...listOptions },
  async run(ctx) {
    const status = ctx.flags.oneOf<ApprovalStatus>('status', ['pending', 'approved', 'rejected', 'consumed', 'expired']) ?? 'pending';
    const client = ctx.client();
    await printPage(
      ctx,
      (page) => client.listApprovals({ status, ...page }),
      (out, items: Approval[]) =>
        out.table(
          ['APPROVAL', 'STATUS', 'TASK', 'ROLE', 'SCOPES', 'TTL', 'AGENT', 'REQUESTED'],
          items.map((a) => [a.approvalId, a.status, a.taskId, a.role, a.scopes?.join(','), ttl(a), a.agent, requested(a)]),
        ),
    );
    return 0;
  },
};

export const approvalsShow: Command = {
  path: ['approvals', 'show'],
  usage: 'jit approvals show <approvalId>',
  summary: 'one approval and its status',
  options: {},
  args: ['approvalId'],
  async run(ctx) {
    const a = await ctx.client().getApproval(ctx.positionals[0]!);
    if (ctx.json) ctx.out.json(a);
    else print(ctx.out, a);
    return 0;
  },
};

function decide(verb: 'approve' | 'reject'): Command {
  return {
    path: ['approvals', verb],
    usage: `jit approvals ${verb} <approvalId> [--reason TEXT]`,
    summary: verb === 'approve' ? 'approve a pending credential request (approvers)' : 'reject a pending credential request (approvers)',
    options: { reason: { type: 'string' } },
    args: ['approvalId'],
    async run(ctx) {
      const client = ctx.client();
      const id = ctx.positionals[0]!;
      const reason = ctx.flags.str('reason');
      const a = verb === 'approve' ? await client.approve(id, reason) : await client.reject(id, reason);
      if (ctx.json) ctx.out.json(a);
      else ctx.out.line(`approval ${a.approvalId}: ${a.status} (task ${a.taskId}, role ${a.role})`);
      return 0;
    },
  };
}

export const approvalsApprove = decide('approve');
export const approvalsReject = decide('reject');

/**
 * What approving gives (`issuedTtlSeconds`), and what was asked when that differs: an AWS request for 60 s is
 * issued for STS's 900 s, one beyond the role's maximum for the maximum. `900s (asked 60s)`; `60s`.
 */
function ttl(a: Approval): string | undefined {
  const issued = typeof a.issuedTtlSeconds === 'number' ? a.issuedTtlSeconds : undefined;
  if (a.ttlSeconds === undefined) return issued === undefined ? undefined : `${issued}s`;
  return issued === undefined || issued === a.ttlSeconds ? `${a.ttlSeconds}s` : `${issued}s (asked ${a.ttlSeconds}s)`;
}

function requested(a: Approval): string {
  return typeof a.requestedAt === 'number' ? new Date(a.requestedAt).toISOString() : a.requestedAt;
}

function print(out: Out, a: Approval): void {
  out.fields([
    ['approval', a.approvalId],
    ['status', a.status],
    ['task', a.taskId],
    ['role', a.role],
    ['scopes', a.scopes?.join(',')],
    ['ttl', ttl(a)],
    ['agent', a.agent],
    ['requested', requested(a)],
    ['decidedBy', a.decidedBy],
    ['reason', a.reason],
  ]);
}
