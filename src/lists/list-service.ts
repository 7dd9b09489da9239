import type { ApprovalRecord, ApprovalStatus } from '../approvals/approval-store.ts';
import type { ApprovalService } from '../approvals/approval-service.ts';
import type { Deps } from '../deps.ts';
import { IdentityPatterns } from '../identity/patterns.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import type { TaskService } from '../tasks/task-service.ts';
import type { TaskRecord, TaskStatus } from '../tasks/types.ts';
import { script } from '../redis/scripts.ts';
import type { CursorCodec } from './cursor.ts';
import { type Entry, type Pos, scanNewestFirst } from './index-scan.ts';

const forgetScript = script('index-forget');

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

/** A list index and the bucket it belongs to. */
interface Index {
  bucket: number;
  key: string;
}

/**
 * How many index entries one page may look at before it answers with what it has (filters that match
 * little); the cursor resumes where the page stopped, so nothing is lost, only spread over calls.
 */
const SCAN_BUDGET = 5000;

/**
 * The authorization-filtered, cursor-paginated lists of contract section 3:
 * each caller sees only what it may read, newest first. A page may be
 * shorter than `limit` when filters match little (the scan per page is
 * bounded); `nextCursor` says whether there is more.
 *
 * A list reads only indexes of what the caller may see: its own per-identity
 * indexes (tasks it is the agent or the opener of, approvals of those
 * tasks), or the bucket-wide ones for admins and approvers. So a caller with
 * nothing to see costs one empty range read per index and bucket, whatever
 * everyone else has. Entries whose record has left Redis are dropped from
 * their index as a read comes across them.
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

  /**
   * One page of a short list held whole in memory (the quarantines in force), ordered by `key`:
   * the cursor is the last key served, so an entry added or lifted between pages shifts nothing.
   */
  pageOf<T>(
    who: WorkloadIdentity,
    list: string,
    all: readonly T[],
    key: (t: T) => string,
    q: { limit: number; cursor?: string | undefined },
  ): Page<T> {
    const bind = { caller: who.id, filters: { list } };
    const after = q.cursor ? this.cursors.decode<string>(q.cursor, bind) : undefined;
    const sorted = [...all].sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
    const rest = after === undefined ? sorted : sorted.filter((t) => key(t) > after);
    const items = rest.slice(0, q.limit);
    const more = rest.length > items.length;
    return { items, nextCursor: more ? this.cursors.encode(key(items[items.length - 1]!), bind) : null };
  }

  /** Admins see all tasks; orchestrators the tasks they opened; agents their own. */
  async tasksFor(who: WorkloadIdentity, q: TaskQuery): Promise<Page<TaskRecord>> {
    const { keys, patterns } = this.deps;
    const filters = { status: q.status, agent: q.agent, tenant: q.tenant, orchestrator: q.orchestrator };
    const bind = { caller: who.id, filters: { list: 'tasks', ...filters } };
    const start = q.cursor ? this.cursors.decode<Pos>(q.cursor, bind) : undefined;
    const buckets = Array.from({ length: keys.buckets }, (_, b) => b);
    const exactAgent = q.agent && !q.agent.endsWith('/*') ? q.agent : undefined;
    let indexes: Index[];
    if (!patterns.admins.matches(who.id))
      indexes = buckets.flatMap((b) => [
        { bucket: b, key: keys.tasksByAgent(b, who.id) },
        { bucket: b, key: keys.tasksByOpener(b, who.id) },
      ]);
    else if (exactAgent) indexes = buckets.map((b) => ({ bucket: b, key: keys.tasksByAgent(b, exactAgent) }));
    else if (q.orchestrator) indexes = buckets.map((b) => ({ bucket: b, key: keys.tasksByOpener(b, q.orchestrator!) }));
    else indexes = buckets.map((b) => ({ bucket: b, key: keys.tasksByTime(b) }));
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
      'task:',
      (ids) => this.deps.tasks.getMany(ids),
      (t) => t.taskId,
      keep,
    );
  }

  /** Approvers (and admins) see every approval; agents and orchestrators those of their tasks. */
  async approvalsFor(who: WorkloadIdentity, q: ApprovalQuery): Promise<Page<ApprovalRecord>> {
    const { keys, patterns } = this.deps;
    const bind = { caller: who.id, filters: { list: 'approvals', status: q.status } };
    const start = q.cursor ? this.cursors.decode<Pos>(q.cursor, bind) : undefined;
    const everything = patterns.approvers.matches(who.id) || patterns.admins.matches(who.id);
    const indexes = Array.from({ length: keys.buckets }, (_, b) => ({
      bucket: b,
      key: everything ? keys.approvals(b) : keys.approvalsOf(b, who.id),
    }));
    const now = this.deps.clock.now();
    return this.page(
      indexes,
      start,
      q.limit,
      bind,
      'approval:',
      (ids) => this.deps.approvals.getMany(ids, now),
      (r) => r.approvalId,
      (r) => this.approvals.mayRead(who, r) && (!q.status || r.status === q.status),
    );
  }

  /** One page: walk the indexes newest first, load in batches, keep what passes, stop at `limit` or the scan budget. */
  private async page<T>(
    indexes: Index[],
    start: Pos | undefined,
    limit: number,
    bind: { caller: string; filters: Record<string, unknown> },
    kind: 'task:' | 'approval:',
    load: (ids: string[]) => Promise<T[]>,
    idOf: (t: T) => string,
    keep: (t: T) => boolean,
  ): Promise<Page<T>> {
    const items: T[] = [];
    let last: Pos | undefined;
    let scanned = 0;
    let more = false;
    const baseOf = new Map(indexes.map((i) => [i.key, this.deps.keys.base(i.bucket)]));
    const it = scanNewestFirst(
      this.deps.redis,
      indexes.map((i) => i.key),
      start,
      Math.min(200, limit + 10),
    )[Symbol.asyncIterator]();
    const hasNext = async () => !(await it.next()).done;
    const size = Math.max(20, Math.min(200, limit));
    outer: for (;;) {
      const batch: Entry[] = [];
      while (batch.length < size && scanned < SCAN_BUDGET) {
        const n = await it.next();
        if (n.done) break;
        batch.push(n.value);
        scanned += 1;
      }
      if (batch.length === 0) break;
      const found = new Map((await load(batch.map((p) => p.id))).map((t) => [idOf(t), t]));
      await this.forget(
        kind,
        baseOf,
        batch.filter((p) => !found.has(p.id)),
      );
      for (let i = 0; i < batch.length; i++) {
        const p = batch[i]!;
        last = { s: p.s, id: p.id };
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

  /** Drops index entries whose record has expired (see index-forget.lua); a failure only leaves them for the next read. */
  private async forget(kind: 'task:' | 'approval:', baseOf: Map<string, string>, gone: Entry[]): Promise<void> {
    const byKey = new Map<string, Entry[]>();
    for (const e of gone) byKey.set(e.key, [...(byKey.get(e.key) ?? []), e]);
    await Promise.all(
      [...byKey].map(async ([key, entries]) => {
        try {
          await forgetScript.run(this.deps.redis, [key], [baseOf.get(key)!, kind, ...entries.flatMap((e) => [e.id, e.s])]);
        } catch (err) {
          this.deps.logger.warn({ err: (err as Error).message }, 'dropping expired list-index entries failed');
        }
      }),
    );
  }
}
