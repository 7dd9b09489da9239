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
 * Order (the agent taking the most room first, so a busy agent pays for its
 * own revocations): that agent's tasks with more than one entry, most room
 * first, then the agent as a whole; then the next agent. Folding goes on to
 * a target below the budget, so the next revocations do not fold again at
 * once. Only if every agent is folded and it still does
 * not fit are fold statements of different cut-offs merged (raising the
 * earlier cut-off: wider, but still only for folded principals).
 */

const KEY = (n: number) => `[a-z2-7]{${n}}`;
const SESSION = new RegExp(`^\\*:jit-(${KEY(AGENT_KEY_CHARS)})-(${KEY(TASK_KEY_CHARS)})-[^*?]+$`);
const TASK_FOLD = new RegExp(`^\\*:jit-(${KEY(AGENT_KEY_CHARS)})-(${KEY(TASK_KEY_CHARS)})-\\*$`);
const AGENT_FOLD = new RegExp(`^\\*:jit-(${KEY(AGENT_KEY_CHARS)})-\\*$`);

export const taskFoldPattern = (agentKey: string, taskKey: string) => `*:jit-${agentKey}-${taskKey}-*`;
export const agentFoldPattern = (agentKey: string) => `*:jit-${agentKey}-*`;

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
  /** The revoked sessions' entries (`*:<session name>`) and earlier folds replaced. */
  replaced: string[];
}

/** Characters an entry takes in a statement's list: the JSON string and a comma. */
const cost = (s: string) => JSON.stringify(s).length + 1;

interface TaskGroup {
  key: string;
  sessions: string[];
  fold?: string;
  room: number;
}
interface AgentGroup {
  key: string;
  tasks: Map<string, TaskGroup>;
  fold?: string;
  room: number;
}

/** The model's foldable entries, by agent key and task key (entries of older session names are not foldable). */
function groups(m: DenyModel): AgentGroup[] {
  const agents = new Map<string, AgentGroup>();
  const agent = (key: string): AgentGroup => {
    const g = agents.get(key) ?? { key, tasks: new Map(), room: 0 };
    agents.set(key, g);
    return g;
  };
  const task = (a: AgentGroup, key: string): TaskGroup => {
    const g = a.tasks.get(key) ?? { key, sessions: [], room: 0 };
    a.tasks.set(key, g);
    return g;
  };
  for (const id of m.sessions.keys()) {
    const k = SESSION.exec(id);
    if (!k) continue;
    const a = agent(k[1]!);
    const t = task(a, k[2]!);
    t.sessions.push(id);
    t.room += cost(id);
    a.room += cost(id);
  }
  for (const pattern of m.folds.keys()) {
    const tk = TASK_FOLD.exec(pattern);
    const ak = AGENT_FOLD.exec(pattern);
    if (tk) {
      const a = agent(tk[1]!);
      const t = task(a, tk[2]!);
      t.fold = pattern;
      t.room += cost(pattern);
      a.room += cost(pattern);
    } else if (ak) agent(ak[1]!).fold = pattern;
  }
  return [...agents.values()].sort((x, y) => y.room - x.room || (x.key < y.key ? -1 : 1));
}

/** Replaces `replaced` by one fold; the fold lives as long as the longest of them. */
function fold(m: DenyModel, pattern: string, replaced: string[], cutoff: number): void {
  let end = 0;
  for (const id of replaced) {
    end = Math.max(end, m.sessions.get(id) ?? 0, m.folds.get(id)?.end ?? 0);
    m.sessions.delete(id);
    if (id !== pattern) m.folds.delete(id);
  }
  raiseFold(m.folds, pattern, { cutoff, end });
}

/**
 * Folds entries of `m` (in place) until `size(m) <= target`, or as far as it
 * goes; then, if still above `budget`, merges fold cut-offs. Returns what it
 * decided, and whether the result is within `budget`.
 */
export function foldToFit(
  m: DenyModel,
  size: (m: DenyModel) => number,
  budget: number,
  target: number,
  cutoff: number,
): { decisions: FoldDecision[]; fits: boolean } {
  const decisions: FoldDecision[] = [];
  for (const a of groups(m)) {
    if (size(m) <= target) break;
    // A task with one revoked session is not worth widening on its own (it frees some 30 chars): the agent fold takes it.
    const tasks = [...a.tasks.values()]
      .filter((t) => t.sessions.length + (t.fold ? 1 : 0) > 1)
      .sort((x, y) => y.room - x.room || (x.key < y.key ? -1 : 1));
    for (const t of tasks) {
      if (size(m) <= target) break;
      const pattern = taskFoldPattern(a.key, t.key);
      const replaced = [...t.sessions, ...(t.fold ? [t.fold] : [])];
      fold(m, pattern, replaced, cutoff);
      decisions.push({ scope: 'task', patterns: [pattern], agentKey: a.key, taskKey: t.key, cutoff, replaced });
    }
    if (size(m) <= target) break;
    const pattern = agentFoldPattern(a.key);
    const replaced = [...m.sessions.keys(), ...m.folds.keys()].filter(
      (id) => id !== pattern && (SESSION.exec(id)?.[1] === a.key || TASK_FOLD.exec(id)?.[1] === a.key),
    );
    if (replaced.length === 0) continue; // already one fold: raising its cut-off frees nothing
    fold(m, pattern, [...replaced, ...(m.folds.has(pattern) ? [pattern] : [])], cutoff);
    decisions.push({ scope: 'agent', patterns: [pattern], agentKey: a.key, cutoff, replaced });
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
