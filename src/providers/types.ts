import type { ZodType } from 'zod';
import type { AuditEvent } from '../audit/record.ts';
import { BrokerError } from '../errors.ts';
import type { RoleConfig } from '../config/schema.ts';
import type { LeaseRecord, RevokeReason } from '../leases/types.ts';
import type { Logger } from '../logger.ts';
import type { RedisClient } from '../redis/scripts.ts';
import type { TaskSnapshot } from '../tasks/types.ts';

/** Provider-specific revoke handle: identifiers only, never secrets. */
export type Handle = Record<string, string | number | boolean>;

/** What the broker asks a provider for, after every check has passed. */
export interface IssueRequest<R extends RoleConfig = RoleConfig> {
  leaseId: string;
  roleName: string;
  role: R;
  /** The task, with its deadline (Redis's clock). */
  task: TaskSnapshot;
  /** The caller's identity string (always the task's agent). */
  agent: string;
  /** Exactly the scopes to put in the credential (already checked against the grant). */
  scopes: string[];
  /** Effective TTL, already clamped (including the provider's minimum). */
  ttlSeconds: number;
  /**
   * The handle recorded before the upstream call (`Provider.intent`), when there was one. Revocation
   * of a given-up issuance relies on it, so a credential made late (the process stalled past its
   * orphan deadline before calling) must hold nothing beyond what it promised (AWS: its `expiresAt`).
   */
  intent?: Handle;
}

/**
 * A provider's answer, split the way Vault splits a secret: `credentials` go to
 * the client and are never stored; `handle` is what revoke needs and is stored
 * on the lease, so it must never contain a secret.
 */
export interface IssueResult {
  credentials: Record<string, unknown>;
  handle: Handle;
  /** Upstream's actual expiry (epoch ms); the lease expires then. */
  expiresAt: number;
}

/** A credential being made: what the lease records now, and the credential once made. */
export interface StartedIssue {
  handle: Handle;
  expiresAt: number;
  done: Promise<IssueResult>;
}

/**
 * What is written down before the upstream call (Vault's WAL): the handle as
 * far as it is known beforehand, and how long an interrupted issuance may
 * leave a credential alive upstream. After `orphanMs` without an answer the
 * sweeper treats the issuance as interrupted and revokes with this handle
 * (AWS: the session name is derived from the lease id) or simply lets the
 * credential die (Vault: created with a TTL of about a minute).
 */
export interface IssueIntent {
  handle: Handle;
  orphanMs: number;
}

/** Why a lease is revoked; decides how wide the upstream cut is (one session, a task's, an agent's). */
export interface RevokeContext {
  reason: RevokeReason | 'issuance_interrupted';
  /**
   * With `revoked_by_admin`, how far the admin's action reaches: `agent` when it ended the task to stop
   * its agent (the kill switch, quarantining the agent), so the cut may be as wide as the agent (AWS: by
   * SourceIdentity); `task` when it ended the task for another reason (quarantining the orchestrator that
   * opened it: the agent is not suspect); absent for an admin's DELETE of one lease: that credential only.
   */
  adminScope?: 'agent' | 'task';
  /** When the revocation was asked for: an agent-wide cut spares what was issued after it (AWS: TokenIssueTime). */
  requestedAt?: number;
}

/**
 * Result of rotating a provider's own upstream secret. `secret` is the new
 * material, handed to the core which distributes it to the other instances
 * through Redis encrypted with the key-encryption key (never in plaintext).
 * `detail` is client-safe (ids, accessors, key ids; never secret values).
 */
export type RotationResult = { target: string; rotated: string[]; detail?: Record<string, unknown>; secret: Record<string, string> };

/**
 * What one rotation retires and creates. `old`, `new`: identifiers (access key ids, secret-id accessors;
 * never secrets). `pending`: secrets the provider chose itself and sent upstream to be created (Vault:
 * custom secret-ids), each with when it was sent (Redis's clock), recorded before the call so that a lost
 * or late answer, or a dead process, cannot leave one valid and named nowhere. The core seals the list
 * under the KEK before it reaches Redis (in a key of its own) and never logs it; absent in a `record`,
 * the recorded list is left as it is.
 */
