import type { ApprovalRecord, ApprovalStatus } from '../approvals/approval-store.ts';
import type { ApprovalService } from '../approvals/approval-service.ts';
import { settleApprovals } from '../approvals/approver-gone.ts';
import type { Deps } from '../deps.ts';
import { IdentityPatterns } from '../identity/patterns.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import type { TaskHead } from '../tasks/task-store.ts';
import type { TaskService } from '../tasks/task-service.ts';
import { nfc } from '../tasks/nfc.ts';
import type { TaskRecord, TaskStatus } from '../tasks/types.ts';
import { script } from '../redis/scripts.ts';
import type { CursorCodec } from './cursor.ts';
import { type Entry, type Pos, scanNewestFirst } from './index-scan.ts';
import { firstRound, pageBytes, roundSize } from './page-bytes.ts';

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

/** How many kept records a page reads whole at once at most (see pageBytes). */
const FULL_READS = 50;

/**
 * About the largest task record as JSON (100 scopes of 256 characters, 32 labels of 256, a 1,000-character purpose)
 * and the largest approval (its scopes and its task's purpose): a page's first round of whole records reads as many
 * as its byte cap holds of these, so a page of ~0.5 MB reads ~0.5 MB, not FULL_READS (~1.8 MB) of them.
 */
const TASK_BYTES_LARGEST = 37_500;
const APPROVAL_BYTES_LARGEST = 28_000;

/**
 * A list whose heads are its whole records (approvals) stops scanning, as at SCAN_BUDGET, once it has read this many
 * times its byte cap of them: a filter that matches little (`?status=pending`) read up to SCAN_BUDGET whole
 * records, ~140 MB of the largest ones, for one page.
 */
const WHOLE_SCAN_PAGES = 4;

