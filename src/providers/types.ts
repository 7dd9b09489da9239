import type { LeaseRecord, RevokeReason } from '../leases/types.ts';
import type { TaskFixed } from '../tasks/types.ts';
import type { RoleConfig } from '../config/schema.ts';
import type { Redis } from 'ioredis';
import type { Logger } from '../logger.ts';
import type { AuditEvent } from '../audit/record.ts';

/** What the broker asks a provider for, after every check has passed. */
export interface IssueRequest<R extends RoleConfig = RoleConfig> {
  leaseId: string;
  roleName: string;
  role: R;
  task: TaskFixed;
  /** The caller's identity string (always the task's agent). */
  agent: string;
  scopes: string[];
  /** Effective TTL, already clamped (including the provider's minimum). */
  ttlSeconds: number;
}

/** What revoke needs upstream: identifiers only, never a secret (stored on the lease). */
export type Handle = Record<string, string | number | boolean>;

/**
 * Why a credential is being revoked. A provider may widen the unit of
 * revocation to match (AWS: a whole task, or an agent's sessions up to now).
 * `issuance_interrupted`: the process that called the upstream died before
 * recording the answer; only the handle from `intent` is known.
 */
export interface RevokeContext {
  reason: RevokeReason | 'issuance_interrupted';
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

/**
 * Result of rotating a provider's own upstream secret. `secret` is the new
 * material, handed to the core which distributes it to the other instances
 * through Redis encrypted with the key-encryption key (never in plaintext).
 * `detail` is client-safe (ids, accessors, key ids; never secret values).
 */
export type RotationResult = { target: string; rotated: string[]; detail?: Record<string, unknown>; secret: Record<string, string> };

/**
 * One upstream kind. Adding an upstream is adding a folder that implements this.
 * `revoke` is required and must be idempotent: an upstream "not found" or
 * "already revoked" is success. It throws RetryableUpstreamError for failures
 * that may pass (throttling, 5xx, sealed) and anything else for permanent ones.
 */
export interface Provider<R extends RoleConfig = RoleConfig> {
  readonly kind: R['provider'];
  /** Upstream's minimum credential lifetime (AWS STS: 900 s); the effective TTL is raised to it. */
  readonly minTtlSeconds: number;
  /** Whether revoking cuts the credential off upstream before it expires (contract section 5). */
  revocable(role: R): boolean;
  /**
   * The handle known before the upstream call, for the core to record before
   * calling `issue`, so a credential whose issuing process dies mid-call can
   * still be revoked (contract section 5). `revoke` must work with only this.
   */
  intent?(req: IssueRequest<R>): Handle;
  issue(req: IssueRequest<R>): Promise<IssueResult>;
  /**
   * Ends the credential upstream (task end, DELETE, admin, interrupted
   * issuance). Idempotent; an upstream "not found" is success. Throws
   * RetryableUpstreamError for anything that may pass; the core retries every
   * failure until the credential's own expiry.
   */
  revoke(lease: LeaseRecord, role: R | undefined, ctx: RevokeContext): Promise<void>;
  /** Called when the lease's TTL runs out; default: nothing to do upstream. */
  expire?(lease: LeaseRecord, role: R | undefined): Promise<void>;
  /** Readiness of the upstream connection (for /readyz); default ready. */
  ready?(): Promise<boolean>;
  /**
   * Creates a new upstream secret, switches to it, retires the old one. A
   * failure halfway leaves the old one in use. `distribute` must be awaited
   * after the new secret is known to work and BEFORE the old one is retired:
   * it seals the secret into Redis and has every instance switch, so no
   * instance is left holding a dead secret.
   */
  rotate?(distribute?: (secret: Record<string, string>) => Promise<void>): Promise<RotationResult>;
  /** Switches to secret material rotated by another instance (from RotationResult.secret). */
  useSecret?(secret: Record<string, string>): Promise<void>;
  close(): Promise<void>;
}

/** What a provider factory receives. */
export interface ProviderContext {
  logger: Logger;
  /** Shared Redis connection (for locks or shared state); keys must start with `${keyPrefix}:`. */
  redis: Redis;
  keyPrefix: string;
  /** Appends an audit record (for upstream events worth evidence, e.g. an AWS deny-list fallback). */
  audit?: (event: AuditEvent) => Promise<void>;
  /** The broker's time (epoch ms; its estimate of Redis's clock), for decisions shared across processes. Default Date.now. */
  clock?: () => number;
}
