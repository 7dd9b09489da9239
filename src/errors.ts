/**
 * Every error the broker reports to a caller, in one typed table: a stable
 * machine-readable `code`, exactly one HTTP status, what it means and what to
 * do about it. The table is the single source for the README's list and
 * docs/troubleshooting.md (scripts/gen-docs.ts writes both; a test checks
 * they agree), so a code cannot be 400 in one place and 403 in another.
 *
 * The real cause of a failure (an upstream message, a stack) travels in
 * `cause` and is only ever logged, never returned: callers learn the class of
 * failure, not our internals.
 */
export const ERRORS = {
  // 400: the request itself is wrong.
  invalid_request: {
    status: 400,
    means: 'A field is missing, has the wrong type or is out of range; `field` names it.',
    fix: 'Correct the named field.',
  },
  unknown_field: {
    status: 400,
    means: 'The body has a field the API does not define (typos are not ignored).',
    fix: 'Remove or correct the named field.',
  },
  malformed_json: { status: 400, means: 'The body is not valid JSON.', fix: 'Send valid JSON.' },
  expectation_failed: {
    status: 400,
    means: 'The request has an `Expect` header other than `100-continue`, an expectation the broker cannot meet.',
    fix: 'Send no `Expect` header, or `Expect: 100-continue`.',
  },
  malformed_body: {
    status: 400,
    means: 'The body could not be read (bytes that are not UTF-8, a compressed body that does not inflate, too many form fields).',
    fix: 'Send a well-formed body.',
  },
  invalid_id: {
    status: 400,
    means: 'A task id in the path is malformed (a lease or approval id of another form is just unknown: 404).',
    fix: 'Use the id the broker returned.',
  },
  invalid_task_id: {
    status: 400,
    means:
      'A task id sent by a caller contains `~` (reserved for sub-task ids the broker makes) or other characters outside [A-Za-z0-9._:-].',
    fix: 'Send 1-128 characters of [A-Za-z0-9._:-], not `.` nor `..`; use the `taskId` the broker answers with for sub-tasks.',
  },
  invalid_cursor: {
    status: 400,
    means: 'A list cursor is malformed, expired, or was issued to another caller or for other filters.',
    fix: 'Start again without `cursor`.',
  },
  unknown_role: {
    status: 400,
    means: 'A grant or request names a role that is not configured.',
    fix: 'Use a role name from the broker config.',
  },
  scope_not_allowed: {
    status: 400,
    means: "A grant lists a scope the role's configuration does not allow.",
    fix: "Grant only scopes of the role's configured set.",
  },
  scopes_empty: {
    status: 400,
    means: 'The request would give a Vault token with no policy or an AWS session with no action.',
    fix: 'Ask for at least one scope, or grant one.',
  },
  invalid_scope: {
    status: 400,
    means: 'A scope is not valid for the provider (AWS scopes are IAM actions like s3:GetObject).',
    fix: 'Use scopes in the form the provider expects.',
  },
  policy_too_large: {
    status: 400,
    means: 'The AWS session policy built from the scopes exceeds what STS accepts.',
    fix: 'Ask for fewer scopes.',
  },
  too_many_grants: { status: 400, means: 'The task has more grants than `tasks.maxGrants`.', fix: 'Split the work or raise the limit.' },
  ttl_too_long: {
    status: 400,
    means:
      "A task's or sub-task's `ttlSeconds` exceeds `tasks.maxTtlSeconds`, by any amount (a value that is no positive whole number is `invalid_request`).",
    fix: 'Ask for a shorter task.',
  },
  audit_task_required: {
    status: 400,
    means: 'Only admins may query the audit log without `taskId`.',
    fix: 'Add `taskId=` for a task you may read.',
  },
  not_an_aws_role: {
    status: 400,
    means:
      "The AWS container-credentials endpoint was asked, by the task's agent, for a role granted to the task that does not issue AWS credentials.",
    fix: 'Name an `aws` role in the URL.',
  },
  quarantine_self: { status: 400, means: 'The quarantine pattern matches the admin who sent it.', fix: 'Use a narrower pattern.' },
  unknown_rotation_target: {
    status: 400,
    means: 'Nothing by that name can be rotated here.',
    fix: 'Use `signing-key` or a configured provider name.',
  },
  rotation_unsupported: {
    status: 400,
    means: "The provider's credentials cannot be rotated (e.g. Vault token auth, AWS default chain).",
    fix: 'Configure rotatable credentials or rotate them outside the broker.',
  },
  // 401: the caller's identity could not be established.
  identity_missing: { status: 401, means: 'No workload identity was sent.', fix: 'Send `Authorization: Bearer <workload JWT>`.' },
  identity_invalid: {
    status: 401,
    means: 'The identity token failed a check (signature, issuer, audience, key, SPIFFE ID form, lifetime).',
    fix: 'Fetch a fresh token from your identity provider; `reason` says which check.',
  },
  identity_expired: { status: 401, means: 'The identity token has expired.', fix: 'Fetch a fresh token.' },
  identity_replayed: {
    status: 401,
    means: 'The identity token was already used, and its trust entry sets `singleUse: true` (each token accepted once, by its `jti`).',
    fix: 'Mint a new token per request from that issuer, or drop `singleUse` from the trust entry if its tokens are meant to be reused.',
  },
  console_signed_out: {
    status: 401,
    means: 'A /console/api call without a console session, or its session ended (with its ID token, or by signing out).',
    fix: 'Sign in to the console again.',
  },
  // 403: the caller is known but not allowed.
  console_csrf: {
    status: 403,
    means: 'A state-changing /console/api call came without the `x-jit-console: 1` header, or from another site.',
    fix: "Use the console's own page; scripts call /v1 with a workload identity instead.",
  },
  not_orchestrator: { status: 403, means: 'Only identities in `orchestrators` may open root tasks.', fix: 'Call as an orchestrator.' },
  not_task_agent: {
    status: 403,
    means: "Only the task's agent may request its credentials.",
    fix: 'Call with the agent identity named in the task.',
  },
  not_parent_agent: { status: 403, means: "Only the parent task's agent may open a sub-task.", fix: 'Call as the parent task agent.' },
  not_task_orchestrator: {
    status: 403,
    means: 'Only the orchestrator that opened the task, or an admin, may complete it.',
    fix: 'Call as that orchestrator.',
  },
  not_task_party: {
    status: 403,
    means: "Only the task's orchestrator, its agent, an admin, or whoever may read a task above it may read it.",
    fix: 'Call as one of them.',
  },
  not_lease_party: {
    status: 403,
    means:
      "Only the lease's agent, its task's orchestrator, the orchestrator or agent of a task above it, or an admin may read or revoke it.",
    fix: 'Call as one of them.',
  },
  not_approval_party: {
    status: 403,
    means:
      "Only approvers, admins, the requesting agent, the task's orchestrator, or the orchestrator or agent of a task above it may read an approval.",
    fix: 'Call as one of them.',
  },
  not_approver: { status: 403, means: 'Only identities in `approvers` may decide approvals.', fix: 'Ask an approver.' },
  not_admin: { status: 403, means: 'Only identities in `admins` may do this.', fix: 'Ask an admin.' },
  self_approval: {
    status: 403,
    means:
      'An agent cannot approve its own request, nor one made by another agent of the same task tree (its delegator, its delegate, or a fellow sub-agent).',
    fix: 'Ask another approver.',
  },
  role_not_granted: { status: 403, means: "The role is not among the task's grants.", fix: 'Open a task that grants the role.' },
  scope_not_granted: { status: 403, means: "A requested scope is not in the task's grant.", fix: 'Ask for granted scopes only.' },
  policy_denied: {
    status: 403,
    means: 'Cedar policy denied the request (no permit matched, or a forbid did).',
    fix: 'Check the policies with `npm run policy -- explain <request.json>` (examples in config/policies/examples/); the audit record names the deciding policies.',
  },
  delegation_widens: {
    status: 403,
    means: 'A sub-task would exceed its parent (roles, scopes, TTL, tenant, labels, purpose).',
    fix: 'Narrow the sub-task; see docs/policy.md.',
  },
  delegation_too_deep: {
    status: 403,
    means: 'The delegation chain exceeds `tasks.maxDelegationDepth`.',
    fix: 'Delegate from higher up the tree.',
  },
  delegation_outlives_parent: { status: 403, means: 'A sub-task must end no later than its parent.', fix: 'Shorten the sub-task TTL.' },
  approval_rejected: {
    status: 403,
    means: 'An approver rejected this request.',
    fix: 'Ask again with a different request, or talk to the approver.',
  },
  identity_quarantined: {
    status: 403,
    means:
      'An admin quarantined this identity (the caller, or the agent a task is opened for); every call by it, and every task for it, is refused.',
    fix: 'Contact your operators.',
  },
  // 404: not found.
  task_not_found: { status: 404, means: 'No such task (or it ended long enough ago to be forgotten).', fix: 'Check the id.' },
  lease_not_found: { status: 404, means: 'No such lease.', fix: 'Check the id.' },
  approval_not_found: { status: 404, means: 'No such approval.', fix: 'Check the id.' },
  route_not_found: { status: 404, means: 'No such route.', fix: 'See GET /openapi.json.' },
  quarantine_not_found: {
    status: 404,
    means: 'No quarantine with exactly this pattern is in force.',
    fix: 'List them with GET /v1/admin/quarantine.',
  },
  // 408: the request did not arrive in time.
  request_timeout: {
    status: 408,
    means:
      'The request did not arrive in time: its headers within `server.headersTimeoutSeconds`, or the whole of it within `server.requestTimeoutSeconds`. Answered before the connection is closed; nothing of the request was acted on.',
    fix: 'Send the request at once (a client that opens the connection before it has the body waits too long); on a slow link, raise the bounds.',
  },
  // 409: conflicts with the current state.
  task_not_open: {
    status: 409,
    means: 'The task has ended (completed or expired), or the lease was revoked while its credential was being issued.',
    fix: 'Open a new task, or ask again.',
  },
  task_expired: { status: 409, means: 'The task already expired; its leases were revoked.', fix: 'Open a new task.' },
  task_id_conflict: {
    status: 409,
    means: 'A task with this id exists with a different request.',
    fix: 'Use another id, or repeat the exact original request.',
  },
  approval_pending: {
    status: 409,
    means: 'The AWS container-credentials endpoint cannot answer 202: the role waits for an approver.',
    fix: 'Retry once an approver approved the request (GET /v1/approvals).',
  },
  approval_consumed: {
    status: 409,
    means:
      'The approval kept being taken by the same request while this one looked it up (used, given back after a failure, used again): rare. One approval, one credential: the same request after another took it gets a new pending approval (202), and a request it covered that was then refused or failed (a limit, an upstream error) does not use it up.',
    fix: 'Request again; a new approval is created.',
  },
  approval_decided: { status: 409, means: 'The approval was already approved or rejected.', fix: 'Nothing to do.' },
  approval_expired: {
    status: 409,
    means: 'The approval ended with its task, or was taken back (its approver was quarantined or is no longer one).',
    fix: 'Ended with its task: open a new task and request again. Taken back: request again; it waits for another approver.',
  },
  rotation_in_progress: {
    status: 409,
    means:
      'A rotation of this target is already running somewhere (or took over from this one, whose lock had lapsed); or (AWS) an earlier rotation lost its CreateAccessKey answer and IAM cannot be checked for the key yet: `Retry-After` says when.',
    fix: 'Retry after `Retry-After` seconds, or in a minute.',
  },
  policy_invalid: {
    status: 409,
    means: 'The policy files on disk do not load; the previous set stays in force.',
    fix: 'Fix the file and line named in `detail`, then reload.',
  },
  // 413, 415.
  body_too_large: { status: 413, means: 'The body exceeds `server.bodyLimitBytes`.', fix: 'Send less.' },
  unsupported_media_type: {
    status: 415,
    means: 'The body is not in the content type the route takes.',
    fix: 'Send application/json (form-encoded on the OAuth endpoints).',
  },
  unsupported_encoding: {
    status: 415,
    means: 'The body encoding or charset is not supported.',
    fix: 'Send UTF-8 without content encoding.',
  },
  // 429: a bound was reached.
  rate_limited: { status: 429, means: 'The caller exceeded its request rate (`server.rateLimit`).', fix: 'Wait `Retry-After` seconds.' },
  limit_exceeded: {
    status: 429,
    means:
      'A growth bound was reached: `tasks.maxOpenTasks`, `tasks.maxSubtasks`, `tasks.maxLeases`, `tasks.maxLeasesTotal` or `tasks.maxPendingApprovals`.',
    fix: 'End tasks, leases or sub-tasks first, or raise the bound.',
  },
  // 5xx: the broker or an upstream failed; never the caller's input.
  internal_error: {
    status: 500,
    means: 'The broker failed to handle the request (a bug).',
    fix: 'Retry; report it with the time of the request.',
  },
  upstream_error: {
    status: 502,
    means: 'The upstream (Vault, STS, IAM) failed or answered unexpectedly.',
    fix: 'Retry; check the broker log for the upstream message.',
  },
  upstream_denied: {
    status: 502,
    means: "The upstream refused the broker's own request (its permissions).",
    fix: "Operators: grant the broker's upstream identity what it needs.",
  },
  upstream_rejected: {
    status: 502,
    means: 'The upstream rejected the request the broker built.',
    fix: 'Operators: check the role configuration.',
  },
  upstream_throttled: { status: 502, means: 'The upstream is throttling the broker.', fix: 'Retry shortly.' },
  upstream_unavailable: { status: 502, means: 'The upstream could not be reached.', fix: 'Retry shortly.' },
  upstream_auth_failed: {
    status: 502,
    means: "The upstream refused the broker's own credentials.",
    fix: 'Operators: check or rotate the broker credentials.',
  },
  upstream_not_leased: {
    status: 502,
    means:
      'The Vault path is not a secret Vault can revoke: no lease (a static secret), or AWS STS credentials (revoking their Vault lease does not end them).',
    fix: 'Operators: point the role at a leased, revocable path; for AWS STS use an aws role.',
  },
  rotation_failed: {
    status: 502,
    means: 'A rotation failed; the previous secret is still in use.',
    fix: 'Retry; the audit record says which step failed. If every rotation fails the same way (a rotation intent this KEK cannot open, secret-ids of failed rotations Vault will not destroy), see docs/operations.md, "A rotation that fails every time".',
  },
  rotation_incomplete: {
    status: 502,
    means:
      'A rotation failed after the new secret was handed to the other instances, and they could not be switched back: the old and the new secret are both kept valid.',
    fix: 'Check Redis, then rotate again: the next rotation retires whichever of the two is not in use.',
  },
  upstream_sealed: {
    status: 502,
    means: 'Vault is sealed (an upstream failure: the broker itself stays ready).',
    fix: 'Retry once Vault is unsealed.',
  },
  not_ready: {
    status: 503,
    means:
      'The broker cannot issue right now (Redis unreachable, a Redis Cluster slot of its data being moved, signing key being recreated after data loss).',
    fix: 'Retry in a few seconds (`Retry-After` when Redis is the cause).',
  },
} as const satisfies Record<string, { status: number; means: string; fix: string }>;

