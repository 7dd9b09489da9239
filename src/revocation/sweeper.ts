import type { Deps } from '../deps.ts';
import { LeaseStore } from '../leases/lease-store.ts';
import type { LeaseRecord, RevokeReason } from '../leases/types.ts';
import { afterSlice } from '../ops/pace.ts';
import { scanIds } from '../redis/scan.ts';
import { script } from '../redis/scripts.ts';
import { TASK_END_REASONS, type TaskEndReason } from '../tasks/types.ts';
import { endLeases, endTaskLeases, localKinds } from './ending.ts';
import { taskOfLease } from '../tasks/incarnation.ts';

const sweepScript = script('sweep');
const reconcilePageScript = script('reconcile-page');
const reconcileTasksScript = script('reconcile-tasks');
const reconcileSubtasksScript = script('reconcile-subtasks');

/**
 * Audit records of one bucket the sweeper lets be unwritten before it waits:
 * the leases are ended by then (their state is the revocation), the records
 * follow; bounded so a chain that cannot keep up slows the sweep down.
 */
const MAX_UNWRITTEN = 5000;

/** Past `maxBackoffMs` (the longest a retry is meant to wait), how far out a revocation's retry may be due before the reconciler runs it now. */
const FAR_RETRY_SLACK_MS = 5000;

/** How long a due lease handed to the worker waits before the sweeper hands it over again. */
const HANDOFF_RETRY_MS = 15_000;

/**
 * Turns time into revocation, and catches what was lost.
 *
 * - Every `sweepMs` (default 100 ms), per bucket, one Lua script decides on
 *   Redis's clock: open tasks past their deadline end `expired` (with their
 *   subtrees); due leases of the broker's own JWTs end `expired` in bulk;
 *   other due leases (upstream TTL expiry, interrupted issuances) become
 *   lease-end jobs. Safe to run in every worker at once: each due item is
 *   taken by exactly one script run.
 * - Every `reconcileIntervalMs`: finishes what a lost job (a crash, a Redis
 *   failover) left undone: leases of ended tasks, revocations in progress. A
 *   pass reads two per-bucket work lists that the task-ending and
 *   revocation-asking scripts write (Keys.tasksEnding, Keys.leasesRevoking),
 *   so its cost follows what is unfinished, not how many leases are live; every
 *   `fullReconcileIntervalMs` (and first) it walks every live lease instead.
 *   Each pass (the first at start) also appends the audit records a process
 *   left in a bucket's outbox (src/audit/outbox.ts), and ends the sub-tasks
 *   left open under a parent that ended (see healSubtasks).
 */
export class Sweeper {
  private readonly deps: Deps;
  private sweepTimer: NodeJS.Timeout | undefined;
  private reconcileTimer: NodeJS.Timeout | undefined;
  /** Buckets whose sweep is running: a tick skips those (a busy bucket does not hold up the others). */
  private readonly busy = new Set<number>();
  /** Per bucket: the rounds whose audit records are being written (`done` resolves when durable, never rejects). */
  private readonly writing = new Map<number, { done: Promise<void>; count: number }[]>();
  /** When the last full walk started (performance.now()); -Infinity: the first pass is one. */
  private lastFull = Number.NEGATIVE_INFINITY;
  /** The reconcile pass under way, for stop() and reconcile() to wait on. */
  private reconcilePass: Promise<number> | undefined;
  /** Set by stop(): a reconcile pass in its pauses ends at the next page instead of running on after shutdown. */
  private stopped = false;
  private readonly localKinds: string;

  constructor(deps: Deps) {
    this.deps = deps;
    this.localKinds = localKinds(deps);
  }

  start(): void {
    this.stopped = false;
    this.lastFull = Number.NEGATIVE_INFINITY; // what happened while it was stopped is not on record: walk everything first
    this.sweepTimer = setInterval(() => void this.tick(), this.deps.config.revocation.sweepMs);
    this.reconcileTimer = setInterval(() => void this.timerPass(), this.deps.config.revocation.reconcileIntervalMs);
    this.sweepTimer.unref();
    this.reconcileTimer.unref();
    // The first pass, a full walk, runs now: it covers what was left while no broker ran (or before the work lists existed).
    void this.timerPass();
  }

  /** Stops the timers; resolves once a reconcile pass under way has ended (at its next pause). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.sweepTimer);
    clearInterval(this.reconcileTimer);
    await this.reconcilePass;
  }

  /** One pass over every bucket; resolves once the pass's audit records are durable. */
  async sweep(): Promise<void> {
    await this.tick();
    await Promise.all([...this.writing.values()].flat().map((r) => r.done));
  }

