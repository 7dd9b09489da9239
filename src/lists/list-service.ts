import type { ApprovalRecord, ApprovalStatus } from '../approvals/approval-store.ts';
import type { ApprovalService } from '../approvals/approval-service.ts';
import type { Deps } from '../deps.ts';
import { IdentityPatterns } from '../identity/patterns.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import type { TaskService } from '../tasks/task-service.ts';
import type { TaskRecord, TaskStatus } from '../tasks/types.ts';
import type { CursorCodec } from './cursor.ts';
import { type Pos, scanNewestFirst } from './index-scan.ts';

/** A page of a list (contract section 3): `nextCursor` is null on the last page. */
export interface Page<T> {
  items: T[];
  nextCursor: string | null;
}

export interface TaskQuery {
  status?: TaskStatus | undefined;
  agent?: string | undefined;
  tenant?: string | undefined;
  orchestrator?: string | undefined;
  limit: number;
  cursor?: string | undefined;
}

export interface ApprovalQuery {
  status?: ApprovalStatus | undefined;
  limit: number;
  cursor?: string | undefined;
}

/** How many index entries one page may look at before it answers with what it has (filters that match little). */
const SCAN_BUDGET = 5000;

/**
 * The authorization-filtered, cursor-paginated lists of contract section 3:
 * each caller sees only what it may read, newest first. A page may be
 * shorter than `limit` when filters match little (the scan per page is
 * bounded); `nextCursor` says whether there is more.
 */
export class ListService {
  private readonly deps: Deps;
  private readonly cursors: CursorCodec;
  private readonly tasks: TaskService;
  private readonly approvals: ApprovalService;

  constructor(deps: Deps, cursors: CursorCodec, tasks: TaskService, approvals: ApprovalService) {
    this.deps = deps;
    this.cursors = cursors;
    this.tasks = tasks;
    this.approvals = approvals;
  }

  /** Admins see all tasks; orchestrators the tasks they opened; agents their own. */
  async tasksFor(who: WorkloadIdentity, q: TaskQuery): Promise<Page<TaskRecord>> {
    const { keys, patterns } = this.deps;
    const filters = { status: q.status, agent: q.agent, tenant: q.tenant, orchestrator: q.orchestrator };
    const bind = { caller: who.id, filters: { list: 'tasks', ...filters } };
    const start = q.cursor ? this.cursors.decode<Pos>(q.cursor, bind) : undefined;
    const buckets = Array.from({ length: keys.buckets }, (_, b) => b);
    const exactAgent = q.agent && !q.agent.endsWith('/*') ? q.agent : undefined;
    let indexes: string[];
    if (!patterns.admins.matches(who.id)) indexes = buckets.flatMap((b) => [keys.tasksByAgent(b, who.id), keys.tasksByOpener(b, who.id)]);
    else if (exactAgent) indexes = buckets.map((b) => keys.tasksByAgent(b, exactAgent));
    else if (q.orchestrator) indexes = buckets.map((b) => keys.tasksByOpener(b, q.orchestrator!));
    else indexes = buckets.map((b) => keys.tasksByTime(b));
    const agentMatch = q.agent ? new IdentityPatterns([q.agent]) : undefined;
    const keep = (t: TaskRecord) =>
      this.tasks.mayRead(who, t) &&
      (!q.status || t.status === q.status) &&
      (!agentMatch || agentMatch.matches(t.agent)) &&
      (!q.tenant || t.tenant === q.tenant) &&
      (!q.orchestrator || t.openedBy === q.orchestrator);
    return this.page(
      indexes,
      start,
      q.limit,
      bind,
      (ids) => this.deps.tasks.getMany(ids),
      (t) => t.taskId,
      keep,
    );
  }

  /** Approvers (and admins) see every approval; agents and orchestrators those of their tasks. */
  async approvalsFor(who: WorkloadIdentity, q: ApprovalQuery): Promise<Page<ApprovalRecord>> {
    const { keys } = this.deps;
    const bind = { caller: who.id, filters: { list: 'approvals', status: q.status } };
    const start = q.cursor ? this.cursors.decode<Pos>(q.cursor, bind) : undefined;
    const indexes = Array.from({ length: keys.buckets }, (_, b) => keys.approvals(b));
    const now = this.deps.clock.now();
    return this.page(
      indexes,
      start,
      q.limit,
      bind,
      (ids) => this.deps.approvals.getMany(ids, now),
      (r) => r.approvalId,
      (r) => this.approvals.mayRead(who, r) && (!q.status || r.status === q.status),
    );
  }

  /** One page: walk the indexes newest first, load in batches, keep what passes, stop at `limit` or the scan budget. */
  private async page<T>(
    indexes: string[],
    start: Pos | undefined,
    limit: number,
    bind: { caller: string; filters: Record<string, unknown> },
    load: (ids: string[]) => Promise<T[]>,
    idOf: (t: T) => string,
    keep: (t: T) => boolean,
  ): Promise<Page<T>> {
    const items: T[] = [];
    let last: Pos | undefined;
    let scanned = 0;
    let more = false;
    const it = scanNewestFirst(this.deps.redis, indexes, start, Math.min(200, limit + 10))[Symbol.asyncIterator]();
    const hasNext = async () => !(await it.next()).done;
    const size = Math.max(20, Math.min(200, limit));
    outer: for (;;) {
      const batch: Pos[] = [];
      while (batch.length < size && scanned < SCAN_BUDGET) {
        const n = await it.next();
        if (n.done) break;
        batch.push(n.value);
        scanned += 1;
      }
      if (batch.length === 0) break;
      const found = new Map((await load(batch.map((p) => p.id))).map((t) => [idOf(t), t]));
      for (let i = 0; i < batch.length; i++) {
        const p = batch[i]!;
        last = p;
        const t = found.get(p.id);
        if (t && keep(t)) items.push(t);
        if (items.length === limit) {
          more = i < batch.length - 1 || (await hasNext());
          break outer;
        }
      }
      if (scanned >= SCAN_BUDGET) {
        more = await hasNext();
        break;
      }
    }
    return { items, nextCursor: more && last ? this.cursors.encode(last, bind) : null };
  }
}
