/** ISO-8601 at whole seconds, the form IAM date conditions use. */
export const isoSeconds = (ms: number) => new Date(Math.floor(ms / 1000) * 1000).toISOString().replace('.000Z', 'Z');

/** STS's longest session (12 h): nothing issued before an instant is valid longer than this after it. */
export const MAX_SESSION_MS = 43_200_000;
/** Session and task entries are grouped into one statement per window of end-of-life. */
export const WINDOW_MS = 900_000;

const ceilTo = (ms: number, step: number) => Math.ceil(ms / step) * step;

/**
 * The broker's inline Deny policy on one role, as data. The policy in IAM is
 * the durable record: every statement says in its `Sid` until when it is
 * needed (`Jit<Kind>Until<epoch seconds>`), so any worker, with or without
 * Redis, can tell what may go.
 */
export interface DenyModel {
  /**
   * `aws:userid` patterns → end of life (epoch ms, window-aligned): one
   * revoked session (`*:<session name>`), or every session of an ended task
   * (`*:jit-<agent key>-<task key>-*`: it says whose task it is, so it can be
   * counted and folded from the policy text alone, deny-fold.ts).
   */
  sessions: Map<string, number>;
  /**
   * `task` session-tag values → end of life (epoch ms, window-aligned).
   * Written for ended tasks by earlier versions (and still for sessions whose
   * names carry no keys); read and pruned, foldable only via deny-owners.ts.
   */
  tasks: Map<string, number>;
  /** SourceIdentity → TokenIssueTime cut-off (epoch ms, whole second); end of life = cut-off + 12 h. */
  agents: Map<string, number>;
  /**
   * Folded entries (deny-fold.ts): `aws:userid` wildcards on one task's
   * (`*:jit-<agent key>-<task key>-*`) or one agent's (`*:jit-<agent key>-*`)
   * session names → the TokenIssueTime cut-off they apply before, and the end
   * of life of the entries folded into them.
   */
  folds: Map<string, Fold>;
  /** The overflow fallback: every session issued before this; end of life = cut-off + 12 h. */
  cutoff: number | undefined;
  /** Statements the broker did not write (or no longer recognises): kept verbatim, never dropped. */
  foreign: unknown[];
}

/** One folded entry: sessions matching it issued before `cutoff` are denied until `end` (epoch ms). */
export interface Fold {
  cutoff: number;
  end: number;
}

/** What is known about one session that must be denied until it expires. */
export interface SessionFacts {
  /** Its `aws:userid` pattern: `*:<session name>`. */
  userId: string;
  /** Latest moment it may be valid (STS's Expiration, or the bound known before the call). */
  expiresAt: number;
  taskTag?: string | undefined;
  sourceIdentity?: string | undefined;
  /** Its TokenIssueTime (Expiration - DurationSeconds); unknown when issuance was interrupted. */
  tokenIssuedAt?: number | undefined;
}

/**
 * STS reports Expiration to the second and TokenIssueTime may carry a
 * fraction; a cut-off this far past the computed issue time is surely after it.
 */
export const ISSUE_TIME_SLACK_MS = 2000;

export const emptyModel = (): DenyModel => ({
  sessions: new Map(),
  tasks: new Map(),
  agents: new Map(),
  folds: new Map(),
  cutoff: undefined,
  foreign: [],
});

const OWN_SID = /^Jit(Sessions|Tasks|Agents|Folds|Cutoff)Until(\d{1,12})$/;
const DENY_ALL = { Effect: 'Deny', Action: '*', Resource: '*' } as const;

type Json = Record<string, unknown>;
const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const strings = (v: unknown): string[] | undefined =>
  typeof v === 'string' ? [v] : Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'string') ? (v as string[]) : undefined;
const sameKeys = (o: Json, keys: string[]) => Object.keys(o).length === keys.length && keys.every((k) => k in o);

