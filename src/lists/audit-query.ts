import { TIME_SLACK_MS } from '../audit/audit-log.ts';
import { type AuditRecord, GENESIS, hashRecord } from '../audit/record.ts';
import type { Deps } from '../deps.ts';
import { badRequest } from '../errors.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import type { LeaseRecord } from '../leases/types.ts';
import { inRounds, READS_IN_FLIGHT } from '../redis/in-rounds.ts';
import type { AuditChain } from '../redis/keys.ts';
import type { TaskService } from '../tasks/task-service.ts';
import type { TaskRecord } from '../tasks/types.ts';
import type { CursorCodec } from './cursor.ts';
import { EMBEDDED_LEASES, type TaskLeaseReader } from './task-leases.ts';
import type { Page } from './list-service.ts';
import { firstRound, PAGE_BYTES, pageBytes, roundSize } from './page-bytes.ts';
import { script } from '../redis/scripts.ts';
import TinyQueue from 'tinyqueue';

const auditPageScript = script('task-audit-page');

/** A record as the audit API returns it: section 7's fields plus `seq`, `hash`, its chain and its place in the chain's stream. */
export type AuditItem = AuditRecord & { chain: AuditChain; streamId: string };

export interface AuditQuery {
  taskId?: string | undefined;
  actor?: string | undefined;
  action?: string | undefined;
  /** Epoch ms bounds (inclusive). */
  since?: number | undefined;
  until?: number | undefined;
  limit: number;
  cursor?: string | undefined;
}

/** Stream ids (`<ms>-<n>`) in order. */
function cmpId(a: string, b: string): number {
  const [am, an] = a.split('-').map(Number) as [number, number];
  const [bm, bn] = b.split('-').map(Number) as [number, number];
  return am - bm || an - bn;
}

/**
 * How many stream entries one page may read before answering with what it has: then `nextCursor`
 * resumes the scan where it stopped (possibly after a page with no items), so paging to the end
 * finds every match.
 */
const SCAN_BUDGET = 20_000;

/**
 * How many of a task's records one filtered page of `GET /v1/audit?taskId=` (`actor`, `action`, `since`,
 * `until`) reads at most, whatever its `limit`, before answering with what matched (possibly nothing);
 * its `nextCursor` goes on from the last record read, so paging to the end finds every match. Each record
 * is a stream read, and a filter that matches nothing returns nothing for them: at 500 a page cost 500
 * Redis reads for an empty answer, and the task's agent may ask that 50 times a second. One round of the
 * reads a request may have in flight (fromIds), so a filtered page is one round trip of at most 100 reads.
 */
export const FILTERED_READS = 100;

/**
 * How many stream records an admin's query over every chain holds at once at most (each chain its share,
 * at least one: the merge needs every chain's head): ~4 MB of typical records, and what a page may read
 * past the records it scans. A filter that skipped most records had every chain refilled 100 at a time:
 * ~100,000 records held at `redis.buckets: 1024`.
 */
export const AUDIT_HELD_MAX = 4096;

/**
 * How many bytes of records (as JSON) one whole evidence page holds, its three parts together, before it answers
 * with what it has: one list page's worth. Each part stopped at PAGE_BYTES on its own, so a task of the largest
 * shape the API accepts (100 scopes of ~250 characters, 32 labels, a 1,000-character purpose, and its leases and
 * credential.issue records naming every scope) answered ~4-6 MB per page, ~100-190 ms of CPU, for the flat
 * EVIDENCE_POINTS (src/http/read-cost.ts): five such pages a second kept a core busy. The tree and the leases hold
 * at most EVIDENCE_PART_BYTES each (at least one item), the audit records the rest (at least one, and at least
 * half of it): so a page is ~2 MB at most, and the cursors the answer already had go on (`treeNextCursor`,
 * `leasesNextCursor`, `audit.nextCursor`). An evidence page of ordinary records is one page, as before.
 */
