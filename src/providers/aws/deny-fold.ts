import { type DenyModel, raiseFold } from './deny-policy.ts';
import { AGENT_KEY_CHARS, TASK_KEY_CHARS } from './session-name.ts';

/**
 * Folding: what the deny list does when its entries no longer fit the role's
 * inline-policy room, before it would deny the whole role.
 *
 * Session names carry the agent's and the task's key
 * (`jit-<agent key>-<task key>-<leaseId>`, session-name.ts), so the policy
 * text alone says which revoked sessions belong together. A fold replaces
 * the entries of one task by `*:jit-<agent>-<task>-*`, or of one agent by
 * `*:jit-<agent>-*`, limited to sessions issued before a cut-off
 * (`DateLessThan aws:TokenIssueTime`): the folded agent's sessions issued
 * after it work again. The price is that the folded task's (agent's)
 * unrevoked sessions issued before the cut-off are denied too; nobody
 * else's are, since only principals that have a revoked entry are folded.
 *
 * An ended task's entry is the wildcard on its session names,
 * `*:jit-<agent>-<task>-*` without a time condition (no session can be
 * issued for an ended task), so it counts to its agent and folds into the
 * agent's wildcard from the policy text alone, Redis or not. Earlier
 * versions wrote the task's `task` tag instead (up to 255 chars), which does
 * not say whose task it was: such a tag counts to its owner when `owners`
 * (deny-owners.ts, in Redis) knows it, and folds into its task's wildcard
 * (every session of an ended task may be denied, so this costs nobody
 * anything) or its agent's. A tag of unknown owner (its owner forgotten
 * with Redis, or never learnt) counts to nobody and is never folded; tags
 * expire as they always did.
 *
 * Order (the agent taking the most room first, so a busy agent pays for its
 * own revocations): that agent's tasks whose entries are worth folding, most
 * room first, then the agent as a whole; then the next agent. Folding stops
 * once the document fits; it goes on to a target below the budget (so the
 * next revocations do not fold again at once) only with agents whose own
 * entries take at least the room still to be freed: a bystander with a
 * revoked session or two is folded only if the document cannot fit without
 * it (the alternative being the role-wide cut-off, which cuts it off too).
 * Only if every agent is folded and it still does not fit are fold
 * statements of different cut-offs merged (raising the earlier cut-off:
 * wider, but still only for folded principals).
 */

const KEY = (n: number) => `[a-z2-7]{${n}}`;
const SESSION = new RegExp(`^\\*:jit-(${KEY(AGENT_KEY_CHARS)})-(${KEY(TASK_KEY_CHARS)})-[^*?]+$`);
const TASK_FOLD = new RegExp(`^\\*:jit-(${KEY(AGENT_KEY_CHARS)})-(${KEY(TASK_KEY_CHARS)})-\\*$`);
const AGENT_FOLD = new RegExp(`^\\*:jit-(${KEY(AGENT_KEY_CHARS)})-\\*$`);

export const taskFoldPattern = (agentKey: string, taskKey: string) => `*:jit-${agentKey}-${taskKey}-*`;
export const agentFoldPattern = (agentKey: string) => `*:jit-${agentKey}-*`;

/** The agent and task keys of a task, as in its session names. */
export interface TaskOwner {
  agentKey: string;
  taskKey: string;
}
/** `task` tag values (written by earlier versions) → the task they name (deny-owners.ts keeps them). */
export type TaskOwners = Map<string, TaskOwner>;

/** The keys in a session's `*:<session name>`; undefined for names of earlier versions (`jit-<leaseId>`). */
export function ownerOfSession(userId: string): TaskOwner | undefined {
  const k = SESSION.exec(userId);
  return k ? { agentKey: k[1]!, taskKey: k[2]! } : undefined;
}

const AGENT_KEY = new RegExp(`^${KEY(AGENT_KEY_CHARS)}$`);
const TASK_KEY = new RegExp(`^${KEY(TASK_KEY_CHARS)}$`);
/** Whether an owner read back from Redis has the shape of an agent key and a task key. */
export const isOwner = (o: TaskOwner) => AGENT_KEY.test(o.agentKey) && TASK_KEY.test(o.taskKey);

/** One widening the deny list decided on, for the log and the audit. */
export interface FoldDecision {
  /** `task`: one task's entries; `agent`: one agent's; `regroup`: folds of an earlier cut-off moved to a later one. */
  scope: 'task' | 'agent' | 'regroup';
  /** The wildcards written (for `regroup`, the folds whose cut-off was raised). */
  patterns: string[];
  agentKey?: string;
  taskKey?: string;
  /** Sessions issued before this (epoch ms) that match `patterns` are now denied, revoked or not. */
  cutoff: number;
  /** The entries replaced: revoked sessions (`*:<session name>`), earlier folds, ended tasks' tags. */
  replaced: string[];
}

/** Characters an entry takes in a statement's list: the JSON string and a comma. */
const cost = (s: string) => JSON.stringify(s).length + 1;

interface TaskGroup {
  key: string;
  sessions: string[];
  fold?: string;
  tag?: string;
  room: number;
}
interface AgentGroup {
  key: string;
  tasks: Map<string, TaskGroup>;
  fold?: string;
  room: number;
}

/**
 * The model's foldable entries, by agent key and task key, each counted to
 * its owner: revoked sessions, ended tasks' wildcards, task folds, and ended
 * tasks' tags (earlier versions) whose owner is known. Entries of older session names and tags of unknown owner are not
 * foldable; an agent's own SourceIdentity entry (one per agent, written by
 * an admin) is not either.
 */