/** The one condition block of a statement written by the broker, or undefined when it is shaped otherwise. */
function ownCondition(st: Json, blocks: Record<string, string>): Record<string, string[]> | undefined {
  if (!sameKeys(st, ['Sid', 'Effect', 'Action', 'Resource', 'Condition'])) return undefined;
  if (st.Effect !== 'Deny' || strings(st.Action)?.join() !== '*' || strings(st.Resource)?.join() !== '*') return undefined;
  const cond = st.Condition;
  if (!isObject(cond) || !sameKeys(cond, Object.keys(blocks))) return undefined;
  const out: Record<string, string[]> = {};
  for (const [op, key] of Object.entries(blocks)) {
    const block = cond[op];
    if (!isObject(block) || !sameKeys(block, [key])) return undefined;
    const values = strings(block[key]);
    if (!values) return undefined;
    out[op] = values;
  }
  return out;
}

const dateOf = (values: string[] | undefined): number | undefined => {
  if (values?.length !== 1) return undefined;
  const t = Date.parse(values[0]!);
  return Number.isNaN(t) ? undefined : t;
};

const raise = (m: Map<string, number>, key: string, value: number) => m.set(key, Math.max(m.get(key) ?? 0, value));

/** Keeps a fold at least as wide (the later cut-off) and as long (the later end) as both. */
export function raiseFold(m: Map<string, Fold>, pattern: string, f: Fold): void {
  const had = m.get(pattern);
  m.set(pattern, had ? { cutoff: Math.max(had.cutoff, f.cutoff), end: Math.max(had.end, f.end) } : { ...f });
}

/** Reads one statement into the model; false when it is not one of the broker's. */
function readOwn(st: Json, m: DenyModel, now: number): boolean {
  const sid = typeof st.Sid === 'string' ? st.Sid : '';
  const own = OWN_SID.exec(sid);
  if (own) {
    const kind = own[1]!;
    const end = Number(own[2]) * 1000;
    if (kind === 'Sessions') {
      const c = ownCondition(st, { StringLike: 'aws:userid' });
      if (!c) return false;
      for (const v of c.StringLike!) raise(m.sessions, v, end);
      return true;
    }
    if (kind === 'Tasks') {
      const c = ownCondition(st, { StringEquals: 'aws:PrincipalTag/task' });
      if (!c) return false;
      for (const v of c.StringEquals!) raise(m.tasks, v, end);
      return true;
    }
    if (kind === 'Folds') {
      const c = ownCondition(st, { StringLike: 'aws:userid', DateLessThan: 'aws:TokenIssueTime' });
      const at = dateOf(c?.DateLessThan);
      if (!c || at === undefined) return false;
      for (const v of c.StringLike!) raiseFold(m.folds, v, { cutoff: at, end });
      return true;
    }
    if (kind === 'Agents') {
      const c = ownCondition(st, { StringEquals: 'aws:SourceIdentity', DateLessThan: 'aws:TokenIssueTime' });
      const at = dateOf(c?.DateLessThan);
      if (!c || at === undefined) return false;
      for (const v of c.StringEquals!) raise(m.agents, v, at);
      return true;
    }
    const c = ownCondition(st, { DateLessThan: 'aws:TokenIssueTime' });
    const at = dateOf(c?.DateLessThan);
    if (at === undefined) return false;
    m.cutoff = Math.max(m.cutoff ?? 0, at);
    return true;
  }
  // Written by earlier versions, which kept the expiries in Redis only: assume the longest a session can live.
  if (sid === 'DenyRevokedSessions') {
    const c = ownCondition(st, { StringEquals: 'aws:userid' });
    if (!c) return false;
    for (const v of c.StringEquals!) raise(m.sessions, v, ceilTo(now + MAX_SESSION_MS, WINDOW_MS));
    return true;
  }
  if (sid === 'DenyOlderSessions') {
    const at = dateOf(ownCondition(st, { DateLessThan: 'aws:TokenIssueTime' })?.DateLessThan);
    if (at === undefined) return false;
    m.cutoff = Math.max(m.cutoff ?? 0, at);
    return true;
  }
  return false;
}