export const EVIDENCE_BYTES = PAGE_BYTES;
/** The most bytes of the tree, and of the leases, on one evidence page (see EVIDENCE_BYTES). */
export const EVIDENCE_PART_BYTES = EVIDENCE_BYTES / 4;

/** How many records one round of a task's page reads at once at most (a page stops at its byte cap: see fromIds). */
const AUDIT_READS = Math.min(50, READS_IN_FLIGHT);

/**
 * About the largest audit record as JSON (a task.open naming 100 scopes of 256 characters, 32 labels and a
 * 1,000-character purpose; a credential.issue naming the scopes is ~26 KB): a page's first round reads as many as
 * its byte cap holds of these, later rounds what is left of the cap at the page's average record, so a page of
 * ~0.5 MB reads about that, not AUDIT_READS (~1.3-1.9 MB) of them.
 */
const AUDIT_BYTES_LARGEST = 37_500;

/**
 * `GET /v1/audit` and the audit part of `GET /v1/tasks/{id}/evidence`: oldest
 * first, paged forward. A task's records are read through the task's index
 * (no scan of its chain); an admin's query without `taskId` merges every
 * chain by time.
 */
export class AuditReader {
  private readonly deps: Deps;
  private readonly cursors: CursorCodec;
  private readonly tasks: TaskService;

  private readonly leaseReader: TaskLeaseReader;

  constructor(deps: Deps, cursors: CursorCodec, tasks: TaskService, leaseReader: TaskLeaseReader) {
    this.deps = deps;
    this.cursors = cursors;
    this.tasks = tasks;
    this.leaseReader = leaseReader;
  }

  async query(who: WorkloadIdentity, q: AuditQuery): Promise<Page<AuditItem>> {
    const admin = this.deps.patterns.admins.matches(who.id);
    if (!q.taskId && !admin) throw badRequest('audit_task_required', 'Only admins may query the audit log without taskId.');
    const filters = { list: 'audit', taskId: q.taskId, actor: q.actor, action: q.action, since: q.since, until: q.until };
    // Stream ids hold ms since 1970, unsigned, and Date.parse accepts years down to -271821: a `since`
    // before 1970 is clamped to 1970; an `until` before 1970 matches nothing (see allChains).
    if (q.since !== undefined && q.since < 0) q = { ...q, since: 0 };
    const bind = { caller: who.id, filters };
    const filtered = q.actor !== undefined || q.action !== undefined || q.since !== undefined || q.until !== undefined;
    // `since`/`until` bound the record's `time` (its decision, as the record says), not when it was appended:
    // a record recovered from an audit outbox is appended well after its decision, and must be found by a
    // window that covers the decision (docs/audit.md, "Querying by time").
    const keep = (r: AuditRecord, _id: string) => {
      if ((q.actor && r.actor !== q.actor) || (q.action && r.action !== q.action)) return false;
      if (q.since === undefined && q.until === undefined) return true;
      const at = Date.parse(r.time);
      return (q.since === undefined || at >= q.since) && (q.until === undefined || at <= q.until);
    };
    if (q.taskId) {
      if (!admin) await this.tasks.readable(who, q.taskId);
      // Without a cursor, a `since` is where the index is entered (its binary search), not a filter over all before it.
      const after = q.cursor
        ? this.cursors.decode<string>(q.cursor, bind)
        : q.since !== undefined && q.since > TIME_SLACK_MS
          ? `${q.since - TIME_SLACK_MS - 1}-${Number.MAX_SAFE_INTEGER}`
          : undefined;
      return this.fromIds(
        this.deps.keys.bucketOfTask(q.taskId),
        await this.taskIds([q.taskId], after, filtered ? FILTERED_READS : q.limit),
        after,
        q.limit,
        bind,
        keep,
      );
    }
    const after = q.cursor ? this.cursors.decode<Record<string, string>>(q.cursor, bind) : {};
    return this.allChains(after, q, bind, keep);
  }

