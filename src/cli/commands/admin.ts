import type { Quarantine, RevokeSelector } from '../../client/types.ts';
import type { Command } from '../command.ts';
import { listOptions, printPage } from './paging.ts';

export const adminRevoke: Command = {
  path: ['admin', 'revoke'],
  usage: 'jit admin revoke (--agent PATTERN | --tenant T | --task ID)',
  summary: 'end every open task matching one selector and revoke its leases (admins)',
  options: { agent: { type: 'string' }, tenant: { type: 'string' }, task: { type: 'string' } },
  async run(ctx) {
    const f = ctx.flags;
    const given = (['agent', 'tenant', 'task'] as const).filter((k) => f.str(k) !== undefined);
    if (given.length !== 1) f.fail('give exactly one of --agent, --tenant, --task');
    const k = given[0]!;
    const selector = (k === 'task' ? { taskId: f.str('task') } : { [k]: f.str(k) }) as RevokeSelector;
    const r = await ctx.client().revokeAll(selector);
    if (ctx.json) ctx.out.json(r);
    else ctx.out.line(`ended ${r.tasks} task(s); ${r.leases} lease(s) being revoked`);
    return 0;
  },
};

export const adminQuarantine: Command = {
  path: ['admin', 'quarantine'],
  usage: 'jit admin quarantine --agent PATTERN --reason TEXT | jit admin quarantine --list',
  summary: 'refuse every call by matching identities and end their tasks (admins); --list shows what is in force',
  options: { agent: { type: 'string' }, reason: { type: 'string' }, list: { type: 'boolean' }, ...listOptions },
  async run(ctx) {
    const f = ctx.flags;
    const client = ctx.client();
    if (f.bool('list')) {
      if (f.str('agent')) f.fail('--list takes no --agent');
      await printPage(
        ctx,
        (page) => client.listQuarantines(page),
        (out, items: Quarantine[]) =>
          out.table(
            ['PATTERN', 'REASON', 'BY', 'SINCE'],
            items.map((q) => [q.pattern, q.reason, q.by, q.at]),
          ),
      );
      return 0;
    }
    const agent = f.required('agent');
    const r = await client.quarantine(agent, f.required('reason'));
    if (ctx.json) ctx.out.json(r);
    // Like the kill switch, say what it ended: in an incident that is the first thing an operator checks.
    else
      ctx.out.line(
        `quarantined ${agent}; ended ${r.tasks ?? 0} task(s); ${r.leases ?? 0} lease(s) being revoked; ` +
          `${r.approvedLeases ?? 0} lease(s) issued under its approvals revoked`,
      );
    return 0;
  },
};

export const adminUnquarantine: Command = {
  path: ['admin', 'unquarantine'],
  usage: 'jit admin unquarantine <pattern>',
  summary: 'lift a quarantine (admins)',
  options: {},
  args: ['pattern'],
  async run(ctx) {
    const pattern = ctx.positionals[0]!;
    const r = await ctx.client().unquarantine(pattern);
    if (ctx.json) ctx.out.json(r ?? {});
    else ctx.out.line(`lifted the quarantine of ${pattern}`);
    return 0;
  },
};

export const adminRotate: Command = {
  path: ['admin', 'rotate'],
  usage: 'jit admin rotate <signing-key|aws|vault> [--immediate]',
  summary: 'rotate the signing key or a provider’s secret (admins); --immediate: a compromised signing key, old key dropped at once',
  options: { immediate: { type: 'boolean' } },
  args: ['target'],
  async run(ctx) {
    const r = await ctx.client().rotate(ctx.positionals[0]!, { immediate: ctx.flags.bool('immediate') });
    if (ctx.json) ctx.out.json(r);
    else ctx.out.line(`rotation of ${ctx.positionals[0]} accepted: ${JSON.stringify(r)}`);
    return 0;
  },
};

export const adminReloadPolicy: Command = {
  path: ['admin', 'reload-policy'],
  usage: 'jit admin reload-policy',
  summary: 'every broker instance reloads its Cedar policies (admins)',
  options: {},
  async run(ctx) {
    const r = await ctx.client().reloadPolicy();
    if (ctx.json) ctx.out.json(r);
    else ctx.out.line(`policy reload accepted: ${JSON.stringify(r)}`);
    return 0;
  },
};