  /** What the timer runs: every bucket not still busy with the previous tick, in parallel. */
  private async tick(): Promise<void> {
    await Promise.all(
      Array.from({ length: this.deps.keys.buckets }, async (_, b) => {
        if (this.busy.has(b)) return;
        this.busy.add(b);
        try {
          await this.sweepBucket(b);
        } catch (err) {
          this.deps.logger.warn({ err: (err as Error).message, bucket: b }, 'sweep failed');
        } finally {
          this.busy.delete(b);
        }
      }),
    );
  }

  /**
   * Sweeps one bucket. The leases end in the script (introspection answers
   * inactive from then on), which puts their audit records in the bucket's
   * outbox; they are appended from here. A round does not wait
   * for its records before the next round or tick runs the script again
   * (only once MAX_UNWRITTEN records are pending): a burst of expiries is
   * ended on time while the chain catches up.
   */
  private async sweepBucket(bucket: number): Promise<void> {
    const { keys, redis, leases, queue, metrics } = this.deps;
    for (let round = 0; round < 20; round++) {
      const [now, expired, handoff, groups, records] = (await sweepScript.run(
        redis,
        [keys.liveLeases(bucket), keys.openTasks(bucket)],
        [keys.base(bucket), 1000, 200, leases.retentionMs, HANDOFF_RETRY_MS, this.localKinds],
      )) as [number, string[], string[], string[][], string[]];
      for (const expiresAt of expired)
        metrics.revocationLag.observe({ reason: 'ttl_expired' }, Math.max(0, now - Number(expiresAt)) / 1000);
      if (expired.length > 0) metrics.revocations.inc({ result: 'expired', reason: 'ttl_expired', provider: 'jwt' }, expired.length);
      for (const ids of groups) await queue.endTasks(ids[0]!, ids, 'task_expired', now);
      await queue.endLeases(handoff.map((leaseId) => ({ leaseId, reason: 'ttl_expired' as const, requestedAt: now })));
      // The script put these records (lease.expire, task.expire, task.complete) in the bucket's outbox as it
      // decided: appended from there now, or by recovery if this process dies first.
      if (records.length > 0) await this.record(bucket, now, records);
      // A full page means more may be due right now: go again rather than wait for the next tick.
      if (expired.length + handoff.length < 1000 && groups.length < 200) return;
    }
  }

  /**
   * Queues a round's outbox records on the bucket's chain (the audit log
   * writes them in order); waits only while more than MAX_UNWRITTEN of the
   * bucket's records are still unwritten, for the oldest rounds to be durable.
   */
  private async record(bucket: number, at: number, records: string[]): Promise<void> {
    const mine = this.deps.audit.appendOutbox(bucket, records, at).catch((err: Error) => {
      // Still in the outbox: recovery (src/audit/outbox.ts) appends them once OUTBOX_GRACE_MS has passed.
      this.deps.logger.error(
        { err: err.message, bucket, records: records.length },
        'sweep: audit records not written yet; left to recovery',
      );
    });
    const rounds = this.writing.get(bucket) ?? [];
    this.writing.set(bucket, rounds);
    const round = { done: mine, count: records.length };
    rounds.push(round);
    void mine.then(() => {
      const list = this.writing.get(bucket);
      const i = list?.indexOf(round) ?? -1;
      if (i >= 0) list!.splice(i, 1);
    });
    while (rounds.length > 0 && rounds.reduce((n, r) => n + r.count, 0) > MAX_UNWRITTEN) await rounds[0]!.done;
  }

  /**
   * Finds live leases whose revocation should have happened and finishes it;
   * returns how many. Waits for a pass already under way, then runs its own.
   * `full` walks every live lease instead of the two work lists.
   */
  async reconcile(opts: { full?: boolean } = {}): Promise<number> {
    while (this.reconcilePass) await this.reconcilePass;
    return this.runPass(opts.full ?? false);
  }

  /** The timer's pass: skipped while one runs; a full walk when the last is `fullReconcileIntervalMs` old. */
  private async timerPass(): Promise<void> {
    if (this.reconcilePass) return;
    await this.runPass(performance.now() - this.lastFull >= this.deps.config.revocation.fullReconcileIntervalMs);
  }

  private async runPass(full: boolean): Promise<number> {
    const started = performance.now();
    const pass = this.reconcileAll(full);
    this.reconcilePass = pass.then((p) => p.requeued);
    try {
      const { requeued, complete } = await pass;
      // Only a walk that reached every bucket counts: one cut short (an error, a failover, stop()) is walked
      // again at the next pass, not `fullReconcileIntervalMs` later.
      if (full && complete) this.lastFull = started;
      return requeued;
    } finally {
      this.reconcilePass = undefined;
    }
  }