function groups(m: DenyModel, owners: TaskOwners): AgentGroup[] {
  const agents = new Map<string, AgentGroup>();
  const agent = (key: string): AgentGroup => {
    const g = agents.get(key) ?? { key, tasks: new Map(), room: 0 };
    agents.set(key, g);
    return g;
  };
  const task = (agentKey: string, key: string, entry: string): TaskGroup => {
    const a = agent(agentKey);
    const g = a.tasks.get(key) ?? { key, sessions: [], room: 0 };
    a.tasks.set(key, g);
    g.room += cost(entry);
    a.room += cost(entry);
    return g;
  };
  for (const id of m.sessions.keys()) {
    // A revoked session, or an ended task's wildcard: both name their agent and task.
    const k = SESSION.exec(id) ?? TASK_FOLD.exec(id);
    if (k) task(k[1]!, k[2]!, id).sessions.push(id);
  }
  for (const tag of m.tasks.keys()) {
    const o = owners.get(tag);
    if (o) task(o.agentKey, o.taskKey, tag).tag = tag;
  }
  for (const pattern of m.folds.keys()) {
    const tk = TASK_FOLD.exec(pattern);
    const ak = AGENT_FOLD.exec(pattern);
    if (tk) task(tk[1]!, tk[2]!, pattern).fold = pattern;
    else if (ak) agent(ak[1]!).fold = pattern;
  }
  return [...agents.values()].sort((x, y) => y.room - x.room || (x.key < y.key ? -1 : 1));
}

/** Replaces `replaced` (session entries, folds) and `tags` by one fold; the fold lives as long as the longest of them. */
function fold(m: DenyModel, pattern: string, replaced: string[], tags: string[], cutoff: number): void {
  let end = 0;
  for (const id of replaced) {
    end = Math.max(end, m.sessions.get(id) ?? 0, m.folds.get(id)?.end ?? 0);
    m.sessions.delete(id);
    if (id !== pattern) m.folds.delete(id);
  }
  for (const tag of tags) {
    end = Math.max(end, m.tasks.get(tag) ?? 0);
    m.tasks.delete(tag);
  }
  raiseFold(m.folds, pattern, { cutoff, end });
}

/**
 * Whether folding a task alone is worth it: it replaces more than one entry,
 * or a tag longer than the wildcard. A task with one revoked session is not
 * (it frees some 30 chars): the agent fold takes it.
 */
function worthFolding(t: TaskGroup, pattern: string): boolean {
  const entries = t.sessions.length + (t.fold ? 1 : 0) + (t.tag !== undefined ? 1 : 0);
  return entries > 1 || (t.tag !== undefined && cost(t.tag) > cost(pattern));
}

/**
 * Folds entries of `m` (in place) until `size(m) <= target`, or as far as
 * its principals' own entries justify (see the top of this file); then, if
 * still above `budget`, merges fold cut-offs. `owners` names the task behind
 * each `task` tag it knows. Returns what it decided, and whether the result
 * is within `budget`.
 */
export function foldToFit(
  m: DenyModel,
  size: (m: DenyModel) => number,
  budget: number,
  target: number,
  cutoff: number,
  owners: TaskOwners = new Map(),
): { decisions: FoldDecision[]; fits: boolean } {
  const decisions: FoldDecision[] = [];
  for (const a of groups(m, owners)) {
    const now = size(m);
    // Below the budget, only an agent whose own entries take the room still to be freed pays for the headroom.
    const goal = a.room >= now - target ? target : budget;
    if (now <= goal) break; // the agents after this one take even less room
    const tasks = [...a.tasks.values()]
      .filter((t) => worthFolding(t, taskFoldPattern(a.key, t.key)))
      .sort((x, y) => y.room - x.room || (x.key < y.key ? -1 : 1));
    for (const t of tasks) {
      if (size(m) <= goal) break;
      const pattern = taskFoldPattern(a.key, t.key);
      const replaced = [...t.sessions, ...(t.fold ? [t.fold] : [])];
      const tags = t.tag !== undefined ? [t.tag] : [];
      fold(m, pattern, replaced, tags, cutoff);
      decisions.push({ scope: 'task', patterns: [pattern], agentKey: a.key, taskKey: t.key, cutoff, replaced: [...replaced, ...tags] });
    }
    if (size(m) <= goal) break;
    const pattern = agentFoldPattern(a.key);
    const replaced = [...m.sessions.keys(), ...m.folds.keys()].filter(
      (id) => id !== pattern && (SESSION.exec(id)?.[1] === a.key || TASK_FOLD.exec(id)?.[1] === a.key),
    );
    const tags = [...m.tasks.keys()].filter((tag) => owners.get(tag)?.agentKey === a.key);
    if (replaced.length + tags.length === 0) continue; // already one fold: raising its cut-off frees nothing
    fold(m, pattern, [...replaced, ...(m.folds.has(pattern) ? [pattern] : [])], tags, cutoff);
    decisions.push({ scope: 'agent', patterns: [pattern], agentKey: a.key, cutoff, replaced: [...replaced, ...tags] });
  }
  // Every agent folded and still too big: fewer fold statements, by moving the earliest cut-off to the next one.
  for (;;) {
    if (size(m) <= budget) break;
    const cutoffs = [...new Set([...m.folds.values()].map((f) => f.cutoff))].sort((x, y) => x - y);
    if (cutoffs.length < 2) break;
    const [from, to] = [cutoffs[0]!, cutoffs[1]!];
    const moved = [...m.folds].filter(([, f]) => f.cutoff === from);
    for (const [p, f] of moved) m.folds.set(p, { cutoff: to, end: f.end });
    decisions.push({ scope: 'regroup', patterns: moved.map(([p]) => p), cutoff: to, replaced: [] });
  }
  return { decisions, fits: size(m) <= budget };
}
