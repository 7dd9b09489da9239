import { performance } from 'node:perf_hooks';
import { Counter } from 'prom-client';
import { type BrokerError, unauthenticated } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';

/**
 * Which check refused a workload identity token. A fixed vocabulary, returned
 * to the caller as the problem's `reason` member: it tells an honest caller
 * what to fix and an attacker nothing it did not already know (the JWKS and
 * the trust domain of a SPIFFE ID are public; whether a signature verified is
 * what the attacker is testing anyway). The specifics (which kid, which
 * claim value) go only to the operator's log, truncated.
 */
export type RejectionReason =
  | 'missing'
  | 'malformed'
  | 'subject'
  | 'untrusted'
  | 'unknown_key'
  | 'signature'
  | 'audience'
  | 'not_yet_valid'
  | 'expired'
  | 'lifetime'
  | 'replayed';

/**
 * Stable codes: the class of failure a client can act on (get a token, get a
 * fresh one, mint a new one instead of reusing, fix the token). The reason
 * refines `identity_invalid` for people reading the answer.
 */
export type IdentityCode = 'identity_missing' | 'identity_invalid' | 'identity_expired' | 'identity_replayed';

/** Code and client-facing detail per reason: a fixed table, never built from the token. */
export const REJECTIONS: Readonly<Record<RejectionReason, { code: IdentityCode; detail: string }>> = Object.freeze({
  missing: { code: 'identity_missing', detail: 'A workload identity token is required (Authorization: Bearer <jwt>).' },
  malformed: {
    code: 'identity_invalid',
    detail: 'The workload identity token is malformed, or uses a header, algorithm or claim value this broker does not accept.',
  },
  subject: { code: 'identity_invalid', detail: 'The token subject is not a canonical SPIFFE ID.' },
  untrusted: { code: 'identity_invalid', detail: 'The token comes from an issuer or trust domain this broker does not trust.' },
  unknown_key: { code: 'identity_invalid', detail: 'The token names a signing key this broker does not know.' },
  signature: { code: 'identity_invalid', detail: 'The token signature does not verify.' },
  audience: { code: 'identity_invalid', detail: 'The token is not addressed to this broker (aud).' },
  not_yet_valid: { code: 'identity_invalid', detail: 'The token is not valid yet (nbf or iat in the future).' },
  expired: { code: 'identity_expired', detail: 'The workload identity token has expired.' },
  lifetime: { code: 'identity_invalid', detail: 'The token lives longer than this broker accepts (identity.maxTokenLifetimeSeconds).' },
  replayed: { code: 'identity_replayed', detail: 'The workload identity token was already used.' },
});

/** Why a token was refused, with an operator-only detail (already clipped by the thrower). */
export class IdentityRejection extends Error {
  readonly reason: RejectionReason;
  constructor(reason: RejectionReason, logDetail: string) {
    super(logDetail);
    this.name = 'IdentityRejection';
    this.reason = reason;
  }
}

/** The 401 a caller sees for `reason`. */
export function rejectionError(reason: RejectionReason): BrokerError {
  const r = REJECTIONS[reason];
  return unauthenticated(r.code, r.detail, { extra: { reason } });
}

/**
 * Records refusals without letting a flood of bad tokens flood the log: every
 * refusal is counted in metrics and logged at debug; at the default level at
 * most one line per interval, carrying the counts since the last line and one
 * sample. The first refusal after a quiet interval is logged at once.
 */
export class RejectionLog {
  private readonly logger: Logger;
  private readonly denied: Metrics['denied'] | undefined;
  private readonly byReason: Counter<'reason'> | undefined;
  private readonly intervalMs: number;
  private counts: Partial<Record<RejectionReason, number>> = {};
  private lastLine = Number.NEGATIVE_INFINITY;

  constructor(opts: { logger: Logger; metrics?: Metrics; intervalMs?: number }) {
    this.logger = opts.logger;
    this.intervalMs = opts.intervalMs ?? 10_000;
    this.denied = opts.metrics?.denied;
    if (opts.metrics) {
      const registers = [opts.metrics.registry];
      this.byReason =
        (opts.metrics.registry.getSingleMetric('jit_identity_rejections_total') as Counter<'reason'> | undefined) ??
        new Counter({
          name: 'jit_identity_rejections_total',
          help: 'Workload identity tokens refused, by reason',
          labelNames: ['reason'],
          registers,
        });
    }
  }

  record(reason: RejectionReason, detail: string): void {
    this.denied?.inc({ code: REJECTIONS[reason].code });
    this.byReason?.inc({ reason });
    this.logger.debug({ reason, detail }, 'identity rejected');
    this.counts[reason] = (this.counts[reason] ?? 0) + 1;
    // Monotonic: with Date.now(), a wall clock stepped back an hour kept the refusals out of the log for that
    // hour (test/redis/error-log-clock-step.test.ts).
    const now = performance.now();
    if (now - this.lastLine < this.intervalMs) return;
    this.logger.info({ rejected: this.counts, sample: { reason, detail } }, 'identity tokens rejected');
    this.counts = {};
    this.lastLine = now;
  }
}