  /**
   * Evidence that an agent stayed within its task: the task, its sub-task
   * tree (with each delegation chain), the tree's first leases (the rest paged
   * through `GET /v1/tasks/{id}/leases?tree=true`), the tree's
   * audit records in chain order (paged), and whether those records are
   * intact in their chain.
   */
  async evidence(
    who: WorkloadIdentity,
    taskId: string,
    page: { limit: number; cursor?: string | undefined; treeCursor?: string | undefined },
  ): Promise<{
    task: TaskRecord;
    tree: Page<TaskRecord>;
    leases: Page<LeaseRecord>;
    /** The status of each task a shown lease belongs to (whether or not its task is on this tree page). */
    leaseTaskStatus: Map<string, string | undefined>;
    audit: Page<AuditItem>;
    chain: 'intact' | 'broken';
  }> {
    const task = await this.tasks.readable(who, taskId);
    // The tree's ids a level at a time (ids only); then the records of one tree page (see treePage).
    const treeIds = await this.deps.tasks.subtree(taskId);
    // One byte budget for the whole page (EVIDENCE_BYTES): the tree and the leases a share each, the records the rest.
    const tree = await this.treePage(who.id, taskId, treeIds, page.treeCursor, EVIDENCE_PART_BYTES);
    const leases = await this.leaseReader.page(who.id, treeIds, true, EMBEDDED_LEASES, undefined, EVIDENCE_PART_BYTES);
    const leaseTasks = [...new Set(leases.items.map((l) => l.taskId))];
    const statuses = await this.deps.tasks.statusesOf(leaseTasks);
    const leaseTaskStatus = new Map(leaseTasks.map((id, i) => [id, statuses[i]]));
    const bind = { caller: who.id, filters: { list: 'evidence', taskId } };
    const after = page.cursor ? this.cursors.decode<string>(page.cursor, bind) : undefined;
    const chain = this.deps.keys.bucketOfTask(taskId);
    const recordBytes = Math.max(EVIDENCE_BYTES / 2, EVIDENCE_BYTES - tree.bytes - leases.bytes);
    const ids = await this.taskIds(treeIds, after, page.limit);
    const audit = await this.fromIds(chain, ids, after, page.limit, bind, () => true, recordBytes);
    const intact = await this.intact(chain, audit.items);
    return {
      task,
      tree: { items: tree.items, nextCursor: tree.nextCursor },
      leases: { items: leases.items, nextCursor: leases.nextCursor },
      leaseTaskStatus,
      audit,
      chain: intact ? 'intact' : 'broken',
    };
  }

  /**
   * One page of a task's sub-task tree (`treeIds`: the task first, then in opening order): its tasks whole, up to
   * `maxBytes` of them (at least one; `bytes` is what it holds), then `nextCursor` (the last task shown, bound to the caller
   * and the task) goes on. A task's record may be ~36 KB within every bound, and a sub-task inherits its parent's
   * grants, labels and purpose from a request of a few hundred bytes: the whole tree in one answer was ~36 MB at
   * `tasks.maxSubtasks` 1,000, sent again with every page of the audit records. A tree within the defaults
   * (51 tasks) of ordinary records fits in one page. The changing fields are read fresh, the immutable rest comes
   * from the task cache.
   */
  private async treePage(
    caller: string,
    taskId: string,
    treeIds: readonly string[],
    cursor: string | undefined,
    maxBytes: number,
  ): Promise<Page<TaskRecord> & { bytes: number }> {
    const bind = { caller, filters: { list: 'evidence-tree', taskId } };
    let i = 0;
    if (cursor !== undefined) {
      const last = this.cursors.decode<unknown>(cursor, bind);
      // A task of the cursor that left the tree means the tree was purged (a tree only grows while its root exists).
      i = typeof last === 'string' ? treeIds.indexOf(last) + 1 : 0;
      if (i <= 0) throw badRequest('invalid_cursor', 'The cursor is malformed, expired, or for another caller or other filters.');
    }
    const items: TaskRecord[] = [];
    let bytes = 0;
    let last: string | undefined;
    while (i < treeIds.length && bytes < maxBytes) {
      const ids = treeIds.slice(i, i + 50);
      const records = new Map((await this.deps.tasks.recordsOf(ids)).map((t) => [t.taskId, t]));
      for (const id of ids) {
        i += 1;
        last = id;
        // Gone from Redis (its retention passed): left out, as before.
        const t = records.get(id);
        if (!t) continue;
        items.push(t);
        bytes += JSON.stringify(t).length;
        if (bytes >= maxBytes) break;
      }
    }
    return { items, nextCursor: i < treeIds.length && last ? this.cursors.encode(last, bind) : null, bytes };
  }

