import type { Grant, Lease, OpenTaskRequest, Task, TaskDetail } from '../../client/types.ts';
import { parseGrant, parseGrantJson, parseLabels } from '../args.ts';
import type { Command, Ctx } from '../command.ts';
import { grantText, type Out, when } from '../output.ts';
import { listOptions, printPage } from './paging.ts';

export const taskOpen: Command = {
  path: ['task', 'open'],
  usage:
    'jit task open --agent A --tenant T --purpose P --ttl S --grant role[:scope,scope][@maxTtl] [--grant ...] ' +
    '[--grant-json JSON] [--task ID] [--label k=v] [--parent ID]',
  summary:
    'open a task (orchestrators), or a sub-task with --parent (the parent task’s agent; --tenant and --purpose ' +
    'then default to the parent’s); prints the task id',
  options: {
    agent: { type: 'string' },
    tenant: { type: 'string' },
    purpose: { type: 'string' },
    ttl: { type: 'string' },
    grant: { type: 'string', multiple: true },
    'grant-json': { type: 'string', multiple: true },
    task: { type: 'string' },
    label: { type: 'string', multiple: true },
    parent: { type: 'string' },
  },
  async run(ctx) {
    const { flags } = ctx;
    const parent = flags.str('parent');
    const grants: Grant[] = [...flags.list('grant').map(parseGrant), ...flags.list('grant-json').flatMap(parseGrantJson)];
    if (grants.length === 0) flags.fail('at least one --grant or --grant-json is required');
    // A sub-task inherits its parent's tenant and purpose when they are left out (and may only repeat them).
    const tenant = parent ? flags.str('tenant') : flags.required('tenant');
    const purpose = parent ? flags.str('purpose') : flags.required('purpose');
    const agent = flags.required('agent');
    // Identities are SPIFFE IDs or <issuer>#<sub>. A task for `support` or `/agent/support` (the short form that
    // `jit dev token --sub` takes) opened fine and could never be used: its agent got 403 not_task_agent.
    if (!agent.startsWith('spiffe://') && !agent.includes('#')) {
      flags.fail(
        `--agent ${JSON.stringify(agent)} is not an identity: give a SPIFFE ID (spiffe://dev.local/agent/support) or <issuer>#<sub>`,
      );
    }
    const req: OpenTaskRequest = {
      ...(flags.str('task') ? { taskId: flags.str('task') } : {}),
      ...(parent ? { parentTaskId: parent } : {}),
      agent,
      ...(tenant ? { tenant } : {}),
      ...(purpose ? { purpose } : {}),
      ttlSeconds: flags.seconds('ttl') ?? flags.fail('--ttl is required'),
      grants,
    };
    const labels = parseLabels(flags.list('label'));
    if (labels) req.labels = labels;
    const task = await ctx.client().openTask(req);
    if (ctx.json) ctx.out.json(task);
    else {
      ctx.out.line(task.taskId);
      ctx.out.note(`opened task ${task.taskId} for ${task.agent} until ${task.expiresAt}; grants ${task.grants.map(grantText).join(' ')}`);
    }
    return 0;
  },
};

export const taskShow: Command = {
  path: ['task', 'show'],
  usage: 'jit task show <taskId>',
  summary: 'a task with its leases (its orchestrator, its agent, admins)',
  options: {},
  args: ['taskId'],
  async run(ctx) {
    const task = await ctx.client().getTask(ctx.positionals[0]!);
    if (ctx.json) ctx.out.json(task);
    else printTask(ctx.out, task);
    return 0;
  },
};

export const taskComplete: Command = {
  path: ['task', 'complete'],
  usage: 'jit task complete <taskId>',
  summary: 'end a task: every lease of it is revoked upstream (idempotent)',
  options: {},
  args: ['taskId'],
  async run(ctx) {
    const r = await ctx.client().completeTask(ctx.positionals[0]!);
    if (ctx.json) ctx.out.json(r);
    else ctx.out.line(`task ${r.taskId} ${r.status}; ${r.leases} lease(s) being revoked`);
    return 0;
  },
};

export const taskList: Command = {
  path: ['task', 'list'],
  usage: 'jit task list [--status open|completed|expired] [--agent A] [--tenant T] [--orchestrator O] [--limit N] [--cursor C] [--all]',
  summary: 'tasks you may read, newest first',
  options: {
    status: { type: 'string' },
    agent: { type: 'string' },
    tenant: { type: 'string' },
    orchestrator: { type: 'string' },
    ...listOptions,
  },
  async run(ctx) {
    const f = ctx.flags;
    const filter = {
      status: f.oneOf<Task['status']>('status', ['open', 'completed', 'expired']),
      agent: f.str('agent'),
      tenant: f.str('tenant'),
      orchestrator: f.str('orchestrator'),
    };
    const client = ctx.client();
    await printPage(
      ctx,
      (page) => client.listTasks({ ...filter, ...page }),
      (out, items: Task[]) =>
        out.table(
          ['TASK', 'STATUS', 'AGENT', 'TENANT', 'EXPIRES', 'GRANTS'],
          items.map((t) => [t.taskId, t.status, t.agent, t.tenant, t.expiresAt, t.grants?.map((g) => g.role).join(',')]),
        ),
    );
    return 0;
  },
};

