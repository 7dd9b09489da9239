import type { AuditEvent } from './record.ts';

/** Distinct (actor, code, action) denials tracked one by one per minute before the rest fold together. */
export const FOLD_MAX_KEYS = 10_000;
/** Tasks one caller's denials (one code and action) are recorded under per minute before the rest fold together. */
export const FOLD_TASKS_PER_CALLER = 3;
/** Distinct roles a folded record names (`detail.roles`) before it says only that there were more. */
export const FOLD_ROLES_MAX = 16;
/** Distinct callers a folded overflow record names (`detail.actors`) before it says only that there were more. */
export const FOLD_ACTORS_MAX = 16;
/** The actor of a folded overflow record: it counts many callers' denials, so it names none of them as its actor. */
export const OVERFLOW_ACTOR = 'broker';

/** One folded key: its first denial, and how many followed (the first too when its record was not written). */
export interface Fold {
  event: AuditEvent;
  count: number;
  /** The first denial's record could not be written: it is in `count`. */
  firstUnwritten?: boolean;
  /**
   * Roles the folded denials named besides the first's: without them, one harmless first denial hid
   * which roles an agent then probed for the rest of the minute.
   */
  roles?: string[];
  rolesTruncated?: boolean;
  /**
   * An overflow key's (past the table's bound, folded whoever the caller): the callers its count stands
   * for. Its first denial's caller was the folded record's actor, as if every denial counted were theirs.
   */
  overflow?: boolean;
  actors?: string[];
  actorsTruncated?: boolean;
}

/** Notes `role` among a fold's roles (bounded). */
function noteRole(fold: Fold, role: string | undefined): void {
  if (role === undefined || role === fold.event.role || fold.roles?.includes(role)) return;
  fold.roles ??= [];
  if (fold.roles.length < FOLD_ROLES_MAX) fold.roles.push(role);
  else fold.rolesTruncated = true;
}

/** Notes `actor` among an overflow fold's callers (bounded). */
function noteActor(fold: Fold, actor: string): void {
  if (!fold.overflow || fold.actors?.includes(actor)) return;
  fold.actors ??= [];
  if (fold.actors.length < FOLD_ACTORS_MAX) fold.actors.push(actor);
  else fold.actorsTruncated = true;
}

/** Notes one more denial counted into `fold`: its role and, for an overflow key, its caller. */
function noteCounted(fold: Fold, event: AuditEvent): void {
  noteRole(fold, event.role);
  noteActor(fold, event.actor);
}

/**
 * The table of denials folded per minute (src/audit/audit-log.ts writes what it decides). Keys are
 * (minute, actor, code, action, task), so a task's evidence shows the denials about it, within bounds
 * that no caller can push:
 * - one caller's denials about more than {@link FOLD_TASKS_PER_CALLER} tasks in a minute fold together,
 *   under no task (`detail.manyTasks`): naming a new task id each time cannot grow the log. Tasks the
 *   caller is a party of (`own`: their agent or orchestrator) keep their own key past that: an agent's
 *   denials about its own task are what that task's evidence is for, and three decoy tasks (sub-tasks it
 *   opened for itself) hid every later attempt on the task from it. Those keys are bounded by the tasks
 *   the caller holds, each opened with a record of its own;
 * - past `maxKeys` keys in a minute (many callers), the rest fold per (task, code, action) whoever they
 *   are (`detail.overflow`), so decoys cannot hide a denial about another task; past twice that, per
 *   (code, action) only. The first denial of such a key is written at once as its caller's; the folded
 *   record of the rest has actor {@link OVERFLOW_ACTOR} and lists the callers it counts (`detail.actors`).
 */
export class DenialFolds {
  private readonly folds = new Map<string, Fold>();
  /** Per (minute, actor, code, action): how many tasks have their own key. */
  private readonly tasksOf = new Map<string, number>();
  private readonly maxKeys: number;

  constructor(maxKeys = FOLD_MAX_KEYS) {
    this.maxKeys = maxKeys;
  }

  get size(): number {
    return this.folds.size;
  }