/** Parses a policy document (as IAM returns it, decoded) into the model; undefined or '' is no policy. */
export function parseDenyPolicy(text: string | undefined | null, now: number): DenyModel {
  const m = emptyModel();
  if (!text) return m;
  const doc: unknown = JSON.parse(text);
  const raw = isObject(doc) ? doc.Statement : undefined;
  const statements = Array.isArray(raw) ? raw : raw === undefined ? [] : [raw];
  for (const st of statements) if (!isObject(st) || !readOwn(st, m, now)) m.foreign.push(st);
  return m;
}

/** Everything either model denies (the later end, the later cut-off). */
export function mergeModels(a: DenyModel, b: DenyModel): DenyModel {
  const m = emptyModel();
  for (const src of [a, b]) {
    for (const [k, v] of src.sessions) raise(m.sessions, k, v);
    for (const [k, v] of src.tasks) raise(m.tasks, k, v);
    for (const [k, v] of src.agents) raise(m.agents, k, v);
    for (const [k, f] of src.folds) raiseFold(m.folds, k, f);
    if (src.cutoff !== undefined) m.cutoff = Math.max(m.cutoff ?? 0, src.cutoff);
  }
  const seen = new Set<string>();
  for (const st of [...a.foreign, ...b.foreign]) {
    const key = JSON.stringify(st);
    if (!seen.has(key)) m.foreign.push(st);
    seen.add(key);
  }
  return m;
}

/** The model's own entries only (statements not written by the broker left out). */
export const ownOnly = (m: DenyModel): DenyModel => ({ ...mergeModels(m, emptyModel()), foreign: [] });

/** The latest end of life among the model's own entries (epoch ms); undefined when it has none. */
export function lastEnd(m: DenyModel): number | undefined {
  const ends = [
    ...m.sessions.values(),
    ...m.tasks.values(),
    ...[...m.agents.values()].map((at) => at + MAX_SESSION_MS),
    ...[...m.folds.values()].map((f) => f.end),
    ...(m.cutoff === undefined ? [] : [m.cutoff + MAX_SESSION_MS]),
  ];
  return ends.length === 0 ? undefined : Math.max(...ends);
}

/**
 * Whether `m` denies at least what `ledger` does, each entry as long (the broker's own entries; a
 * statement added by hand is not the broker's to keep). Compared as documents: merging the ledger in
 * changes nothing exactly when every entry of it is already there with an end at least as late.
 */
export function covers(m: DenyModel, ledger: DenyModel): boolean {
  return renderDenyPolicy(ownOnly(mergeModels(m, ledger))) === renderDenyPolicy(ownOnly(m));
}

/** Whether the model already denies this session until it expires. */
export function denies(m: DenyModel, s: SessionFacts): boolean {
  if ((m.sessions.get(s.userId) ?? 0) >= s.expiresAt) return true;
  // An ended task's wildcard denies all of its sessions (no time condition: none can be issued after the task ended).
  for (const [pattern, end] of m.sessions) if (end >= s.expiresAt && foldMatches(pattern, s.userId)) return true;
  if (s.taskTag !== undefined && (m.tasks.get(s.taskTag) ?? 0) >= s.expiresAt) return true;
  if (s.tokenIssuedAt === undefined) return false;
  // A TokenIssueTime cut-off outlives every session issued before it (12 h is STS's maximum).
  const needed = s.tokenIssuedAt + ISSUE_TIME_SLACK_MS;
  for (const [pattern, f] of m.folds) if (f.cutoff >= needed && f.end >= s.expiresAt && foldMatches(pattern, s.userId)) return true;
  if (s.sourceIdentity !== undefined && (m.agents.get(s.sourceIdentity) ?? 0) >= needed) return true;
  return (m.cutoff ?? 0) >= needed;
}

