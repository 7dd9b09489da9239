import {
  DeleteRolePolicyCommand,
  GetRolePolicyCommand,
  ListRolePoliciesCommand,
  PutRolePolicyCommand,
  type ListRolePoliciesCommandOutput,
} from '@aws-sdk/client-iam';
import type { AuditEvent } from '../../audit/record.ts';
import type { RedisClient } from '../../redis/scripts.ts';
import { RetryableUpstreamError } from '../../errors.ts';
import type { Logger } from '../../logger.ts';
import type { AwsClients } from './clients.ts';
import type { AwsSettings } from './config.ts';
import {
  addAgent,
  addSession,
  addTask,
  addTaskSessions,
  coarsen,
  covers,
  denies,
  type DenyModel,
  emptyModel,
  isoSeconds,
  lastEnd,
  mergeModels,
  ownOnly,
  parseDenyPolicy,
  policySize,
  prunable,
  pruneModel,
  renderDenyPolicy,
  type SessionFacts,
} from './deny-policy.ts';
import { type HeldLock, reportTakeover, withLock } from '../../redis/lock.ts';
import { type FoldDecision, foldToFit, ownerOfSession, type TaskOwners, taskFoldPattern } from './deny-fold.ts';
import { ownersToStore, parseOwners } from './deny-owners.ts';
import { roleNameFromArn } from './role-info.ts';
import { agentKeyFor, taskKeyFor } from './session-name.ts';
import { awsErrorCode, classify, isTransient } from './upstream.ts';

/**
 * Reported when a role's deny list did not fit and entries were folded: the
 * revoked sessions (and ended tasks) of one task or agent replaced by a
 * wildcard on its session names, which also denies its unrevoked sessions
 * issued before the cut-off.
 */
export interface DenyFoldEvent {
  roleArn: string;
  /** `task` or `agent`: what was widened; `regroup`: earlier folds moved to a later cut-off. */
  scope: FoldDecision['scope'];
  /** The `aws:userid` wildcards written (for `regroup`, those whose cut-off was raised). */
  patterns: string[];
  /** Sessions matching `patterns` issued before this instant are denied, revoked or not. */
  cutoff: string;
  /** The agent and task keys of the session names widened to (session-name.ts). */
  agentKey?: string;
  taskKey?: string;
  /** The agent and task behind the keys, when the revocation that overflowed was theirs. */
  agent?: string;
  taskId?: string;
  /** How many entries (revoked sessions, earlier folds, ended tasks' wildcards or tags) were replaced, and the first lease ids among them. */
  replacedEntries: number;
  leaseIds: string[];
  reason: 'policy_size' | 'iam_limit';
}

/** Reported when a role's deny list no longer fits and the broker falls back to a TokenIssueTime cut-off. */
export interface DenyFallbackEvent {
  roleArn: string;
  /** Every session of the role issued before this instant is now denied, revoked or not. */
  cutoff: string;
  /** Entries the cut-off replaced. */
  droppedEntries: number;
  reason: 'policy_size' | 'iam_limit';
}

/** What one revocation denies: the session alone, its whole task, or its agent's sessions issued up to now. */
/** `at` (agent): the cut-off, when the revocation was asked for (sessions issued later are spared); default now. */
export type DenyUnit = { kind: 'session' } | { kind: 'task'; until: number } | { kind: 'agent'; at?: number };

export interface DenyListDeps {
  settings: AwsSettings;
  clients: AwsClients;
  redis: RedisClient;
  keyPrefix: string;
  logger: Logger;
  clock: () => number;
  onFallback?: (e: DenyFallbackEvent) => void | Promise<void>;
  onFold?: (e: DenyFoldEvent) => void | Promise<void>;
  /** Audits a role lock taken over from a key no broker could have set (src/redis/lock.ts). */
  audit?: (event: AuditEvent) => Promise<void>;
}

/** Who the revocation being written is for: names the agent and task behind fold keys in reports. */
interface Revoking {
  agent?: string | undefined;
  taskId?: string | undefined;
}

