import type { LeaseRecord } from '../leases/types.ts';
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

/**
 * A provider's answer, split the way Vault splits a secret: `credentials` go to
 * the client and are never stored; `handle` is what revoke needs and is stored
 * on the lease, so it must never contain a secret.
 */
export interface IssueResult {
  credentials: Record<string, unknown>;
  handle: Record<string, string | number | boolean>;
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
  issue(req: IssueRequest<R>): Promise<IssueResult>;
  /** Ends the credential upstream (task end, DELETE). */
  revoke(lease: LeaseRecord, role: R | undefined): Promise<void>;
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
}
