import type { Redis } from 'ioredis';
import type { LoadedConfig } from './config/load.ts';
import type { AuditLog } from './audit/audit-log.ts';
import type { IdentityVerifier } from './identity/verifier.ts';
import type { IdentityPatterns } from './identity/patterns.ts';
import type { LeaseStore } from './leases/lease-store.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import type { PolicyEngine } from './policy/types.ts';
import type { ProviderRegistry } from './providers/registry.ts';
import type { Keys } from './redis.ts';
import type { RevocationQueue } from './revocation/queue.ts';
import type { SigningKeyStore } from './signing/key-store.ts';
import type { TaskStore } from './tasks/task-store.ts';
import type { ApprovalStore } from './approvals/approval-store.ts';
import type { RateLimits } from './http/rate-limit.ts';

/** Everything the services need, built once by the composition root (src/broker.ts). */
export interface Deps {
  config: LoadedConfig;
  redis: Redis;
  keys: Keys;
  logger: Logger;
  metrics: Metrics;
  audit: AuditLog;
  verifier: IdentityVerifier;
  policy: PolicyEngine;
  providers: ProviderRegistry;
  signing: SigningKeyStore;
  tasks: TaskStore;
  leases: LeaseStore;
  approvals: ApprovalStore;
  queue: RevocationQueue;
  patterns: { orchestrators: IdentityPatterns; admins: IdentityPatterns; approvers: IdentityPatterns };
  /** Rate limits at the HTTP edge (server.rateLimit); absent = none. */
  limits?: RateLimits;
}