/** IAM's quota for all inline policies of one role together. */
const IAM_ROLE_INLINE_CHARS = 10_240;
/** Room kept free when sizing against other inline policies (IAM's count may differ slightly from ours). */
const IAM_SIZE_SLACK = 64;
/** Fold and fallback cut-offs lie at least this far ahead of now (and at least clockSkewSeconds), so no entry they replace is left after them. */
const MIN_LEAD_MS = 5000;
/** Folding stops once the document is this share of its budget: room for the next revocations without folding again at once. */
const FOLD_TARGET = 0.8;
/** Lease ids named in one fold report (the rest are counted). */
const REPORTED_LEASES = 20;
/**
 * The role's lock is set for `holdMs` and kept extended while a write runs (the slowest IAM round trip with
 * retries; `held()` catches the rest), so a worker killed mid-write (SIGKILL while its PutRolePolicy was on the
 * wire) holds the role for `holdMs`: within the next writer's `waitMs`, so no revocation on the role fails
 * `revocation_busy` and sessions of ended tasks are denied seconds later, not a minute (the chaos test found
 * this). `ttlMs` is the previous release's TTL, set unextended: a lock that long is still a broker's, waited for
 * during a rolling upgrade rather than taken over (and reported as one no broker could have set). Lower it to
 * `holdMs` once no such release runs.
 */
const LOCK = { ttlMs: 60_000, holdMs: 10_000, waitMs: 15_000 };
/** How long "IAM holds no deny of ours" is remembered (saves a GetRolePolicy per TTL expiry on such a role). */
const EMPTY_TTL_MS = 15 * 60_000;
const ROUNDS = 3;

/**
 * The per-role inline Deny policy that revokes STS sessions.
 *
 * IAM is the durable record: each write reads the policy (`GetRolePolicy`),
 * merges, drops only what has certainly expired (the end of life is in each
 * statement's Sid) and writes the whole policy back, so losing Redis loses no
 * deny. Redis holds a per-role lock and the ledger: the broker's own entries
 * as last written, kept as long as the latest of them must last. The ledger
 * answers "already denied" without calling IAM (a task's hundreds of sessions
 * cost one write) and is merged into every write, covering IAM's
 * read-after-write lag between workers. A write whose lock lapsed meanwhile
 * is merged and written again; the ledger is written only while the lock is
 * ours (lock-fenced-write.lua).
 *
 * The lock orders the writers that are alive, not the requests on the wire,
 * and IAM has no conditional write: an attempt that timed out (retried, the
 * writer gone on) can still land after a later document and put back one
 * without that writer's deny. So `verifyAll` (the sweeper's reconcile pass,
 * every `revocationVerifySeconds` per role) re-reads each role that has a
 * ledger and writes back whatever deny of it IAM no longer holds.
 *
 * When the document outgrows its budget, statements with close ends are
 * merged (keeping the later end); then the entries of one task, or of one
 * agent (revoked sessions, ended tasks), are folded into a wildcard on
 * their session names, the agent taking the most room first (deny-fold.ts,
 * deny-owners.ts; each fold logged and
 * reported to `onFold`); only if that is not enough does everything collapse
 * into one `aws:TokenIssueTime` cut-off, which also cuts off the role's
 * unrevoked older sessions of every agent: logged at error level and reported
 * to `onFallback`.
 */
export class DenyList {
  private readonly d: DenyListDeps;

  constructor(deps: DenyListDeps) {
    this.d = deps;
  }

  /**
   * The role's keys. The ledger's hash tag is the lock's whole name, so both are in one slot (a Redis
   * Cluster hashes only the tag): the ledger is written by a script that checks the lock in the same step.
   * The lock keeps the name earlier versions use, so they and this one never write at once.
   */
  keys(roleArn: string) {
    const base = `${this.d.keyPrefix}:aws:deny:${roleArn}`;
    const lock = `${base}:lock`;
    return { ledger: `${this.d.keyPrefix}:aws:deny-ledger:{${lock}}`, lock, owners: `${base}:owners`, verified: `${base}:verified` };
  }

  /** The roles that have a ledger, scored by when it expires (what `verifyAll` looks at). */
  private get rolesKey(): string {
    return `${this.d.keyPrefix}:aws:deny-roles`;
  }

  private get skewMs(): number {
    return this.d.settings.clockSkewSeconds * 1000;
  }