  private async reconcileAll(full: boolean): Promise<{ requeued: number; complete: boolean }> {
    let requeued = 0;
    let complete = true;
    try {
      for (let b = 0; b < this.deps.keys.buckets && !this.stopped; b++) {
        try {
          requeued += await this.healSubtasks(b);
          requeued += await this.reconcileBucket(b, full);
        } catch (err) {
          // A bucket whose slot a Cluster reshard is moving refuses the pass's scripts until the move ends
          // (TRYAGAIN, src/redis/lua/lib/slot.lua): the other buckets are reconciled meanwhile. Anything else
          // (Redis out of reach) ends the pass, rather than wait out every bucket's timeout.
          if (!/TRYAGAIN/.test((err as Error).message)) throw err;
          this.deps.logger.warn({ err: (err as Error).message, bucket: b, full }, 'reconcile: bucket skipped while its slot moves');
          complete = false;
        }
      }
    } catch (err) {
      this.deps.logger.warn({ err: (err as Error).message, full }, 'reconcile failed');
      return { requeued, complete: false };
    } finally {
      if (!this.stopped) await this.reconcileProviders();
    }
    return { requeued, complete: complete && !this.stopped };
  }

  /** Each provider's own upkeep (Provider.reconcile: AWS re-adds a deny a late write erased), whatever the leases' pass did. */
  private async reconcileProviders(): Promise<void> {
    for (const [kind, provider] of this.deps.providers.all()) {
      try {
        await provider.reconcile?.();
      } catch (err) {
        this.deps.logger.warn({ err: (err as Error).message, provider: kind }, 'provider reconcile failed; retrying at the next pass');
      }
    }
  }

  /**
   * Ends the open sub-tasks of one bucket whose parent has ended (or is gone), with their leases. task-end and
   * sweep end a task with its open subtree in one step, so there should be none; a step cut short after ending
   * the parent leaves one (an older release's script during a Cluster reshard: src/redis/lua/lib/slot.lua), and
   * its agent could still take credentials until its own deadline. Ended as ending the parent would have
   * (`completed`, the parent's reason for sub-tasks; its leases revoked for the parent's reason), within a pass.
   * The work list is the bucket's open-task index, read in ZSCAN pages (paced): a pass costs a page per 500 open
   * tasks, and a script per page holding sub-tasks, which looks up their parents in Redis, one HMGET per parent
   * (reconcile-subtasks.lua). Returns the leases it ended or handed over.
   */
  private async healSubtasks(bucket: number): Promise<number> {
    const { keys, redis } = this.deps;
    let n = 0;
    let sliceStart = performance.now();
    let cursor = '0';
    do {
      await afterSlice(sliceStart);
      if (this.stopped) break;
      sliceStart = performance.now();
      // A ZSCAN cursor (see TaskStore.openIn), with the scores: a sub-task's deadline is all the script needs of it.
      const [next, flat] = await redis.zscan(keys.openTasks(bucket), cursor, 'COUNT', 500);
      cursor = next;
      // Root tasks (no `~`) have no parent: only pages holding sub-tasks cost a script.
      const pairs: string[] = [];
      for (let i = 0; i + 1 < flat.length; i += 2) if (flat[i]!.includes('~')) pairs.push(flat[i]!, flat[i + 1]!);
      if (pairs.length === 0) continue;
      const found = (await reconcileSubtasksScript.run(redis, [keys.openTasks(bucket)], [keys.base(bucket), ...pairs])) as string[];
      for (let i = 0; i + 2 < found.length; i += 3) n += await this.endOrphan(bucket, found[i]!, found[i + 1]!, found[i + 2]!);
    } while (cursor !== '0');
    return n;
  }

  /** Ends an open sub-task (and its open subtree) whose parent ended for `parentReason` ('' when it is gone). */
  private async endOrphan(bucket: number, taskId: string, parentReason: string, parentScope: string): Promise<number> {
    const leaseReason: TaskEndReason = (TASK_END_REASONS as readonly string[]).includes(parentReason)
      ? (parentReason as TaskEndReason)
      : 'task_completed';
    // As task-end.lua ends the sub-tasks below the task it ends (TaskStore.end's reason for them).
    const reason: TaskEndReason = leaseReason === 'revoked_by_admin' ? 'revoked_by_admin' : 'task_completed';
    const record = { action: 'task.complete', actor: 'broker', decision: 'ok', reason: 'parent_task_ended' } as const;
    const res = await this.deps.tasks.end(taskId, 'completed', reason, parentScope === 'task' ? 'task' : undefined, {
      task: { ...record, taskId },
      subtask: record,
    });
    if (res.kind !== 'ended') return 0;
    this.deps.logger.warn(
      { taskId, tasks: res.taskIds.length, leases: res.liveLeases, parentReason },
      'reconcile: ended a sub-task left open under a parent that ended',
    );
    await this.record(bucket, res.endedAt, res.records);
    return endTaskLeases(this.deps, res.taskIds, leaseReason, res.endedAt);
  }