/** Every code the broker can answer with. */
export type ErrorCode = keyof typeof ERRORS;

/**
 * Codes that only appear in a lease's `lastError` (and the revocation audit
 * records), never as an HTTP answer: failures inside the worker. A lease's
 * `lastError` is one of these or an upstream code of ERRORS (`upstream_*`).
 */
export const LEASE_ERRORS = {
  issuance_interrupted: {
    means: 'The process issuing this lease stopped (crash, restart) before the credential was recorded as handed out.',
    fix: 'Nothing: the lease ends `failed` and whatever the upstream made is revoked or expires within its short first TTL.',
  },
  revocation_busy: {
    means: "Another worker held the AWS role's deny-list lock, or the list kept changing under it.",
    fix: 'Nothing: retried with backoff. If it persists, check that workers reach Redis and IAM.',
  },
  upstream_limit: {
    means: "IAM refused the role's deny policy for a service limit (policy size or count) while revoking.",
    fix: 'Check the role has room for one inline policy; the broker folds entries to fit (docs/providers/aws.md) and retries.',
  },
  upstream_unconfirmed: {
    means:
      "Vault at the configured `providers.vault.address` answered that it does not know the lease's token or Vault lease, which was issued at another address: proof of nothing if the address now reaches another cluster.",
    fix: 'Point `providers.vault.address` back at the cluster that issued it (the lease is then revoked there), or let the credential expire: it is retried until then and ends `expired`.',
  },
  upstream_wrong_account: {
    means:
      "The broker's AWS credentials (`providers.aws`) act in another account than the one the lease's role is in: IAM takes a role's name in the caller's account, so the session's deny cannot be written from there.",
    fix: "Point `providers.aws` back at credentials of the role's account (the session is then denied there), or let the session expire: it is retried until then and ends `expired`.",
  },
  provider_unavailable: {
    means: "This worker has no configuration for the lease's provider (workers started with a different config than the API).",
    fix: 'Give every worker the same `providers` config as the APIs; the lease is retried until its credential expires.',
  },
} as const satisfies Record<string, { means: string; fix: string }>;