export type RotationIds = {
  old?: string;
  new?: string;
  pending?: PendingSecret[];
  /**
   * When the new secret was asked for (epoch ms, the broker's clock), recorded before the call while its id
   * cannot be known yet (AWS access keys take no client-chosen id or tag): with no `new`, the call's answer
   * never reached the intent, and the next rotation looks for what was created around then (AWS).
   */
  creating?: number;
  /**
   * With `creating`: the latest the call can have sent an attempt (epoch ms, the broker's clock), fixed when
   * it was sent, so a later change of timeout settings does not move the window the next rotation searches.
   */
  until?: number;
  /** Ids listed just before `creating`: they existed before the call, so the rotation did not make them. */
  existing?: string[];
};
/** `handedOut`: recorded before the secret was handed to the other instances (they may run with it). */
export type PendingSecret = { secret: string; sentAt: number; handedOut?: true };

/**
 * Rotation intent kept in Redis, written before each upstream side effect. A
 * rotation that ends cleanly clears it; one that finds it set knows the one
 * before was interrupted (the process died, or both secrets were kept) and
 * first retires the recorded secrets it does not run with.
 */
export interface RotationJournal {
  readonly leftover: RotationIds | undefined;
  /**
   * False when Redis holds no distributed secret of the target (never rotated, or the key was lost while the
   * intent survived): a recorded secret that was handed out may then be what the other instances run with.
   */
  readonly distributed?: boolean;
  /** Records the intent; throws RotationLockLost (nothing written) once the rotation lock is not ours. */
  record(ids: RotationIds): Promise<void>;
  clear(): Promise<void>;
  /**
   * Throws RotationLockLost when the rotation lock lapsed: called before every step that retires,
   * deactivates or deletes something upstream, undoing included.
   */
  fence(): Promise<void>;
}

/**
 * The rotation lock lapsed (this instance was cut off from Redis or stalled past its TTL) and another
 * rotation may hold it, and may be retiring what this one made as an interrupted rotation's leftovers.
 * This one stops at once, without undoing anything: what it made is in the intent the other reads.
 */
export class RotationLockLost extends BrokerError {
  constructor() {
    super('rotation_in_progress', 'This rotation lost its lock to another one and stopped; that rotation retires what this one made.');
  }
}

/**
 * Marks a provider's error as following an upstream attempt that was sent and got no answer understood
 * (a timeout, a reset, a 5xx): the call may have been carried out, whatever a later attempt answered.
 * The core then does not take the failure for a refusal (credential-service: it leaves the lease to
 * the worker, which revokes what the intent names).
 */
export function markUnanswered(err: unknown): void {
  if (err !== null && typeof err === 'object') (err as { unanswered?: boolean }).unanswered = true;
}

/** Whether `markUnanswered` marked it. */
export const wasUnanswered = (err: unknown): boolean => (err as { unanswered?: boolean } | undefined)?.unanswered === true;

/** Whether the rotation lock is still ours (false once lost; other errors thrown). */
export async function stillHeld(journal: RotationJournal): Promise<boolean> {
  try {
    await journal.fence();
    return true;
  } catch (err) {
    if (err instanceof RotationLockLost) return false;
    throw err;
  }
}

/** For callers without Redis (unit tests of a provider): nothing recorded, nothing left over. */
export const noJournal: RotationJournal = { leftover: undefined, record: async () => {}, clear: async () => {}, fence: async () => {} };

/**
 * One upstream kind, as the core drives it. `revoke` is required and must be
 * idempotent: an upstream "not found" or "already revoked" is success. Any
 * thrown error is retried until the credential's own expiry.
 */
