import type { ApprovalStore } from './approvals/approval-store.ts';
import type { AuditLog } from './audit/audit-log.ts';
import type { LoadedConfig } from './config/load.ts';
import type { IdentityPatterns } from './identity/patterns.ts';
import type { Quarantine } from './identity/quarantine.ts';
import type { IdentityVerifier } from './identity/verifier.ts';
import type { LeaseStore } from './leases/lease-store.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import type { PolicyEngine } from './policy/types.ts';
import type { ProviderRegistry } from './providers/registry.ts';
import type { RedisClock } from './redis/clock.ts';
import type { ReplicaAck } from './redis/replica-ack.ts';
import type { Keys } from './redis/keys.ts';
import type { RedisClient } from './redis/scripts.ts';
import type { RevocationQueue } from './revocation/queue.ts';
import type { SigningKeyStore } from './signing/key-store.ts';
import type { TaskStore } from './tasks/task-store.ts';
import type { RateLimits } from './http/rate-limit.ts';

/** Everything the services need, built once by the composition root (src/broker.ts). */
export interface Deps {
  config: LoadedConfig;
  redis: RedisClient;
  keys: Keys;
  /** Redis's clock, for decisions made in-process. */
  clock: RedisClock;
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
  quarantine: Quarantine;
  /** Waits for replicas after the writes a failover must not lose (src/redis/replica-ack.ts). */
  replicas: ReplicaAck;
  patterns: { orchestrators: IdentityPatterns; admins: IdentityPatterns; approvers: IdentityPatterns };
  /** Rate limits at the HTTP edge (server.rateLimit); absent = none. */
  limits?: RateLimits;
  /**
   * True while this instance's policy set disagrees with the last reload announced (src/ops/policy-sync.ts):
   * decisions that grant (issue, openTask) answer 503 rather than follow a set the operators replaced;
   * ending and revoking go ahead. Absent = never.
   */
  policyBehind?: () => boolean;
}