export const addSession = (m: DenyModel, userId: string, until: number) => raise(m.sessions, userId, ceilTo(until, WINDOW_MS));
/** Denies every session of an ended task: its wildcard `*:jit-<agent key>-<task key>-*` (deny-fold.ts), no time condition. */
export const addTaskSessions = (m: DenyModel, pattern: string, until: number) => raise(m.sessions, pattern, ceilTo(until, WINDOW_MS));
/** An ended task's `task` tag: only for session names without keys (earlier versions). */
export const addTask = (m: DenyModel, tag: string, until: number) => raise(m.tasks, tag, ceilTo(until, WINDOW_MS));

/**
 * How much later than its own cut-off an agent may be given another agent's, so that agents revoked together
 * (each worker's bound of AWS's clock a little different) share one statement. Later only: it denies the agent's
 * sessions issued in that moment after its kill, as the bound of AWS's clock may already (aws-clock.ts).
 */
const SHARED_CUTOFF_LATE_MS = 2000;

/**
 * Denies the agent's sessions issued before the revocation: the cut-off is
 * `now` (the revocation, on AWS's clock, to the second), or later if this
 * session was issued later. Another agent's cut-off at most a moment later is
 * reused, so agents revoked together share one statement. Never an earlier one,
 * even one covering this session: the cut-off also denies the sessions the
 * broker never recorded (chained, keeping the SourceIdentity), and one up to a
 * minute early (as was reused) spared those the agent made in that minute.
 */
export function addAgent(m: DenyModel, sourceIdentity: string, tokenIssuedAt: number, now: number): void {
  const needed = tokenIssuedAt + ISSUE_TIME_SLACK_MS;
  const target = Math.max(ceilTo(now, 1000), ceilTo(needed, 1000));
  const shared = [...new Set(m.agents.values())].filter((c) => c >= target && c <= target + SHARED_CUTOFF_LATE_MS);
  raise(m.agents, sourceIdentity, shared.length > 0 ? Math.min(...shared) : target);
}

/** Whether a fold (`*:jit-<keys>-*`, a trailing wildcard only) matches a session's `*:<session name>`. */
export const foldMatches = (pattern: string, userId: string) => pattern.endsWith('*') && userId.startsWith(pattern.slice(0, -1));

/** Drops what has certainly expired (end of life + skew before now); returns how many entries went. */
export function pruneModel(m: DenyModel, now: number, skewMs: number): number {
  let dropped = 0;
  const gone = (end: number) => end + skewMs <= now;
  for (const map of [m.sessions, m.tasks]) {
    for (const [k, end] of map) if (gone(end)) dropped += Number(map.delete(k));
  }
  if (m.cutoff !== undefined && gone(m.cutoff + MAX_SESSION_MS)) {
    m.cutoff = undefined;
    dropped++;
  }
  // An agent's (or a fold's) cut-off no later than the role-wide one denies nothing more.
  for (const [k, at] of m.agents) if (gone(at + MAX_SESSION_MS) || at <= (m.cutoff ?? 0)) dropped += Number(m.agents.delete(k));
  for (const [k, f] of m.folds) if (gone(f.end) || f.cutoff <= (m.cutoff ?? 0)) dropped += Number(m.folds.delete(k));
  return dropped;
}

/** Whether pruning would drop anything (so a write is worth it). */
export function prunable(m: DenyModel, now: number, skewMs: number): boolean {
  const copy = mergeModels(m, emptyModel());
  return pruneModel(copy, now, skewMs) > 0;
}

/** Groups a map's keys by their end of life. */
function byEnd(map: Map<string, number>): [number, string[]][] {
  const groups = new Map<number, string[]>();
  for (const [k, end] of map) groups.set(end, [...(groups.get(end) ?? []), k]);
  return [...groups.entries()].sort((a, b) => a[0] - b[0]).map(([end, keys]) => [end, keys.sort()]);
}