export type LeaseErrorCode = keyof typeof LEASE_ERRORS;

/** The codes whose status is `S`. */
export type CodeWithStatus<S extends number> = { [K in ErrorCode]: (typeof ERRORS)[K]['status'] extends S ? K : never }[ErrorCode];

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  409: 'Conflict',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
};

type ErrorOpts = { cause?: unknown; extra?: Record<string, unknown>; retryAfterSeconds?: number };

/** One error type for everything the broker reports to a caller. */
export class BrokerError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly title: string;
  /** Extra members for the problem document (never secrets). */
  readonly extra: Record<string, unknown> | undefined;
  /** When to try again, for the `Retry-After` header (every 429; other statuses only when set). */
  readonly retryAfterSeconds: number | undefined;

  constructor(code: ErrorCode, detail: string, opts: ErrorOpts = {}) {
    super(detail, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'BrokerError';
    this.code = code;
    this.status = ERRORS[code].status;
    this.title = TITLES[this.status] ?? 'Error';
    this.extra = opts.extra;
    this.retryAfterSeconds = opts.retryAfterSeconds;
  }
}

/** The error for `code`, with its status from the table. */
export function fail(code: ErrorCode, detail: string, opts?: ErrorOpts): BrokerError {
  return new BrokerError(code, detail, opts);
}