  /**
   * The next `count` stream ids of the records of these tasks after `after`, in chain order, merged in
   * Redis from each task's sorted index (task-audit-page.lua). `complete`: nothing follows them.
   */
  private async taskIds(
    taskIds: readonly string[],
    after: string | undefined,
    count: number,
  ): Promise<{ ids: string[]; complete: boolean }> {
    const keys = taskIds.map((id) => this.deps.keys.taskAudit(id));
    const [ids, more] = (await auditPageScript.run(this.deps.redis, keys, [after ?? '', count])) as [string[], number];
    return { ids, complete: more === 0 };
  }

  private async fromIds(
    chain: AuditChain,
    { ids, complete }: { ids: string[]; complete: boolean },
    after: string | undefined,
    limit: number,
    bind: { caller: string; filters: Record<string, unknown> },
    keep: (r: AuditRecord, id: string) => boolean,
    maxBytes = pageBytes(limit),
  ): Promise<Page<AuditItem>> {
    const rest = after ? ids.filter((id) => cmpId(id, after) > 0) : ids;
    const items: AuditItem[] = [];
    let last: string | undefined;
    let i = 0;
    // A record may be ~26-37 KB within every bound (a credential.issue names its lease's scopes, up to 100 of 256
    // characters): a page stops once it holds maxBytes of records (at least one: ~0.5 MB a point, as list pages
    // do, or the evidence's share of EVIDENCE_BYTES), its rounds sized by what is left of that; 500 such records
    // were ~13 MB read and answered at once.
    let bytes = 0;
    // Records already read past a full page that the filter does not keep: a page holding the last match says
    // so (`nextCursor` null on the last page) when nothing after it, among what was read, matches.
    let skippedAhead = 0;
    let matchAhead = false;
    const stream = this.deps.keys.auditStream(chain);
    while (i < rest.length && items.length < limit && i < SCAN_BUDGET && bytes < maxBytes) {
      // At most READS_IN_FLIGHT stream reads in flight per request: a page of 500 is several rounds, not 500
      // commands at once.
      const most = Math.min(AUDIT_READS, Math.max(limit, 50));
      const n =
        items.length > 0
          ? roundSize(maxBytes, bytes, items.length, most)
          : i === 0
            ? firstRound(maxBytes, AUDIT_BYTES_LARGEST, most)
            : most;
      const slice = rest.slice(i, i + n);
      const entries = await Promise.all(slice.map((id) => this.deps.redis.xrange(stream, id, id)));
      for (let j = 0; j < slice.length; j++) {
        const raw = entries[j]?.[0]?.[1];
        const json = raw ? raw[raw.indexOf('r') + 1]! : undefined;
        const r = json === undefined ? undefined : (JSON.parse(json) as AuditRecord);
        const kept = r !== undefined && keep(r, slice[j]!);
        if (items.length >= limit || bytes >= maxBytes) {
          if (kept) {
            matchAhead = true;
            break;
          }
          skippedAhead += 1;
          continue;
        }
        i += 1;
        last = slice[j];
        if (!kept) continue; // not kept, or exported and trimmed from Redis
        items.push({ ...r!, chain, streamId: slice[j]! });
        bytes += json!.length;
      }
    }
    const more = matchAhead || i + skippedAhead < rest.length || !complete;
    return { items, nextCursor: more && last ? this.cursors.encode(last, bind) : null };
  }