  /**
   * Pages of lease ids a pass looks at, with the work list to drop finished
   * entries from. The work lists are written by the scripts that end a task
   * or ask for a revocation, in the same step, so they hold every lease a
   * lost job can leave behind; the full walk (at start and every
   * `fullReconcileIntervalMs`) also covers records written before they existed.
   */
  private async *candidates(bucket: number, full: boolean): AsyncGenerator<{ ids: string[]; prune?: string }> {
    const { keys, redis } = this.deps;
    if (full) {
      for await (const ids of scanIds(redis, keys.liveLeases(bucket), 'zset')) yield { ids };
      return;
    }
    const revoking = keys.leasesRevoking(bucket);
    for await (const ids of scanIds(redis, revoking, 'zset')) yield { ids, prune: revoking };
    const gone: string[] = [];
    for await (const page of scanIds(redis, keys.tasksEnding(bucket), 'zset')) {
      const [stuck, lost] = (await reconcileTasksScript.run(redis, [keys.tasksEnding(bucket)], [keys.base(bucket), '0', ...page])) as [
        string[],
        string[],
      ];
      gone.push(...lost);
      for (const taskId of stuck) {
        const ids = await this.deps.tasks.leaseIds(taskId);
        for (let i = 0; i < ids.length; i += 500) yield { ids: ids.slice(i, i + 500) };
      }
    }
    if (gone.length === 0) return;
    // A task whose records left Redis (retention) while it still counted live leases: only the leases' own
    // records name it now, so this bucket's live leases are walked (reconcile-page finds those of a gone task);
    // then its entry goes (it stays if the walk was cut short, for the next pass).
    for await (const ids of scanIds(redis, keys.liveLeases(bucket), 'zset')) yield { ids };
    if (this.stopped) return;
    await reconcileTasksScript.run(redis, [keys.tasksEnding(bucket)], [keys.base(bucket), '1', ...new Set(gone)]);
  }

  private async reconcileBucket(bucket: number, full: boolean): Promise<number> {
    const { leases, tasks, queue, keys } = this.deps;
    let n = 0;
    /** Leases handled in this pass: one revoking lease of an ended task is on both work lists. */
    const handled = new Set<string>();
    let sliceStart = performance.now();
    for await (const page of this.candidates(bucket, full)) {
      // A background pass: each page's script holds Redis for its 500 leases, so pages are paced (ops/pace.ts).
      await afterSlice(sliceStart);
      if (this.stopped) break; // the next pass (any instance's) picks up where this one stopped
      sliceStart = performance.now();
      // Redis picks the few leases needing work; only those are read here (see reconcile-page.lua).
      const picked = (await reconcilePageScript.run(
        this.deps.redis,
        page.prune ? [keys.liveLeases(bucket), page.prune] : [keys.liveLeases(bucket)],
        [keys.base(bucket), ...page.ids],
      )) as string[];
      const ids = picked.filter((id) => !handled.has(id));
      if (ids.length === 0) continue;
      for (const id of ids) handled.add(id);
      const records = (await leases.getMany(ids)).filter((l) => !LeaseStore.isEnded(l.status) && l.status !== 'issuing');
      const taskIds = [...new Set(records.map((l) => l.taskId))];
      const found = await tasks.getMany(taskIds);
      const byId = new Map(found.map((t) => [t.taskId, t]));
      const ofEndedTasks = new Map<TaskEndReason, LeaseRecord[]>();
      const inProgress: LeaseRecord[] = [];
      for (const l of records) {
        // A lease of an earlier task under this id (common.lua `of_earlier_task`: issued more than 30 s before
        // the current task was created) finds its own task gone; a missing time keeps the task.
        const t = taskOfLease(l, byId.get(l.taskId));
        if (t?.status !== 'open') {
          const reason = (t?.reason as TaskEndReason | undefined) ?? (t?.status === 'expired' ? 'task_expired' : 'task_completed');
          const list = ofEndedTasks.get(reason);
          if (list) list.push(l);
          else ofEndedTasks.set(reason, [l]);
        } else if (l.status === 'revoking' || l.status === 'revoke_failed') {
          inProgress.push(l);
        }
      }
      const now = this.deps.clock.now();
      // A retry a worker with a wrong clock scheduled far out runs now (RevocationQueue.promoteFarRetries).
      const retrying = records.filter((l) => l.status === 'revoking' || l.status === 'revoke_failed').map((l) => l.leaseId);
      if (retrying.length > 0) await queue.promoteFarRetries(retrying, now + this.deps.config.revocation.maxBackoffMs + FAR_RETRY_SLACK_MS);
      for (const [reason, list] of ofEndedTasks) n += await endLeases(this.deps, list, reason, now);
      await queue.endLeases(
        inProgress.map((l) => ({ leaseId: l.leaseId, reason: (l.reason ?? 'revoked_by_caller') as RevokeReason, requestedAt: now })),
      );
      n += inProgress.length;
    }
    return n;
  }
}