export interface Provider<R extends RoleConfig = RoleConfig> {
  readonly kind: R['provider'];
  /** Upstream's minimum credential lifetime (AWS STS: 900 s); the effective TTL is raised to it. */
  readonly minTtlSeconds: number;
  /**
   * False when the credential has no upstream side effect (the broker's own
   * JWTs): issuance needs no intent record and revocation is a lease update,
   * done in bulk.
   */
  readonly upstream: boolean;
  /**
   * Whether revoking cuts the credential off upstream before it expires (contract section 5). Asked before the
   * lease is recorded, once the request is authorized; may ask the upstream (AWS: the broker's own account), and
   * a failure there fails the request (a BrokerError, e.g. 502).
   */
  revocable(role: R): boolean | Promise<boolean>;
  /**
   * What to write down before the upstream call (required when `upstream`). `orphanMs`: the configured
   * orphan window (`revocation.orphanMs`), when it overrides the provider's own: a credential answered
   * within it is handed out, so what the handle promises must cover it.
   */
  intent?(req: IssueRequest<R>, opts?: { orphanMs?: number }): IssueIntent;
  issue(req: IssueRequest<R>): Promise<IssueResult>;
  /**
   * Nothing upstream only: `issue`, started, with the expiry and handle known
   * at once, so the lease is recorded while the credential is made (a JWT's
   * signature runs on the thread pool meanwhile: one wait fewer per issuance).
   */
  start?(req: IssueRequest<R>): StartedIssue;
  /**
   * Called once the lease is recorded: extends a credential created
   * short-lived (Vault) to its full TTL. A failure here revokes it and fails
   * the request.
   */
  confirm?(req: IssueRequest<R>, result: IssueResult): Promise<void>;
  /** Ends the credential upstream (task end, DELETE, kill switch, interrupted issuance). */
  revoke(lease: LeaseRecord, role: R | undefined, ctx: RevokeContext): Promise<void>;
  /** Called when the lease's TTL runs out; default: nothing to do upstream. */
  expire?(lease: LeaseRecord, role: R | undefined): Promise<void>;
  /**
   * Upkeep the sweeper's reconcile pass runs (every `revocation.reconcileIntervalMs`, in every worker):
   * checks that what revocation wrote upstream is still there and writes back what is not (AWS: a deny
   * that a late PutRolePolicy erased). Failures are the provider's to log; a throw is logged and retried.
   */
  reconcile?(): Promise<void>;
  /** Readiness of the upstream connection (reported by /readyz, which does not depend on it). */
  ready?(): Promise<boolean>;
  /**
   * True when the upstream refused the broker's own credentials at the last
   * `ready()` (e.g. a key a rotation retired): unlike an upstream being down,
   * that is this instance's fault, and it cannot revoke either, so /readyz
   * answers 503 and traffic goes to instances that can.
   */
  credentialsRefused?(): boolean;
  /**
   * Creates a new upstream secret, switches to it, retires the old one. A
   * failure halfway leaves the old one in use. `distribute` must be awaited
   * after the new secret is known to work and BEFORE the old one is retired;
   * a failure after it must hand the old secret out again (`distribute` with
   * it) before the new one is retired, or keep both valid.
   */
  rotate?(
    distribute?: (secret: Record<string, string>) => Promise<void>,
    opts?: { immediate?: boolean },
    journal?: RotationJournal,
  ): Promise<RotationResult>;
  /** Switches to secret material rotated by another instance (from RotationResult.secret). */
  useSecret?(secret: Record<string, string>): Promise<void>;
  close(): Promise<void>;
}

/** What a provider factory receives. */
export interface ProviderContext {
  logger: Logger;
  /** Shared Redis connection (for locks or shared state); keys must start with `${keyPrefix}:`. */
  redis: RedisClient;
  keyPrefix: string;
  /** Redis's clock (ms): decide expiries on it, not on this process's clock. */
  clock?: () => number;
  /** Appends an audit record (for upstream events worth evidence, e.g. an AWS deny-list fallback). */
  audit?: (event: AuditEvent) => Promise<void>;
}

/**
 * Everything the core knows about one provider kind, in one static list
 * (src/providers/index.ts): adding an upstream is adding a folder with a
 * descriptor, nothing else. Modelled on Vault's `framework.Secret` (revoke
 * required) and octo-sts's KMS registry.
 */
export interface ProviderDescriptor<R extends { provider: string } = { provider: string }> {
  readonly kind: R['provider'];
  /** The role shape (`roles.<name>` with `provider: <kind>`). */
  readonly roleSchema: ZodType<R>;
  /** Connection settings under `providers.<kind>`; absent for the built-in jwt provider. */
  readonly settingsSchema?: ZodType<unknown>;
  /** What `POST /v1/admin/rotate` calls this provider's secret (`signing-key` for jwt). */
  readonly rotationTarget: string;
  /** The scopes an omitted grant list means: the role's configured set; undefined = a grant must list them. */
  defaultScopes(role: R): string[] | undefined;
  /** The scopes a grant may list at all; undefined = any well-formed scope. */
  allowedScopes(role: R): readonly string[] | undefined;
  /** True when a credential without any scope would be unusable or too wide: such a request answers 400 scopes_empty. */
  needsScope(role: R): boolean;
  /** Throws (400) for scopes no credential of this kind may ever carry, so a grant naming one is refused when the task opens. */
  checkScopes?(scopes: readonly string[]): void;
  /** Builds the provider (heavy modules are imported here, so an unconfigured upstream costs nothing). */
  create(settings: unknown, ctx: ProviderContext, extra: ProviderExtras): Promise<Provider>;
}

/** What the composition root passes every factory besides its settings. */
export interface ProviderExtras {
  /** The broker's signing keys (the jwt provider signs with them). */
  signing?: unknown;
  /** The whole config (for cross-role facts such as the longest jwt TTL). */
  config?: unknown;
}
