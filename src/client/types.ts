/**
 * Request and response shapes of the broker's HTTP API (the contract,
 * section 3). The broker may add fields; these name the ones it promises.
 */

/** One grant of a task: a role, its scopes and a TTL ceiling. */
export interface Grant {
  role: string;
  /** Omitted: the role's configured set. `[]`: exactly no scope. */
  scopes?: string[];
  maxTtlSeconds?: number;
}

/** Body of `POST /v1/tasks`. */
export interface OpenTaskRequest {
  /** 1-128 chars of `[A-Za-z0-9._:-]`; generated when absent. */
  taskId?: string;
  /** Opens a sub-task of this task (called by the parent task's agent). */
  parentTaskId?: string;
  agent: string;
  /** Required for a task; a sub-task inherits its parent's when omitted. */
  tenant?: string;
  /** Required for a task; a sub-task inherits its parent's when omitted. */
  purpose?: string;
  ttlSeconds: number;
  grants: Grant[];
  labels?: Record<string, string>;
}

export type TaskStatus = 'open' | 'completed' | 'expired';

/** A task as the broker answers it. */
export interface Task {
  taskId: string;
  agent: string;
  tenant: string;
  purpose?: string;
  status: TaskStatus;
  expiresAt: string;
  grants: Grant[];
  labels?: Record<string, string>;
  parentTaskId?: string;
  endedAt?: string;
  [extra: string]: unknown;
}

export type LeaseStatus = 'issuing' | 'active' | 'revoking' | 'revoked' | 'expired' | 'revoke_failed' | 'failed';

/** A lease without secrets (`GET /v1/leases/{id}`, and in a task's `leases`). */
export interface Lease {
  leaseId: string;
  taskId?: string;
  role: string;
  provider?: string;
  agent?: string;
  scopes?: string[];
  status: LeaseStatus;
  issuedAt?: string;
  expiresAt: string;
  revocable?: boolean;
  revokedAt?: string;
  reason?: string;
  [extra: string]: unknown;
}

/** `GET /v1/tasks/{id}`: the task with its leases. */
export interface TaskDetail extends Task {
  /** The task's first 100 leases, in issue order (fewer when they pass about 0.5 MB, at least one). */
  leases: Lease[];
  /** Null when `leases` is all; otherwise the cursor for `taskLeases` (the rest). */
  leasesNextCursor?: string | null;
}

/** `GET /v1/tasks/{id}/leases`: `tree` adds every sub-task's leases (the task's first, then the sub-tasks' in opening order). */
export interface TaskLeasesParams extends PageParams {
  tree?: boolean;
}

/** `POST /v1/tasks/{id}/complete`. */
export interface CompleteTaskResult {
  taskId: string;
  status: 'completed';
  leases: number;
}

/** Body of `POST /v1/credentials`. */
export interface CredentialRequest {
  taskId: string;
  role: string;
  /** Omitted: all of the grant's scopes. */
  scopes?: string[];
  ttlSeconds?: number;
}

/** `credentials` of a `jwt` role. */
export interface JwtCredentials {
  access_token: string;
  token_type: 'Bearer';
  expires_in: number;
  scope: string;
}

/** `credentials` of an `aws` role (STS session). */
export interface AwsCredentials {
  AccessKeyId: string;
  SecretAccessKey: string;
  SessionToken: string;
  Expiration: string;
}

/** `credentials` of a `vault` token role. */
export interface VaultTokenCredentials {
  token: string;
  accessor: string;
  policies?: string[];
  expires_in?: number;
}

/** 201 of `POST /v1/credentials`. */
export interface IssuedCredential<C = Record<string, unknown>> {
  leaseId: string;
  taskId: string;
  role: string;
  provider: 'jwt' | 'aws' | 'vault' | (string & {});
  expiresAt: string;
  revocable: boolean;
  ttlSeconds?: number;
  scopes?: string[];
  credentials: C;
}

/** 202 of `POST /v1/credentials`: the role needs an approver first. */
export interface PendingApproval {
  approvalId: string;
  status: 'pending';
}

/** What `POST /v1/credentials` answers. */
export type CredentialResponse = IssuedCredential | PendingApproval;

export type ApprovalStatus = 'pending' | 'approved' | 'rejected' | 'consumed' | 'expired';