  private async allChains(
    after: Record<string, string>,
    q: AuditQuery,
    bind: { caller: string; filters: Record<string, unknown> },
    keep: (r: AuditRecord, id: string) => boolean,
  ): Promise<Page<AuditItem>> {
    const chains = this.deps.keys.auditChains();
    const pos: Record<string, string> = { ...after };
    if (q.until !== undefined && q.until < 0) return { items: [], nextCursor: null };
    // Stream ids are append times: a record's `time` may be up to TIME_SLACK_MS after its id (a process
    // clock ahead of Redis's), and before it by as much as the chain's lateness (Keys.auditLate) plus that.
    const start = q.since === undefined ? '-' : `${Math.max(0, q.since - TIME_SLACK_MS)}-0`;
    const late = new Map<AuditChain, number>();
    if (q.until !== undefined) {
      const scores = await inRounds(chains, (c) => this.deps.redis.zscore(this.deps.keys.auditLate(c), 'max'));
      for (const [i, c] of chains.entries()) late.set(c, Number(scores[i] ?? 0));
    }
    const buffers = new Map<AuditChain, [string, string[]][]>();
    const done = new Set<AuditChain>();
    const items: AuditItem[] = [];
    let scanned = 0;
    let bytes = 0; // as fromIds: a page stops at its byte cap of records (at least one)
    const maxBytes = pageBytes(q.limit);
    // How many more records the page may take: what is left of `limit`, and of the byte cap in records of the largest
    // size (not the page's average: chains differ, and one of small records then one of large ones read ~50 large
    // ones, 1.3 MB, past a page of ~0.5 MB). Chains are read by this, not by `limit` alone: at limit=100 a drained
    // chain read up to ~100 records, ~2.6 MB of the largest ones, for a page that holds ~0.5 MB.
    const room = () => Math.min(q.limit - items.length, Math.max(1, Math.ceil((maxBytes - bytes) / AUDIT_BYTES_LARGEST)));
    // The merge needs only each chain's head: a page starts from a few records of every chain and reads more only
    // of the chains it takes records from. Reading 100 of each up front was ~100,000 records (tens of MB) for a
    // page of 10 at `redis.buckets: 1024`. A chain's reads follow the page size (a filter may skip most of what
    // it reads, so its reads are the page's `limit`, not what is left of it), and no chain holds more than its
    // share of AUDIT_HELD_MAX: a filter that skipped most records refilled every chain with 100, ~100,000 held.
    const filtered = q.actor !== undefined || q.action !== undefined;
    const share = Math.max(1, Math.floor(AUDIT_HELD_MAX / chains.length));
    const first = Math.min(100, share, Math.max(1, Math.ceil((2 * room()) / chains.length)));
    const size = () => Math.min(100, share, filtered ? Math.max(first, q.limit) : room() + 1);
    /** Chains whose stream had nothing past their buffer when last read: not topped up again in this page. */
    const ended = new Set<AuditChain>();
    /** Chains down to their last buffered record: topped up with the next chain that runs dry, in the same round. */
    const low = new Set<AuditChain>();
    const read = async (c: AuditChain, count: number) => {
      const buffer = buffers.get(c);
      const last = buffer?.length ? buffer[buffer.length - 1]![0] : pos[String(c)];
      const got = await this.deps.redis.xrange(
        this.deps.keys.auditStream(c),
        last ? `(${last}` : start,
        q.until === undefined ? '+' : `${q.until + TIME_SLACK_MS + (late.get(c) ?? 0)}-18446744073709551615`,
        'COUNT',
        count,
      );
      if (got.length < count) ended.add(c);
      return got;
    };
    const fill = async (c: AuditChain, count: number) => {
      low.delete(c);
      const got = await read(c, count);
      buffers.set(c, got);
      if (got.length === 0) done.add(c);
      else heads.push(c);
    };
    const topUp = async (c: AuditChain, count: number) => {
      const got = await read(c, count);
      low.delete(c);
      buffers.get(c)!.push(...got); // its head, and so its place in the heap, is unchanged
    };
    // The chains by their head's stream id: one step of the merge is O(log chains), not a pass over 1,025 of them.
    const heads = new TinyQueue<AuditChain>([], (a, b) => cmpId(buffers.get(a)![0]![0], buffers.get(b)![0]![0]));
    await inRounds(chains, (c) => fill(c, first));
    let drained: AuditChain | undefined; // taken from last and not read further: it may hold more
    while (items.length < q.limit && scanned < SCAN_BUDGET && bytes < maxBytes) {
      if (drained !== undefined) {
        // Chains merged by time run low together: the others nearly dry are read in the same round, so small
        // reads per chain do not cost one round trip per few records.
        const n = size();
        const others = n > 1 ? [...low].filter((c) => c !== drained && !ended.has(c)).slice(0, READS_IN_FLIGHT - 1) : [];
        // Unfiltered, the page takes at most `n` more records, from whichever chains: the round shares them (each
        // chain at least its next record), so it reads about `n`, not `n` from every chain read (14 chains of ~26 KB
        // records topped up with 13 each read ~4.7 MB for a page of ~0.5 MB).
        const each = filtered ? n : Math.max(1, Math.ceil(n / (1 + others.length)));
        const c = drained;
        await Promise.all([ended.has(c) ? done.add(c) : fill(c, each), ...others.map((o) => topUp(o, Math.max(1, each - 1)))]);
      }
      drained = undefined;
      const best = heads.pop();
      if (best === undefined) break;
      const buffer = buffers.get(best)!;
      const [id, fields] = buffer.shift()!;
      if (buffer.length > 0) heads.push(best);
      else drained = best;
      if (buffer.length === 1 && !ended.has(best)) low.add(best);
      else if (buffer.length === 0) low.delete(best);
      pos[String(best)] = id;
      scanned += 1;
      const json = fields[fields.indexOf('r') + 1]!;
      const r = JSON.parse(json) as AuditRecord;
      if (keep(r, id)) {
        items.push({ ...r, chain: best, streamId: id });
        bytes += json.length;
      }
    }
    // Every page that says "more" has moved `pos` on by at least one record, so paging always ends.
    const more = heads.length > 0 || drained !== undefined;
    return { items, nextCursor: more ? this.cursors.encode(pos, bind) : null };
  }

  /** Each record's own hash is right and it links to its predecessor in the chain (where Redis still holds it). */
  private async intact(chain: AuditChain, records: AuditItem[]): Promise<boolean> {
    const stream = this.deps.keys.auditStream(chain);
    const exported = Number(((await this.deps.redis.get(this.deps.keys.auditExported(chain))) ?? '0:').split(':')[0]);
    // Each record's predecessor in the chain, read in rounds (not one round trip per record).
    const befores = await inRounds(records, (r) => this.deps.redis.xrevrange(stream, `(${r.streamId}`, '-', 'COUNT', 1));
    for (const [i, r] of records.entries()) {
      const { hash, chain: _c, streamId: _s, ...rest } = r;
      if (hashRecord(rest) !== hash) return false;
      if (r.seq === 1) {
        if (r.prev !== GENESIS) return false;
        continue;
      }
      const prevRaw = befores[i]?.[0]?.[1];
      if (!prevRaw) {
        if (r.seq - 1 > exported) return false; // its predecessor should still be in Redis
        continue;
      }
      const p = JSON.parse(prevRaw[prevRaw.indexOf('r') + 1]!) as AuditRecord;
      if (p.seq !== r.seq - 1 || p.hash !== r.prev) return false;
    }
    return true;
  }
}
