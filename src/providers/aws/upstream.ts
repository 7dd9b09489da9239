import { setTimeout as sleep } from 'node:timers/promises';
import { markUnanswered } from '../types.ts';

/** The parts of an AWS SDK v3 error (or a network error) the broker looks at. */
interface SdkErrorLike {
  name?: string;
  Code?: string;
  code?: string;
  $metadata?: { httpStatusCode?: number; requestId?: string };
}

/** How a failed upstream call is classified. */
export type FailureKind = 'throttled' | 'unavailable' | 'auth' | 'denied' | 'rejected' | 'not_found' | 'limit' | 'other';

const THROTTLING = new Set([
  'Throttling',
  'ThrottlingException',
  'RequestLimitExceeded',
  'TooManyRequestsException',
  'RequestThrottled',
  'RequestThrottledException',
]);
const AUTH = new Set([
  'InvalidClientTokenId',
  'SignatureDoesNotMatch',
  'ExpiredToken',
  'ExpiredTokenException',
  'MissingAuthenticationToken',
  'IncompleteSignature',
  'UnrecognizedClientException',
]);
const REJECTED = new Set([
  'ValidationError',
  'MalformedPolicyDocument',
  'MalformedPolicyDocumentException',
  'PackedPolicyTooLarge',
  'PackedPolicyTooLargeException',
  'RegionDisabledException',
  'InvalidParameter',
  'InvalidParameterValue',
  'InvalidInput',
]);
const NETWORK = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ECONNABORTED',
]);

/** Network errors raised before a request left this host: nothing can have been done upstream. */
const NOT_SENT = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN']);

/** Whether a failed call may still have been carried out upstream: sent, and no answer understood. */
export function maybeDone(err: unknown): boolean {
  const kind = classify(err);
  return (kind === 'unavailable' || kind === 'other') && !NOT_SENT.has(((err ?? {}) as SdkErrorLike).code ?? '');
}

/** The AWS error code (`AccessDenied`, `Throttling`, …) or a network errno, for logs. */
export function awsErrorCode(err: unknown): string {
  const e = (err ?? {}) as SdkErrorLike;
  return e.Code ?? (typeof e.code === 'string' ? e.code : undefined) ?? e.name ?? 'Unknown';
}

export function classify(err: unknown): FailureKind {
  const e = (err ?? {}) as SdkErrorLike;
  const code = awsErrorCode(err);
  const status = e.$metadata?.httpStatusCode;
  if (THROTTLING.has(code) || status === 429) return 'throttled';
  if (AUTH.has(code)) return 'auth';
  if (code === 'AccessDenied' || code === 'AccessDeniedException') return 'denied';
  if (REJECTED.has(code)) return 'rejected';
  if (code === 'NoSuchEntity' || code === 'NoSuchEntityException') return 'not_found';
  if (code === 'LimitExceeded' || code === 'LimitExceededException') return 'limit';
  if (status !== undefined && status >= 500) return 'unavailable';
  // No HTTP status at all: the request never got an answer (refused, reset, timed out).
  if (NETWORK.has(e.code ?? '') || e.name === 'TimeoutError' || (status === undefined && !(e as { $fault?: string }).$fault))
    return 'unavailable';
  return 'other';
}

export const isTransient = (kind: FailureKind) => kind === 'throttled' || kind === 'unavailable';

/** The cap of one backoff between attempts. */
const MAX_BACKOFF_MS = 5000;

/** The longest wait before retry number `attempt` (1 = before the second attempt); the wait is half to all of it. */
const backoffCapMs = (attempt: number, baseDelayMs: number) => Math.min(MAX_BACKOFF_MS, baseDelayMs * 2 ** (attempt - 1));

/** The longest `withRetry` can spend waiting between attempts, in total. */
export function longestBackoffMs(opts: Pick<RetryOptions, 'attempts' | 'baseDelayMs'>): number {
  let total = 0;
  for (let attempt = 1; attempt < opts.attempts; attempt++) total += backoffCapMs(attempt, opts.baseDelayMs);
  return total;
}

export interface RetryOptions {
  attempts: number;
  baseDelayMs: number;
  /** Also retry this failure (besides throttling, 5xx and network errors). */
  retryIf?: (err: unknown, kind: FailureKind) => boolean;
}

/**
 * Runs an upstream call with our own retries (the SDK's are off so there is
 * one policy in one place): transient failures are retried with jittered
 * exponential backoff (half fixed, half random, so retries spread out), capped, for a few attempts; anything else fails at once.
 */
export async function withRetry<T>(call: () => Promise<T>, opts: RetryOptions): Promise<T> {
  let unanswered = false;
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (err) {
      const kind = classify(err);
      const retry = isTransient(kind) || (opts.retryIf?.(err, kind) ?? false);
      // An attempt that got no answer (timeout, reset, 5xx) may have done what was asked, whatever a later
      // attempt answers. Callers that must revoke what a call made read this (credential-service).
      if (maybeDone(err)) unanswered = true;
      if (!retry || attempt >= opts.attempts) {
        if (unanswered) markUnanswered(err);
        throw err;
      }
      const cap = backoffCapMs(attempt, opts.baseDelayMs);
      await sleep(Math.round(cap / 2 + Math.random() * (cap / 2)));
    }
  }
}