/**
 * The authorization-filtered, cursor-paginated lists of contract section 3:
 * each caller sees only what it may read, newest first. A page may be
 * shorter than `limit` when filters match little (the scan per page is
 * bounded); `nextCursor` says whether there is more.
 *
 * A list reads only indexes of what the caller may see: its own per-identity
 * indexes (tasks it is the agent or the opener of, approvals of those
 * tasks and of the sub-tasks below them), or the bucket-wide ones for admins and approvers. So a caller with
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
    // Only the small fields the filters need are read for every scanned task; the record only for those kept.
    const keep = (t: TaskHead) =>
      this.tasks.mayRead(who, t) &&
      (!q.status || t.status === q.status) &&
      (!agentMatch || agentMatch.matches(t.agent)) &&
      // A task stored before tenants were taken in NFC still matches its tenant (src/tasks/nfc.ts).
      (!q.tenant || nfc(t.tenant) === q.tenant) &&
      (!q.orchestrator || t.openedBy === q.orchestrator);
    return this.page<TaskHead, TaskRecord>(indexes, start, q.limit, bind, 'task:', {
      heads: (ids) => this.deps.tasks.headsOf(ids),
      keep,
      full: (ids) => this.deps.tasks.getMany(ids),
      idOf: (t) => t.taskId,
      largest: TASK_BYTES_LARGEST,
    });
  }

  /** Approvers (and admins) see every approval; agents and orchestrators those of their tasks and of the sub-tasks below. */
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
    // An approval record is small: its heads are the whole records, read once.
    const read = new Map<string, ApprovalRecord>();
    return this.page<ApprovalRecord, ApprovalRecord>(indexes, start, q.limit, bind, 'approval:', {
      heads: async (ids) => {
        const records = await this.deps.approvals.getMany(ids, now);
        // As they stand: one whose approver was quarantined or removed since reads (and filters as) `expired`.
        await settleApprovals(this.deps, records);
        for (const r of records) read.set(r.approvalId, r);
        return ids.map((id) => read.get(id));
      },
      keep: (r) => this.approvals.mayRead(who, r) && (!q.status || r.status === q.status),
      full: async (ids) => ids.flatMap((id) => read.get(id) ?? []),
      idOf: (r) => r.approvalId,
      largest: APPROVAL_BYTES_LARGEST,
      headsWhole: true,
    });
  }

  /**
   * One page: walk the indexes newest first, read each batch's heads (`heads`: what `keep` needs, small; or the
   * whole records, `headsWhole`), read whole (`full`) only what is kept, stop at `limit`, the scan budget or the
   * byte cap (pageBytes: ~0.5 MB a point the page costs, at least one item). Whole records are read in rounds sized
   * by what is left of the cap (`largest`: about the largest record, for the first round), so a page reads about
   * what it answers.
   */
  private async page<H, T extends H>(
    indexes: Index[],
    start: Pos | undefined,
    limit: number,
    bind: { caller: string; filters: Record<string, unknown> },
    kind: 'task:' | 'approval:',
    src: {
      heads: (ids: string[]) => Promise<(H | undefined)[]>;
      keep: (h: H) => boolean;
      full: (ids: string[]) => Promise<T[]>;
      idOf: (t: T) => string;
      largest: number;
      headsWhole?: boolean;
    },
  ): Promise<Page<T>> {
    const items: T[] = [];
    let last: Pos | undefined;
    let scanned = 0;
    let bytes = 0;
    let more = false;
    const maxBytes = pageBytes(limit);
    // Whole heads read so far (headsWhole), against WHOLE_SCAN_PAGES times the cap.
    let headBytes = 0;
    const scanBytes = src.headsWhole ? WHOLE_SCAN_PAGES * maxBytes : Number.POSITIVE_INFINITY;
    const budgetLeft = () => scanned < SCAN_BUDGET && headBytes < scanBytes;
    const baseOf = new Map(indexes.map((i) => [i.key, this.deps.keys.base(i.bucket)]));
    const it = scanNewestFirst(
      this.deps.redis,
      indexes.map((i) => i.key),
      start,
      Math.min(200, limit + 10),
    )[Symbol.asyncIterator]();
    const hasNext = async () => !(await it.next()).done;
    const size = Math.max(20, Math.min(200, limit));
    /**
     * After a full page: whether anything the filters keep is left (the contract's "nextCursor null on the last
     * page"), not merely any entry. Reads heads only, within what is left of the scan budget; past it, unknown
     * (a cursor, whose page may be empty).
     */
    /** The next `n` entries of the index, within the scan budget (fewer at its end or the budget's). */
    const take = async (n: number): Promise<Entry[]> => {
      const batch: Entry[] = [];
      while (batch.length < n && scanned < SCAN_BUDGET) {
        const e = await it.next();
        if (e.done) break;
        batch.push(e.value);
        scanned += 1;
      }
      return batch;
    };
    /** Heads of `ids`; whole ones counted against the scan's byte budget. */
    const headsOf = async (ids: string[]) => {
      const heads = await src.heads(ids);
      if (src.headsWhole) for (const h of heads) if (h !== undefined) headBytes += JSON.stringify(h).length;
      return heads;
    };
    /** Whole records (heads or kept) read in one round: what is left of the cap at the page's average so far. */
    const round = (max: number) =>
      items.length > 0 ? roundSize(maxBytes, bytes, items.length, max) : firstRound(maxBytes, src.largest, max);
    const moreKept = async (): Promise<boolean> => {
      // Whole heads 1, 2, 4, ... at a time: a full page reads about as many as it takes to find one kept.
      for (let n = src.headsWhole ? 1 : size; ; n = Math.min(size, n * 2)) {
        if (!budgetLeft()) return hasNext();
        const ahead = await take(n);
        if (ahead.length === 0) return false;
        const heads = await headsOf(ahead.map((p) => p.id));
        if (heads.some((h) => h !== undefined && src.keep(h))) return true;
      }
    };
    outer: for (;;) {
      const batch = await take(src.headsWhole ? round(size) : size);
      if (batch.length === 0) break;
      const heads = await headsOf(batch.map((p) => p.id));
      await this.forget(
        kind,
        baseOf,
        batch.filter((_, i) => heads[i] === undefined),
      );
      const picked = batch.flatMap((_, i) => (heads[i] !== undefined && src.keep(heads[i]) ? [i] : []));
      // Read whole no more at a time than the page still has room for, in items and in bytes, so a page stopping
      // at its byte cap has read little more than it answers.
      for (let k = 0; k < picked.length; ) {
        const chunk = picked.slice(k, k + round(Math.min(FULL_READS, limit - items.length)));
        k += chunk.length;
        const found = new Map((await src.full(chunk.map((i) => batch[i]!.id))).map((t) => [src.idOf(t), t]));
        for (const i of chunk) {
          const p = batch[i]!;
          last = { s: p.s, id: p.id };
          // Gone or changed between the two reads: left out (a later read drops a gone one's index entry).
          const t = found.get(p.id);
          if (!t || !src.keep(t)) continue;
          items.push(t);
          bytes += JSON.stringify(t).length;
          if (items.length === limit || bytes >= maxBytes) {
            more = picked.some((j) => j > i) || (await moreKept());
            break outer;
          }
        }
      }
      const end = batch[batch.length - 1]!;
      last = { s: end.s, id: end.id };
      if (!budgetLeft()) {
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