  /**
   * Makes sure the session is denied until it expires, widening to `unit`
   * when something has to be written. Idempotent: 'covered' when nothing was
   * written because the policy already denies the session.
   */
  async deny(roleArn: string, session: SessionFacts, unit: DenyUnit, who: Revoking = {}): Promise<'covered' | 'written'> {
    if (denies(await this.cached(roleArn), session)) return 'covered';
    // An ended task is denied by the wildcard on its session names, which says whose task it is (deny-fold.ts):
    // folding it needs nothing but the policy text. Names of earlier versions carry no keys: their task's tag.
    const owner = ownerOfSession(session.userId);
    return this.update(
      roleArn,
      (m) => {
        if (denies(m, session)) return;
        const now = this.d.clock();
        const until = unit.kind === 'task' ? Math.max(unit.until, session.expiresAt) : 0;
        if (unit.kind === 'task' && owner) addTaskSessions(m, taskFoldPattern(owner.agentKey, owner.taskKey), until);
        else if (unit.kind === 'task' && session.taskTag !== undefined) addTask(m, session.taskTag, until);
        else if (unit.kind === 'agent' && session.sourceIdentity !== undefined && session.tokenIssuedAt !== undefined)
          addAgent(m, session.sourceIdentity, session.tokenIssuedAt, this.onAwsClock(unit.at ?? now, now));
        else addSession(m, session.userId, session.expiresAt);
      },
      who,
    );
  }

  /**
   * The instant `at` of the broker's clock (`now` there now) on AWS's, at most: IAM compares a cut-off with
   * TokenIssueTime on AWS's clock (aws-clock.ts; the lock's IAM read has just given a fresh `Date`). Moved by no
   * more than `clockSkewSeconds` either way: a `Date` further off than the skew the operator allows is not
   * trusted (a cut-off hours early would let sessions through, hours late deny every new one). With no answer
   * yet, `at` as it is.
   */
  private onAwsClock(at: number, now: number): number {
    const aws = this.d.clients.awsClock.upperNow();
    if (aws === undefined) return at;
    return at + Math.min(this.skewMs, Math.max(-this.skewMs, aws - now));
  }

  /** Drops statements whose end of life (plus skew) has passed; writes IAM only if something goes. */
  async prune(roleArn: string): Promise<void> {
    const k = this.keys(roleArn);
    const now = this.d.clock();
    let model: DenyModel;
    const text = await this.d.redis.get(k.ledger);
    if (text === null) {
      // No ledger (a restart, a wiped Redis): IAM knows. Remember what it holds, without replacing a newer ledger.
      model = parseDenyPolicy(await this.readIam(roleArn), now);
      const ledger = this.ledger(model, now);
      await this.d.redis.set(k.ledger, ledger.text, 'PX', ledger.ttlMs, 'NX');
      if (ledger.until !== undefined) await this.d.redis.zadd(this.rolesKey, 'GT', ledger.until, roleArn);
    } else model = parse(text, now);
    if (!prunable(model, now, this.skewMs)) return;
    await this.update(roleArn, () => {});
  }

  /**
   * Writes back any deny of the role's ledger that IAM no longer holds (a write that landed late put back
   * an older document): 'repaired' when it wrote, 'ok' when IAM holds it all, 'none' when there is no ledger.
   */
  async verify(roleArn: string): Promise<'ok' | 'repaired' | 'none'> {
    const now = this.d.clock();
    const ledger = await this.cached(roleArn);
    pruneModel(ledger, now, this.skewMs);
    if (lastEnd(ledger) === undefined) return 'none';
    if (covers(parseDenyPolicy(await this.readIam(roleArn), now), ledger)) return 'ok';
    // Merged and written under the lock, from a second read: one that only lagged behind a write just made
    // (IAM is eventually consistent) finds it all there now, and nothing is written or reported.
    if ((await this.update(roleArn, () => {})) === 'covered') return 'ok';
    this.d.logger.error(
      { roleArn },
      'aws deny list: a deny the broker wrote was missing from the role policy (a write that landed late replaced it); written again',
    );
    return 'repaired';
  }

