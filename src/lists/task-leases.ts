import type { Deps } from '../deps.ts';
import { badRequest } from '../errors.ts';
import type { LeaseRecord } from '../leases/types.ts';
import { READS_IN_FLIGHT } from '../redis/in-rounds.ts';
import type { CursorCodec } from './cursor.ts';
import type { Page } from './list-service.ts';
import { PAGE_BYTES, pageBytes } from './page-bytes.ts';

/**
 * How many leases `GET /v1/tasks/{id}` and its evidence carry; the rest are paged through
 * `GET /v1/tasks/{id}/leases`. A task may issue `tasks.maxLeasesTotal` (10,000) leases over its life
 * and a tree 51 times that: read whole, one caller's reads held Redis for seconds and answered
 * megabytes, and ten of them made the broker answer 503 to everyone.
 */
export const EMBEDDED_LEASES = 100;

/**
 * How many bytes of leases (as JSON) `GET /v1/tasks/{id}` carries, at least one lease; `leasesNextCursor` goes on
 * from there. The read costs one point of its caller's rate limit (src/http/read-cost.ts), as any cheap read, but
 * its leases stopped only at PAGE_BYTES, a list page's worth (which a list page pays 5 points for): a task of the
 * largest shape the API accepts (leases of 100 scopes of ~250 characters) answered ~2 MB for ~30-70 ms of CPU, and
 * one agent at its 50 requests a second kept more than a core busy. A quarter of a page, as an evidence page
 * holds of its leases (src/lists/audit-query.ts EVIDENCE_PART_BYTES): ~20 such leases, or the first 100 of
 * ordinary ones (~300 bytes each), as before.
 */
export const EMBEDDED_LEASE_BYTES = PAGE_BYTES / 4;

/**
 * The most tasks' lease indexes a tree page reads at once: each answers at most the page's `limit + 1`
 * ids, so a batch reads at most this many times the page in ids (ids only, no records), in one round trip.
 */
const TASKS_AT_ONCE = 16;

/**
 * The most lease records a page reads at once (within READS_IN_FLIGHT). A page stops at its byte cap, and each
 * round after the first reads only as many as the rest of the cap holds at the page's average record so far, so
 * it reads about what it answers: a round of 50 of the largest records is ~1.3 MB, and a task read (a ~0.5 MB cap)
 * read that much from Redis to answer ~20 of them.
 */
const LEASE_READS = Math.min(50, READS_IN_FLIGHT);
/**
 * About the largest lease record as JSON: its scopes, up to 100 of 256 characters, and its other fields. A page's
 * first round reads at most as many records as its cap holds of these (at least one): LEASE_READS for a list page.
 */
const LEASE_BYTES_LARGEST = 26_500;

/** A page's last lease: its task (in a tree read), id and issue time. */
interface Position {
  t: string;
  id: string;
  at: number;
}

function isPosition(p: unknown): p is Position {
  const q = p as Position | null;
  return typeof q === 'object' && q !== null && typeof q.t === 'string' && typeof q.id === 'string' && Number.isFinite(q.at);
}

/**
 * A task's leases (or its tree's: the task first, then its sub-tasks in opening order), each task's in
 * issue order, in pages whose cost is the page, read from each task's lease index.
 */
export class TaskLeaseReader {
  private readonly deps: Deps;
  private readonly cursors: CursorCodec;

  constructor(deps: Deps, cursors: CursorCodec) {
    this.deps = deps;
    this.cursors = cursors;
  }

  /**
   * One page. `taskIds`: the task alone, or its subtree root first (`tree`); the caller has checked
   * that `caller` may read the root. The cursor is bound to the caller, the root and `tree`. The page stops
   * once it holds `maxBytes` of records (at least one; a list page: what its points pay for, pageBytes);
   * `bytes` is what it holds.
   */
  async page(
    caller: string,
    taskIds: readonly string[],
    tree: boolean,
    limit: number,
    cursor?: string,
    maxBytes = pageBytes(limit),
  ): Promise<Page<LeaseRecord> & { bytes: number }> {
    const bind = { caller, filters: { list: 'task-leases', taskId: taskIds[0], tree } };
    const from = cursor === undefined ? undefined : this.cursors.decode<unknown>(cursor, bind);
    if (from !== undefined && !isPosition(from))
      throw badRequest('invalid_cursor', 'The cursor is malformed, expired, or for another caller or other filters.');
    let i = from ? taskIds.indexOf(from.t) : 0;
    // A tree only grows while its root's records exist, so a task of the cursor that is gone means the tree was purged.
    if (i < 0) throw badRequest('invalid_cursor', 'The cursor is malformed, expired, or for another caller or other filters.');
    // One more than asked for says whether another page follows.
    const got: Position[] = [];
    let after = from;
    // Tasks whose indexes turn out empty are read more at once (1, 2, 4, ... TASKS_AT_ONCE): a tree of tasks
    // without leases cost a round trip per task, one after another (tasks.maxSubtasks + 1), while a task that
    // has leases is still read alone, for no more ids than the page needs.
    for (let at = 1; i < taskIds.length && got.length <= limit; ) {
      const want = limit + 1 - got.length;
      const batch = taskIds.slice(i, i + at);
      const pages = await Promise.all(batch.map((t) => this.deps.tasks.leasePage(t, after?.t === t ? after : undefined, want)));
      for (const [j, t] of batch.entries()) for (const p of pages[j]!) got.push({ t, ...p });
      if (limit + 1 - got.length === want) at = Math.min(at * 2, TASKS_AT_ONCE);
      i += batch.length;
      after = undefined;
    }
    const shown = got.slice(0, limit);
    // A lease whose record left Redis (retention) is skipped: the page may hold fewer than `limit`.
    // Records are read in rounds (at most LEASE_READS, sized by what is left of maxBytes), and the page stops once
    // it holds maxBytes of them (at least one), as task and approval list pages do: a lease holds its scopes (up to ~26 KB within every bound),
    // so 500 of them were ~13 MB read from Redis and answered at once.
    const items: LeaseRecord[] = [];
    let bytes = 0;
    let last: Position | undefined;
    let n = 0;
    let reads = Math.min(LEASE_READS, Math.max(1, Math.floor(maxBytes / LEASE_BYTES_LARGEST)));
    while (n < shown.length && bytes < maxBytes) {
      const round = shown.slice(n, n + reads);
      const found = new Map((await this.deps.leases.getMany(round.map((p) => p.id))).map((l) => [l.leaseId, l]));
      for (const p of round) {
        n += 1;
        last = p;
        const l = found.get(p.id);
        if (!l) continue;
        items.push(l);
        bytes += JSON.stringify(l).length;
        if (bytes >= maxBytes) break;
      }
      // The next round: what the rest of the cap holds at this page's average record (all of LEASE_READS while none was found).
      if (items.length > 0) reads = Math.min(LEASE_READS, Math.max(1, Math.ceil((maxBytes - bytes) / (bytes / items.length))));
      else reads = LEASE_READS;
    }
    const more = n < shown.length || got.length > limit;
    return { items, nextCursor: more && last ? this.cursors.encode(last, bind) : null, bytes };
  }
}