export const taskLeases: Command = {
  path: ['task', 'leases'],
  usage: 'jit task leases <taskId> [--tree] [--limit N] [--cursor C] [--all]',
  summary: "a task's leases in issue order (with --tree, its sub-tasks' too), paged",
  options: { tree: { type: 'boolean' }, ...listOptions },
  args: ['taskId'],
  async run(ctx) {
    const client = ctx.client();
    const tree = ctx.flags.bool('tree');
    await printPage(
      ctx,
      (page) => client.taskLeases(ctx.positionals[0]!, { ...page, ...(tree ? { tree } : {}) }),
      (out, items: Lease[]) => leaseTable(out, items, tree),
    );
    return 0;
  },
};

export const taskEvidence: Command = {
  path: ['task', 'evidence'],
  usage: 'jit task evidence <taskId> [--limit N] [--cursor C] [--tree-cursor C]',
  summary: 'the task, its sub-tasks, leases and audit records, and whether their hash chain is intact',
  options: { ...listOptions, 'tree-cursor': { type: 'string' } },
  args: ['taskId'],
  async run(ctx: Ctx) {
    const limit = ctx.flags.int('limit', 1, 500);
    const cursor = ctx.flags.str('cursor');
    const treeCursor = ctx.flags.str('tree-cursor');
    const ev = await ctx.client().taskEvidence(ctx.positionals[0]!, { limit, cursor, ...(treeCursor ? { treeCursor } : {}) });
    if (ctx.json) {
      ctx.out.json(ev);
      return 0;
    }
    printTask(ctx.out, { ...ev.task, leases: ev.leases ?? [], leasesNextCursor: ev.leasesNextCursor ?? null }, true);
    const records = ev.audit?.items ?? [];
    ctx.out.line();
    ctx.out.table(
      ['SEQ', 'TIME', 'ACTOR', 'ACTION', 'DECISION', 'REASON'],
      records.map((r) => [r.seq, r.time, r.actor, r.action, r.decision, r.reason]),
    );
    ctx.out.line();
    ctx.out.line(`audit chain: ${ev.chain}`);
    const subtasks = (ev.tree ?? []).filter((t) => t.taskId !== ev.task.taskId);
    if (subtasks.length > 0) ctx.out.note(`sub-tasks: ${subtasks.map((t) => `${t.taskId} (${t.status})`).join(', ')}`);
    if (ev.treeNextCursor) ctx.out.note(`more sub-tasks: --tree-cursor ${ev.treeNextCursor}`);
    if (ev.audit?.nextCursor) ctx.out.note(`more records: --cursor ${ev.audit.nextCursor}`);
    return ev.chain === 'intact' ? 0 : 1;
  },
};

function printTask(out: Out, t: TaskDetail, tree = false): void {
  out.fields([
    ['task', t.taskId],
    ['status', t.status],
    ['agent', t.agent],
    ['tenant', t.tenant],
    ['purpose', t.purpose],
    ['parent', t.parentTaskId],
    ['expires', when(t.expiresAt, Date.now(), t.status !== 'open')],
    ['ended', t.endedAt],
    ['grants', t.grants.map(grantText).join(' ')],
    [
      'labels',
      Object.entries(t.labels ?? {})
        .map(([k, v]) => `${k}=${labelValue(v)}`)
        .join(' '),
    ],
  ]);
  if (t.leases.length > 0) {
    out.line();
    leaseTable(out, t.leases, tree);
  }
  if (t.leasesNextCursor)
    out.note(`more leases: jit task leases ${t.taskId}${tree ? ' --tree' : ''} --cursor ${t.leasesNextCursor} (or --all)`);
}

/**
 * A label value as `k=v` shows it: quoted (JSON) when it holds a space, `=`, a quote or a backslash, or is empty, so
 * that `note: "x env=prod"` reads `note="x env=prod"`, not as a second label `env=prod` beside the real one.
 */
function labelValue(v: string): string {
  return /^[^\s="\\]+$/.test(v) ? v : JSON.stringify(v);
}

function leaseTable(out: Out, leases: Lease[], withTask: boolean): void {
  out.table(
    ['LEASE', ...(withTask ? ['TASK'] : []), 'ROLE', 'STATUS', 'EXPIRES', 'REASON'],
    leases.map((l) => [
      l.leaseId,
      ...(withTask ? [l.taskId] : []),
      l.role,
      l.status,
      l.revokedAt ? `revoked ${l.revokedAt}` : l.expiresAt,
      l.reason,
    ]),
  );
}