  /**
   * Folds `event` into its key. Returns the record to write now and its entry when it is the first of
   * its key, or undefined when it was counted into an earlier one.
   */
  admit(event: AuditEvent, minute: number, own = false): { key: string; entry: Fold } | undefined {
    const caller = `${minute}\u0000${event.actor}\u0000${event.reason ?? ''}\u0000${event.action}`;
    let key = `${caller}\u0000${event.taskId ?? ''}`;
    let overflow = false;
    if (!this.folds.has(key)) {
      if (this.folds.size >= this.maxKeys) {
        const perTask = this.folds.size < 2 * this.maxKeys;
        key = `${minute}\u0000*\u0000${event.reason ?? ''}\u0000${event.action}\u0000${perTask ? (event.taskId ?? '') : '*'}`;
        event = { ...event, detail: { ...(event.detail ?? {}), overflow: true } };
        overflow = true;
      } else if (event.taskId !== undefined && !own) {
        const tasks = this.tasksOf.get(caller) ?? 0;
        if (tasks >= FOLD_TASKS_PER_CALLER) {
          key = `${caller}\u0000*`;
          const { taskId: _many, ...rest } = event;
          event = { ...rest, detail: { ...(event.detail ?? {}), manyTasks: true } };
        } else {
          this.tasksOf.set(caller, tasks + 1);
        }
      }
    }
    const fold = this.folds.get(key);
    if (fold) {
      fold.count += 1;
      noteCounted(fold, event);
      return undefined;
    }
    const entry: Fold = { event, count: 0, ...(overflow ? { overflow } : {}) };
    this.folds.set(key, entry);
    return { key, entry };
  }

  /**
   * The first denial of `key` could not be written: counted in the folded record, which says so. A flush
   * may have taken the entry meanwhile (the write took long to fail) and written or put back its repeats:
   * only this one denial is added, to what the table holds now or as a new entry.
   */
  unwritten(key: string, entry: Fold): void {
    const now = this.folds.get(key);
    if (now) {
      now.count += 1;
      now.firstUnwritten = true;
      noteCounted(now, entry.event);
    } else {
      const fold: Fold = { event: entry.event, count: 1, firstUnwritten: true, ...(entry.overflow ? { overflow: true } : {}) };
      noteActor(fold, entry.event.actor);
      this.folds.set(key, fold);
    }
  }

  /** Takes the keys of finished minutes (all with `all`); those with a count become records. */
  take(minute: number, all: boolean): [string, Fold][] {
    const taken: [string, Fold][] = [];
    const done = (key: string) => all || Number(key.slice(0, key.indexOf('\u0000'))) < minute;
    for (const [key, fold] of this.folds) {
      if (!done(key)) continue;
      this.folds.delete(key);
      if (fold.count > 0) taken.push([key, fold]);
    }
    for (const key of this.tasksOf.keys()) if (done(key)) this.tasksOf.delete(key);
    return taken;
  }

  /** A taken fold whose record could not be written, back for the next flush (merged with a newer one). */
  putBack(key: string, fold: Fold): void {
    const now = this.folds.get(key);
    if (now === fold) return;
    if (!now) this.folds.set(key, fold);
    else {
      now.count += fold.count;
      now.firstUnwritten ||= fold.firstUnwritten;
      for (const role of [fold.event.role, ...(fold.roles ?? [])]) noteRole(now, role);
      if (fold.rolesTruncated) now.rolesTruncated = true;
      for (const actor of fold.actors ?? []) noteActor(now, actor);
      if (fold.actorsTruncated) now.actorsTruncated = true;
    }
  }

  /** The record a taken fold becomes. */
  static record(f: Fold): AuditEvent {
    return {
      ...f.event,
      // Many callers' denials: none of them is the record's actor; `detail.actors` names them.
      ...(f.overflow ? { actor: OVERFLOW_ACTOR } : {}),
      count: f.count,
      detail: {
        ...(f.event.detail ?? {}),
        folded: true,
        ...(f.firstUnwritten ? { firstUnwritten: true } : {}),
        // Every role the minute's denials named, the first's included.
        ...(f.roles ? { roles: [...(f.event.role === undefined ? [] : [f.event.role]), ...f.roles] } : {}),
        ...(f.rolesTruncated ? { rolesTruncated: true } : {}),
        ...(f.overflow ? { actors: f.actors ?? [] } : {}),
        ...(f.actorsTruncated ? { actorsTruncated: true } : {}),
      },
    };
  }
}