/** An approval (`GET /v1/approvals/{id}`, and the items of the list). */
export interface Approval {
  approvalId: string;
  taskId: string;
  role: string;
  scopes: string[];
  ttlSeconds?: number;
  /** What approving gives: at most what a credential issued under it lives (absent from older brokers). */
  issuedTtlSeconds?: number;
  agent: string;
  status: ApprovalStatus;
  /** ISO 8601 in lists; some broker versions answer epoch milliseconds on a single approval. */
  requestedAt: string | number;
  decidedBy?: string;
  reason?: string;
  [extra: string]: unknown;
}

/** One page of a list: `nextCursor` is null on the last page. */
export interface Page<T> {
  items: T[];
  nextCursor: string | null;
}

/** `?limit=&cursor=` of every list. */
export interface PageParams {
  /** Default 50, at most 500. */
  limit?: number;
  cursor?: string;
}

/** `GET /v1/tasks/{id}/evidence`: `cursor` pages the audit records, `treeCursor` the sub-task tree. */
export interface EvidenceParams extends PageParams {
  treeCursor?: string;
}

/** Filters of `GET /v1/tasks`. */
export interface TaskFilter extends PageParams {
  status?: TaskStatus;
  agent?: string;
  tenant?: string;
  orchestrator?: string;
}

/** Filters of `GET /v1/approvals`. */
export interface ApprovalFilter extends PageParams {
  status?: ApprovalStatus;
}

/** Filters of `GET /v1/audit` (ISO 8601 times). */
export interface AuditFilter extends PageParams {
  taskId?: string;
  actor?: string;
  action?: string;
  since?: string;
  until?: string;
}

/** One audit record (contract section 7) with its place in the chain. */
export interface AuditRecord {
  time: string;
  actor: string;
  action: string;
  taskId?: string;
  role?: string;
  leaseId?: string;
  decision: 'allow' | 'deny' | 'ok' | 'error';
  reason?: string;
  seq: number;
  hash: string;
  [extra: string]: unknown;
}

/** `GET /v1/admin/audit/seals`: where sealing of each audit chain stands (docs/audit.md). */
export interface AuditSeals {
  /** `audit.sealMaxAgeSeconds`: the bound of `stale`. */
  maxSealAgeSeconds: number;
  chains: {
    chain: number | 'ops';
    headSeq: number;
    sealedSeq: number | null;
    sealedAt: string | null;
    /** Redis holds a seal whose MAC does not verify (forged?). */
    invalidSeal: boolean;
    /** Records after the newest valid seal. */
    unsealed: number;
    /** Seconds without a seal; null for a chain with no record, or when unknown. */
    ageSeconds: number | null;
    /** Records follow the seal and the chain went without one for longer than the bound. */
    stale: boolean;
  }[];
}

/** `GET /v1/tasks/{id}/evidence`. */
export interface Evidence {
  task: Task;
  /** The task and its sub-tasks in opening order: about 2 MB of them per answer (the rest with `treeNextCursor`). */
  tree: Task[];
  /** Null when `tree` holds the rest of the tree; otherwise `taskEvidence(id, { treeCursor })` gives the next part. */
  treeNextCursor?: string | null;
  /** The tree's first 100 leases (the rest through `taskLeases(id, { tree: true, cursor: leasesNextCursor })`). */
  leases: Lease[];
  leasesNextCursor?: string | null;
  /** The tree's audit records in chain order, paginated (`?limit=&cursor=`). */
  audit: Page<AuditRecord>;
  /** Whether those records' hash chain checks out. */
  chain: 'intact' | 'broken';
  [extra: string]: unknown;
}

/** Body of `POST /v1/admin/revoke`: exactly one selector. */
export type RevokeSelector = { agent: string } | { tenant: string } | { taskId: string };

/** 202 of `POST /v1/admin/revoke`. */
export interface RevokeResult {
  tasks: number;
  leases: number;
}

/** One quarantine in force. */
export interface Quarantine {
  /** The identity pattern quarantined. */
  pattern: string;
  reason: string;
  /** The admin who set it. */
  by?: string;
  /** When (ISO 8601). */
  at?: string;
  [extra: string]: unknown;
}

/** RFC 7662 answer of `POST /v1/introspect`. */
export interface Introspection {
  active: boolean;
  scope?: string;
  sub?: string;
  aud?: string | string[];
  iss?: string;
  exp?: number;
  iat?: number;
  jti?: string;
  client_id?: string;
  task_id?: string;
  [extra: string]: unknown;
}

/** RFC 8693 answer of `POST /v1/token`. */
export interface TokenExchangeResult {
  access_token: string;
  issued_token_type: string;
  token_type: 'Bearer';
  expires_in: number;
  scope?: string;
}