  /**
   * `verify` for every role with a ledger, each at most once per `revocationVerifySeconds` across all
   * instances (every worker's reconcile pass calls this). Returns how many roles were repaired; a role
   * whose check failed is logged and looked at again at the next pass.
   */
  async verifyAll(): Promise<number> {
    const { redis, logger } = this.d;
    await redis.zremrangebyscore(this.rolesKey, '-inf', this.d.clock());
    let repaired = 0;
    for (const roleArn of await redis.zrange(this.rolesKey, '0', '-1')) {
      const claim = this.keys(roleArn).verified;
      if (!(await redis.set(claim, '1', 'PX', this.d.settings.revocationVerifySeconds * 1000, 'NX'))) continue;
      try {
        if ((await this.verify(roleArn)) === 'repaired') repaired++;
      } catch (err) {
        await redis.del(claim);
        logger.warn({ roleArn, code: awsErrorCode(err) }, 'checking the aws deny list failed; retrying at the next pass');
      }
    }
    return repaired;
  }

  /** What IAM holds for the role now (for tests and ops tooling). */
  async read(roleArn: string): Promise<DenyModel> {
    return parseDenyPolicy(await this.readIam(roleArn), this.d.clock());
  }

  /**
   * The ledger: the broker's own entries as last written (empty when none), with those of the previous
   * release's copy of the document (`<prefix>:aws:deny:<roleArn>:doc`, kept 15 min after its last write).
   * During a rolling upgrade its workers deny sessions on the same roles and write only that copy: without it,
   * a late write of this release's (a worker killed, or a request that timed out, while its document was on
   * the wire) put back a policy without an old worker's deny, `verifyAll` found its own ledger whole, and the
   * denied sessions worked again. Drop it once the previous release no longer writes it.
   */
  private async cached(roleArn: string): Promise<DenyModel> {
    const now = this.d.clock();
    const ledger = parse(await this.d.redis.get(this.keys(roleArn).ledger), now);
    const legacy = await this.d.redis.get(`${this.d.keyPrefix}:aws:deny:${roleArn}:doc`);
    return legacy ? mergeModels(ledger, ownOnly(parse(legacy, now))) : ledger;
  }

  /**
   * Read IAM, merge the remembered copy, apply `change`, prune, write if
   * different; under the role's lock.
   */
  private async update(roleArn: string, change: (m: DenyModel) => void, who: Revoking = {}): Promise<'covered' | 'written'> {
    const k = this.keys(roleArn);
    for (let round = 0; round < ROUNDS; round++) {
      const outcome = await withLock(
        this.d.redis,
        k.lock,
        { ...LOCK, onTakeover: reportTakeover(this.d.logger, this.d.audit) },
        async (lock) => {
          const now = this.d.clock();
          const iamText = await this.readIam(roleArn);
          // What IAM holds must parse: a document we cannot read is never overwritten.
          const model = mergeModels(parseDenyPolicy(iamText, now), await this.cached(roleArn));
          const stored = await this.d.redis.get(k.owners);
          // Owners of ended tasks' tags written by earlier versions (the only entries whose owner the policy does not say).
          const owners = parseOwners(stored);
          change(model);
          pruneModel(model, now, this.skewMs);
          return this.commit(roleArn, model, iamText, lock, who, { owners, stored });
        },
      );
      if (!outcome) throw new RetryableUpstreamError('revocation_busy', `the deny list of ${roleArn} is locked by another worker`);
      if (outcome.value !== 'lost') return outcome.value;
      this.d.logger.warn({ roleArn }, 'aws deny list lock lapsed during a write; merging again');
    }
    throw new RetryableUpstreamError('revocation_busy', `the deny list of ${roleArn} kept changing under the lock`);
  }