/**
 * The policy document for a model (compact JSON, deterministic), or
 * undefined when it denies nothing. Statement order: cut-off, agents, folds,
 * tasks, sessions, then foreign statements.
 */
export function renderDenyPolicy(m: DenyModel): string | undefined {
  const taken = new Set(m.foreign.map((st) => (isObject(st) && typeof st.Sid === 'string' ? st.Sid : '')));
  const sid = (kind: string, endMs: number) => {
    // A foreign statement (one of ours edited by hand) may hold the name: a later end is always safe.
    let s = Math.ceil(endMs / 1000);
    while (taken.has(`Jit${kind}Until${s}`)) s++;
    taken.add(`Jit${kind}Until${s}`);
    return `Jit${kind}Until${s}`;
  };
  const statements: unknown[] = [];
  if (m.cutoff !== undefined) {
    statements.push({
      Sid: sid('Cutoff', m.cutoff + MAX_SESSION_MS),
      ...DENY_ALL,
      Condition: { DateLessThan: { 'aws:TokenIssueTime': isoSeconds(m.cutoff) } },
    });
  }
  for (const [at, ids] of byEnd(m.agents)) {
    statements.push({
      Sid: sid('Agents', at + MAX_SESSION_MS),
      ...DENY_ALL,
      Condition: { StringEquals: { 'aws:SourceIdentity': ids }, DateLessThan: { 'aws:TokenIssueTime': isoSeconds(at) } },
    });
  }
  // One statement per cut-off; its Sid carries the latest end among its folds (later is always safe).
  const folds = new Map<number, { end: number; patterns: string[] }>();
  for (const [pattern, f] of m.folds) {
    const g = folds.get(f.cutoff) ?? { end: 0, patterns: [] };
    g.end = Math.max(g.end, f.end);
    g.patterns.push(pattern);
    folds.set(f.cutoff, g);
  }
  for (const [at, g] of [...folds.entries()].sort((a, b) => a[0] - b[0])) {
    statements.push({
      Sid: sid('Folds', g.end),
      ...DENY_ALL,
      Condition: { StringLike: { 'aws:userid': g.patterns.sort() }, DateLessThan: { 'aws:TokenIssueTime': isoSeconds(at) } },
    });
  }
  for (const [end, tags] of byEnd(m.tasks)) {
    statements.push({ Sid: sid('Tasks', end), ...DENY_ALL, Condition: { StringEquals: { 'aws:PrincipalTag/task': tags } } });
  }
  for (const [end, ids] of byEnd(m.sessions)) {
    statements.push({ Sid: sid('Sessions', end), ...DENY_ALL, Condition: { StringLike: { 'aws:userid': ids } } });
  }
  statements.push(...m.foreign);
  return statements.length === 0 ? undefined : JSON.stringify({ Version: '2012-10-17', Statement: statements });
}

/**
 * Saves one statement by merging the two session or task groups whose ends
 * are closest (the earlier group is kept until the later end: later is always
 * safe). False when no group can be merged any more.
 */
export function coarsen(m: DenyModel): boolean {
  let best: { map: Map<string, number>; from: number; to: number } | undefined;
  for (const map of [m.sessions, m.tasks]) {
    const ends = [...new Set(map.values())].sort((a, b) => a - b);
    for (let i = 1; i < ends.length; i++) {
      const gap = ends[i]! - ends[i - 1]!;
      if (!best || gap < best.to - best.from) best = { map, from: ends[i - 1]!, to: ends[i]! };
    }
  }
  if (!best) return false;
  for (const [k, end] of best.map) if (end === best.from) best.map.set(k, best.to);
  return true;
}

/** Size as IAM counts it: the document without insignificant whitespace. */
export const policySize = (text: string) => JSON.stringify(JSON.parse(text)).length;
