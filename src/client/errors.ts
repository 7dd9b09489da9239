/**
 * Errors the client throws. Each has a stable `code`: the broker's own code
 * for an answer it refused (`role_not_granted`, `task_not_open`, ...), or
 * one of the client's for what went wrong before an answer arrived.
 */
export class JitError extends Error {
  /** Stable, machine-readable. */
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/**
 * The broker answered with an error status: an RFC 9457 problem (`code`,
 * `detail`), or on the OAuth endpoints an RFC 6749 error (`error`,
 * `error_description`). 4xx is a refusal of this request; 5xx means the
 * broker or an upstream failed.
 */
export class BrokerResponseError extends JitError {
  readonly status: number;
  /** The broker's explanation, safe to show. */
  readonly detail: string;
  /** The parsed error body as the broker sent it. */
  readonly body: unknown;
  /** Seconds from `Retry-After`, when the broker sent one (429, 503). */
  readonly retryAfterSeconds: number | undefined;
  constructor(status: number, code: string, detail: string, body: unknown, retryAfterSeconds?: number) {
    super(code, `${status} ${code}: ${detail}`);
    this.status = status;
    this.detail = detail;
    this.body = body;
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/** No answer: the broker could not be reached, timed out, or answered something that is not its API. */
export class BrokerUnreachableError extends JitError {}

/** The role needs an approver: the request waits as `approvalId`. */
export class ApprovalPendingError extends JitError {
  readonly approvalId: string;
  constructor(approvalId: string) {
    super('approval_pending', `the credential awaits approval ${approvalId}`);
    this.approvalId = approvalId;
  }
}

/**
 * The client has no usable identity or configuration of its own (no token
 * set, an unreadable token file, a malformed broker URL): fix the caller's
 * set-up, the broker was not asked.
 */
export class ClientConfigError extends JitError {}

/** Whether trying again later may succeed: no answer, a 5xx, or a 429. */
export function isTransient(err: unknown): boolean {
  if (err instanceof BrokerUnreachableError) return true;
  return err instanceof BrokerResponseError && (err.status >= 500 || err.status === 429);
}