  /** Writes the model if it differs from what IAM holds; 'lost' when the lock lapsed around the write. */
  private async commit(
    roleArn: string,
    model: DenyModel,
    iamText: string | undefined,
    lock: HeldLock,
    who: Revoking,
    tags: { owners: TaskOwners; stored: string | null },
  ): Promise<'covered' | 'written' | 'lost'> {
    const now = this.d.clock();
    const { owners } = tags;
    let { doc, fallback, folds } = this.fit(roleArn, model, this.d.settings.revocationPolicyMaxChars, now, 'policy_size', who, owners);
    if (doc === (iamText === undefined ? undefined : JSON.stringify(JSON.parse(iamText)))) {
      if (!(await this.remember(roleArn, model, lock, now))) return 'lost';
      await this.rememberOwners(roleArn, model, tags, now);
      return 'covered';
    }
    // Listed before the write: if this process dies while it is on the wire and it lands late, over another
    // process's deny (the previous release's ones keep no ledger here), `verifyAll` looks at the role.
    const until = this.ledger(model, now).until;
    if (until !== undefined) await this.d.redis.zadd(this.rolesKey, 'GT', until, roleArn);
    if (!(await lock.held())) return 'lost';
    let written: 'written' | 'role_gone';
    try {
      written = await this.write(roleArn, doc);
    } catch (err) {
      if (classify(err) !== 'limit') throw this.failure(err, roleArn);
      // Other inline policies on the role leave less room than the budget assumed: measure it and fit again.
      const room = await this.roomLeft(roleArn);
      const refit = this.fit(roleArn, model, room ?? 0, now, 'iam_limit', who, owners);
      doc = refit.doc;
      fallback = refit.fallback ?? fallback; // the first fit may already have collapsed the list
      folds = [...folds, ...refit.folds];
      if (!(await lock.held())) return 'lost';
      written = await this.write(roleArn, doc).catch((e: unknown) => {
        throw this.failure(e, roleArn);
      });
    }
    // A fallback replaced every fold: it is the one decision in force.
    if (fallback) await this.reportFallback(fallback);
    else for (const f of folds) await this.reportFold(f);
    // A deleted role: AWS refuses its sessions, and there is nothing left to keep denied (or to verify).
    if (!(await this.remember(roleArn, written === 'role_gone' ? emptyModel() : model, lock, now))) return 'lost';
    await this.rememberOwners(roleArn, model, tags, now);
    return written === 'role_gone' ? 'covered' : 'written';
  }

  /**
   * The document for the model within `budget` chars, escalating one step at
   * a time: as is; with close statements merged; with the entries of one
   * task, then one agent, folded (agent taking the most room first; ended
   * tasks' wildcards count to their agent, earlier versions' tags to the owners in `owners`); and only as the last resort
   * collapsed into a role-wide cut-off. Every entry is a session issued
   * before now by the broker's clock, so a cut-off after now plus
   * clockSkewSeconds (by which AWS's clock may be ahead) covers it.
   */
  private fit(
    roleArn: string,
    model: DenyModel,
    budget: number,
    now: number,
    reason: DenyFallbackEvent['reason'],
    who: Revoking,
    owners: TaskOwners,
  ): { doc: string | undefined; fallback?: DenyFallbackEvent; folds: DenyFoldEvent[] } {
    let doc = renderDenyPolicy(model);
    while (doc !== undefined && doc.length > budget && coarsen(model)) doc = renderDenyPolicy(model);
    if (doc === undefined || doc.length <= budget) return { doc, folds: [] };
    // Folded on a copy: if even folding every agent cannot make it fit, the role-wide cut-off replaces all of it.
    const folded = mergeModels(model, emptyModel());
    // A broker clock up to clockSkewSeconds behind AWS's must not leave a folded (or, below, dropped) session after the cut-off.
    const cutoff = Math.ceil((now + Math.max(MIN_LEAD_MS, this.skewMs)) / 1000) * 1000;
    const size = (m: DenyModel) => renderDenyPolicy(m)?.length ?? 0;
    const { decisions, fits } = foldToFit(folded, size, budget, Math.floor(budget * FOLD_TARGET), cutoff, owners);
    if (fits) {
      Object.assign(model, folded);
      return { doc: renderDenyPolicy(model), folds: decisions.map((d) => this.foldEvent(roleArn, d, reason, who)) };
    }
    // As far ahead as a fold's (the entries it drops may be up to clockSkewSeconds younger by AWS's clock than by ours),
    // and never earlier than a fold's cut-off: the role-wide one then covers (and replaces) every fold.
    const at = Math.max(cutoff, ...[...model.folds.values()].map((f) => f.cutoff));
    const before = model.sessions.size + model.tasks.size + model.agents.size + model.folds.size;
    model.sessions.clear();
    model.tasks.clear();
    model.cutoff = Math.max(model.cutoff ?? 0, at);
    pruneModel(model, now, this.skewMs); // drops the agents and folds the cut-off covers
    const dropped = before - model.agents.size - model.folds.size;
    return {
      doc: renderDenyPolicy(model),
      fallback: { roleArn, cutoff: isoSeconds(model.cutoff), droppedEntries: dropped, reason },
      folds: [],
    };
  }

