import type { Command } from '../command.ts';
import { when } from '../output.ts';

export const leaseShow: Command = {
  path: ['lease', 'show'],
  usage: 'jit lease show <leaseId>',
  summary: 'a lease, without secrets (its agent, the task’s orchestrator, admins)',
  options: {},
  args: ['leaseId'],
  async run(ctx) {
    const l = await ctx.client().getLease(ctx.positionals[0]!);
    if (ctx.json) ctx.out.json(l);
    else
      ctx.out.fields([
        ['lease', l.leaseId],
        ['task', l.taskId],
        ['role', l.role],
        ['provider', l.provider],
        ['agent', l.agent],
        ['scopes', l.scopes?.join(',')],
        ['status', l.status],
        ['issued', l.issuedAt],
        // A revoke_failed credential may still work upstream until then: it keeps its countdown.
        ['expires', when(l.expiresAt, Date.now(), ['revoked', 'expired', 'failed'].includes(l.status))],
        ['revocable', l.revocable === undefined ? undefined : String(l.revocable)],
        ['revoked', l.revokedAt],
        ['reason', l.reason],
      ]);
    return 0;
  },
};

export const leaseRevoke: Command = {
  path: ['lease', 'revoke'],
  usage: 'jit lease revoke <leaseId>',
  summary: 'revoke one credential early (the worker cuts it off upstream)',
  options: {},
  args: ['leaseId'],
  async run(ctx) {
    const id = ctx.positionals[0]!;
    const r = await ctx.client().revokeLease(id);
    if (ctx.json) ctx.out.json(r ?? {});
    else ctx.out.line(`lease ${id}: revocation accepted`);
    return 0;
  },
};