// Status-named shorthands: the type only admits codes of that status.
const by =
  <S extends number>() =>
  (code: CodeWithStatus<S>, detail: string, opts?: ErrorOpts) =>
    new BrokerError(code, detail, opts);
/** 400: the request is malformed or invalid. */
export const badRequest = by<400>();
/** 401: missing or invalid workload identity. */
export const unauthenticated = by<401>();
/** 403: denied by task ceiling or policy. */
export const forbidden = by<403>();
/** 404: unknown task, lease or approval. */
export const notFound = by<404>();
/** 409: conflicts with the current state. */
export const conflict = by<409>();
/** 413: body too large. */
export const tooLarge = by<413>();
/** 415: wrong content type. */
export const unsupportedMediaType = by<415>();
/** 429: rate limited or a growth bound reached. */
export const tooManyRequests = by<429>();
/** 502: an upstream (Vault, STS, IAM) failed. */
export const upstreamFailed = by<502>();
/** 503: not ready (Redis down, upstream sealed). */
export const unavailable = by<503>();

/**
 * Raised at startup for a bad config. `path` is the dotted key path so the
 * operator sees exactly which key is wrong.
 */
export class ConfigError extends Error {
  readonly path: string;
  constructor(path: string, message: string) {
    super(path ? `config ${path}: ${message}` : `config: ${message}`);
    this.name = 'ConfigError';
    this.path = path;
  }
}

/**
 * Thrown by a provider when an upstream call failed in a way that may succeed
 * later (throttling, 5xx, sealed, connection refused). Revocation retries
 * every failure until the credential's own expiry; this class only tells the
 * issuance path and the logs that the failure is expected to pass.
 */
export class RetryableUpstreamError extends Error {
  readonly code: ErrorCode | LeaseErrorCode;
  constructor(code: ErrorCode | LeaseErrorCode, message: string, opts: { cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'RetryableUpstreamError';
    this.code = code;
  }
}