  private foldEvent(roleArn: string, d: FoldDecision, reason: DenyFoldEvent['reason'], who: Revoking): DenyFoldEvent {
    const leaseIds = d.replaced.flatMap((id) => /^\*:jit-[a-z2-7]+-[a-z2-7]+-([^*]+)$/.exec(id)?.[1] ?? []);
    const e: DenyFoldEvent = {
      roleArn,
      scope: d.scope,
      patterns: d.patterns,
      cutoff: isoSeconds(d.cutoff),
      replacedEntries: d.replaced.length,
      leaseIds: leaseIds.slice(0, REPORTED_LEASES),
      reason,
    };
    if (d.agentKey !== undefined) e.agentKey = d.agentKey;
    if (d.taskKey !== undefined) e.taskKey = d.taskKey;
    if (who.agent !== undefined && d.agentKey === agentKeyFor(who.agent)) {
      e.agent = who.agent;
      if (who.taskId !== undefined && d.taskKey === taskKeyFor(who.taskId)) e.taskId = who.taskId;
    }
    return e;
  }

  private async reportFold(event: DenyFoldEvent): Promise<void> {
    this.d.logger.warn(
      event,
      event.scope === 'regroup'
        ? 'aws deny list overflowed: earlier folds moved to a later cut-off'
        : `aws deny list overflowed: revoked sessions of one ${event.scope} folded into one entry, which also denies its unrevoked sessions issued before the cut-off`,
    );
    await this.d.onFold?.(event);
  }

  private async reportFallback(event: DenyFallbackEvent): Promise<void> {
    this.d.logger.error(
      event,
      'aws deny list overflowed: every session of this role issued before the cut-off is now denied, including unrevoked ones',
    );
    await this.d.onFallback?.(event);
  }

  /** The ledger of a model: its own entries' document ('' for none), until when it is needed, and for how long to keep it. */
  private ledger(model: DenyModel, now: number): { text: string; until?: number; ttlMs: number } {
    const end = lastEnd(model);
    if (end === undefined) return { text: '', ttlMs: EMPTY_TTL_MS };
    const until = end + this.skewMs;
    return { text: renderDenyPolicy(ownOnly(model)) ?? '', until, ttlMs: Math.max(1000, until - now) };
  }

  /**
   * Writes the ledger of what was just written, only while the lock is ours (false when it lapsed: the
   * caller merges and writes again), and lists the role for `verifyAll` until the ledger expires.
   */
  private async remember(roleArn: string, model: DenyModel, lock: HeldLock, now: number): Promise<boolean> {
    const ledger = this.ledger(model, now);
    // Listed first: a process that dies between the two steps leaves a role listed with nothing to check, never the reverse.
    if (ledger.until !== undefined) await this.d.redis.zadd(this.rolesKey, 'GT', ledger.until, roleArn);
    return lock.write(this.keys(roleArn).ledger, ledger.text, ledger.ttlMs);
  }

  /** Keeps the owners of the tags left in the written model, as long as the latest of them (deny-owners.ts). */
  private async rememberOwners(roleArn: string, model: DenyModel, tags: { owners: TaskOwners; stored: string | null }, now: number) {
    const { text, ttlMs } = ownersToStore(tags.owners, model, now, this.skewMs);
    const key = this.keys(roleArn).owners;
    if (text !== undefined) await this.d.redis.set(key, text, 'PX', ttlMs);
    else if (tags.stored !== null) await this.d.redis.del(key);
  }

  /**
   * Throws unless the broker's credentials act in the role's account. IAM calls take the role's *name* and
   * act in the caller's account: after an operator moved `providers.aws` to another account (new
   * credentials) while sessions were out, writing by name denied nothing the session was judged by (a role
   * of the same name there got the deny) or answered NoSuchEntity (taken for a deleted role): either way the
   * lease ended `revoked` while the session worked on (test/blackbox/aws-moved.test.ts). A failed attempt
   * instead, retried until the credentials are pointed back or the session expires.
   */
  private async checkAccount(roleArn: string): Promise<void> {
    let owner: { owns: boolean; account: string };
    try {
      owner = await this.d.clients.ownsRole(roleArn);
    } catch (err) {
      throw this.failure(err, roleArn, 'GetCallerIdentity');
    }
    if (owner.owns) return;
    const { account } = owner;
    this.d.logger.error(
      { roleArn, account },
      "the broker's aws credentials act in another account than the role's: its sessions cannot be denied from here",
    );
    throw new RetryableUpstreamError(
      'upstream_wrong_account',
      `the broker's AWS credentials act in account ${account}, not in the account of ${roleArn}: IAM cannot deny its sessions from there`,
    );
  }

  /** The broker's policy on the role as IAM holds it (decoded); undefined when there is none. Every write reads first. */
  private async readIam(roleArn: string): Promise<string | undefined> {
    await this.checkAccount(roleArn);
    const RoleName = roleNameFromArn(roleArn);
    const PolicyName = this.d.settings.revocationPolicyName;
    try {
      const out = await this.d.clients.run((c) => c.iam.send(new GetRolePolicyCommand({ RoleName, PolicyName })));
      // IAM returns policy documents URL-encoded (RFC 3986).
      return out.PolicyDocument ? decodeURIComponent(out.PolicyDocument) : undefined;
    } catch (err) {
      if (classify(err) === 'not_found') return undefined;
      throw this.failure(err, roleArn, 'GetRolePolicy');
    }
  }

  /** 'role_gone' when IAM has no such role (PutRolePolicy: NoSuchEntity). */
  private async write(roleArn: string, doc: string | undefined): Promise<'written' | 'role_gone'> {
    const RoleName = roleNameFromArn(roleArn);
    const PolicyName = this.d.settings.revocationPolicyName;
    try {
      if (doc === undefined) await this.d.clients.run((c) => c.iam.send(new DeleteRolePolicyCommand({ RoleName, PolicyName })));
      else await this.d.clients.run((c) => c.iam.send(new PutRolePolicyCommand({ RoleName, PolicyName, PolicyDocument: doc })));
      return 'written';
    } catch (err) {
      // The policy is already gone, or the role is: a deleted role's sessions are refused by AWS anyway.
      if (classify(err) === 'not_found') return doc === undefined ? 'written' : 'role_gone';
      throw err;
    }
  }

  /** Characters left for our policy next to the role's other inline policies; undefined when IAM will not say. */
  private async roomLeft(roleArn: string): Promise<number | undefined> {
    const RoleName = roleNameFromArn(roleArn);
    try {
      let used = 0;
      let Marker: string | undefined;
      do {
        const page: ListRolePoliciesCommandOutput = await this.d.clients.run((c) =>
          c.iam.send(new ListRolePoliciesCommand({ RoleName, ...(Marker ? { Marker } : {}) })),
        );
        for (const PolicyName of page.PolicyNames ?? []) {
          if (PolicyName === this.d.settings.revocationPolicyName) continue;
          const out = await this.d.clients.run((c) => c.iam.send(new GetRolePolicyCommand({ RoleName, PolicyName })));
          used += out.PolicyDocument ? policySize(decodeURIComponent(out.PolicyDocument)) : 0;
        }
        Marker = page.IsTruncated ? page.Marker : undefined;
      } while (Marker);
      return Math.max(0, IAM_ROLE_INLINE_CHARS - used - IAM_SIZE_SLACK);
    } catch (err) {
      this.d.logger.warn({ roleArn, code: awsErrorCode(err) }, "could not measure the role's other inline policies");
      return undefined;
    }
  }

  /**
   * Every failure may pass (throttling and outages end, a rotation fixes refused
   * keys, an operator fixes a permission or frees policy room), and the core
   * retries until the credential expires; the code says which it is.
   */
  private failure(err: unknown, roleArn: string, call = 'PutRolePolicy'): Error {
    const kind = classify(err);
    const code = awsErrorCode(err);
    this.d.logger.warn({ roleArn, code, kind, call }, `iam ${call} for revocation failed`);
    const ours =
      kind === 'throttled'
        ? 'upstream_throttled'
        : isTransient(kind)
          ? 'upstream_unavailable'
          : kind === 'auth'
            ? 'upstream_auth_failed'
            : kind === 'denied'
              ? 'upstream_denied'
              : kind === 'limit'
                ? 'upstream_limit'
                : 'upstream_error';
    return new RetryableUpstreamError(ours, `IAM ${call} answered ${code} while revoking on ${roleArn}`, { cause: err });
  }
}

/** A stored document as a model; a copy that does not parse counts as nothing remembered. */
function parse(text: string | null | undefined, now: number): DenyModel {
  try {
    return parseDenyPolicy(text, now);
  } catch {
    return emptyModel();
  }
}
