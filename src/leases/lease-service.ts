import { type KeyObject, verify as cryptoVerify } from 'node:crypto';
import { authorize, deny, taskContext } from '../authz.ts';
import type { Deps } from '../deps.ts';
import { notFound } from '../errors.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import { endLeases } from '../revocation/ending.ts';
import { verifyEs256 } from '../signing/ecdsa.ts';
import type { TaskRecord } from '../tasks/types.ts';
import { LeaseStore } from './lease-store.ts';
import type { LeaseRecord, RevokeReason } from './types.ts';
import { taskOfLease } from '../tasks/incarnation.ts';
import { readsAnAncestor } from '../tasks/readers.ts';
import { type VerifiedToken, VerifiedTokens } from './verified-tokens.ts';

/** RFC 7662 answer. Anything not active is exactly `{ active: false }`. */
export type Introspection = { active: false } | ({ active: true } & Record<string, unknown>);

const INACTIVE: Introspection = Object.freeze({ active: false });

/**
 * The longest token introspection looks at. It was 8,192 characters, but the broker mints longer ones within
 * every bound (a token holds its scopes, up to 100 of 256 characters, and its `act` chain): those were answered
 * `active: false` while valid. The longest it can mint is ~70 KB (10 delegation levels of 2 KB identities);
 * the form body limit (`server.bodyLimitBytes`) bounds what arrives anyway.
 */
const MAX_INTROSPECTED_CHARS = 131_072;

/**
 * The key decides how a signature is checked; the token's header only has to agree with it. Letting
 * the header choose handed an Ed25519 key to ECDSA-SHA-256, which node:crypto refuses by throwing.
 */
function verifiedBy(key: KeyObject, alg: unknown, input: Buffer, sig: Buffer): boolean {
  try {
    if (key.asymmetricKeyType === 'ec') return alg === 'ES256' && verifyEs256(input, key, sig);
    if (key.asymmetricKeyType === 'ed25519') return alg === 'EdDSA' && cryptoVerify(null, input, key, sig);
  } catch {
    // A signature node:crypto cannot even parse is not a valid one.
  }
  return false;
}

/** Reading, revoking and introspecting leases. */
export class LeaseService {
  private readonly deps: Deps;
  /** Tokens whose signature introspection checked already (signature only: see verified-tokens.ts). */
  private readonly verified = new VerifiedTokens();
  constructor(deps: Deps) {
    this.deps = deps;
  }

  /**
   * The lease and its task's status; for the lease's agent, the task's orchestrator, whoever may read a task above
   * it (the lease is in that task's tree), or an admin.
   */
  async get(who: WorkloadIdentity, leaseId: string): Promise<{ lease: LeaseRecord; taskStatus?: string }> {
    const { lease, task } = await this.load(who, leaseId);
    return { lease, ...(task ? { taskStatus: task.status } : {}) };
  }

  /**
   * Revokes one lease early (DELETE). Idempotent: an ended lease answers the
   * same. A credential with nothing upstream ends at once; an upstream one is
   * handed to the worker (an `issuing` one as soon as its issuance finishes).
   */
  async revoke(who: WorkloadIdentity, leaseId: string): Promise<{ leaseId: string; status: string }> {
    const { lease, task, party } = await this.load(who, leaseId);
    const policies = await authorize(
      this.deps,
      who,
      'revoke',
      { type: 'Task', id: lease.taskId },
      task ? { task: taskContext(task) } : {},
      {
        taskId: lease.taskId,
        leaseId,
      },
    );
    if (LeaseStore.isEnded(lease.status)) return { leaseId, status: lease.status };
    const now = this.deps.clock.now();
    // A party to the lease revokes its own; anyone else here is an admin (load refused everyone else).
    const reason = party ? 'revoked_by_caller' : 'revoked_by_admin';
    await this.deps.audit.append({
      action: 'lease.revoke',
      actor: who.id,
      decision: 'ok',
      taskId: lease.taskId,
      role: lease.role,
      leaseId,
      reason,
      policies,
      detail: { stage: 'requested' },
    });
    const status = await endOneLease(this.deps, lease, reason, now);
    // What the caller is told must survive a failover, or the lease would come back live.
    await this.deps.replicas.after([this.deps.keys.replicaFenceOfTask(lease.taskId)]);
    return { leaseId, status };
  }

  /**
   * The lease and its task, if `who` may see them; a refusal is audited. `party`: `who` is the lease's agent, its
   * task's orchestrator or a party to a task above it (the root's orchestrator stops one sub-agent's credential
   * without ending the tree), not only an admin.
   */
  private async load(who: WorkloadIdentity, leaseId: string): Promise<{ lease: LeaseRecord; task?: TaskRecord; party: boolean }> {
    const lease = await this.deps.leases.get(leaseId);
    if (!lease) throw notFound('lease_not_found', `No lease ${leaseId}.`);
    // Under a reused task id, the orchestrator of the task there now is not this lease's.
    const task = taskOfLease(lease, await this.deps.tasks.get(lease.taskId));
    const party =
      who.id === lease.agent || who.id === task?.openedBy || (task !== undefined && (await readsAnAncestor(this.deps, who, task)));
    if (!party && !this.deps.patterns.admins.matches(who.id)) {
      await deny(
        this.deps,
        who,
        'not_lease_party',
        "Only the lease's agent, its task's orchestrator, a party to a task above it or an admin may read it.",
        {
          action: 'access.deny',
          taskId: lease.taskId,
          leaseId,
        },
      );
    }
    return { lease, ...(task ? { task } : {}), party };
  }

  /**
   * RFC 7662: verifies the token is one of ours (signature with a published
   * key, typ, issuer, expiry), then that its lease is active and its task
   * open. Revocation is visible here the moment the lease or task changes.
   */
  async introspect(token: string | undefined): Promise<Introspection> {
    if (!token || token.length > MAX_INTROSPECTED_CHARS) return INACTIVE;
    const now = this.deps.clock.now();
    const signed = this.signed(token, now);
    if (!signed) return INACTIVE;
    const { claims } = signed;
    if (claims.iss !== this.deps.config.server.publicUrl || typeof claims.exp !== 'number' || claims.exp * 1000 <= now) return INACTIVE;
    if (typeof claims.jti !== 'string' || typeof claims.task_id !== 'string') return INACTIVE;
    const [leaseStatus, taskStatus] = await Promise.all([this.deps.leases.status(claims.jti), this.deps.tasks.status(claims.task_id)]);
    if (leaseStatus !== 'active' || taskStatus !== 'open') return INACTIVE;
    const { scope, sub, aud, iss, exp, iat, jti, client_id, task_id, act } = claims;
    return { active: true, token_type: 'Bearer', scope, sub, aud, iss, exp, iat, jti, client_id, task_id, ...(act ? { act } : {}) };
  }

  /**
   * The token's header and claims if it is an at+jwt whose signature verifies with a key the broker
   * publishes now. The same token seen before (with an `exp` not past) is not verified again, as long
   * as the key it verified with is still the one published for its kid.
   */
  private signed(token: string, now: number): VerifiedToken | undefined {
    const id = VerifiedTokens.id(token);
    const seen = this.verified.get(id, now);
    if (seen) {
      const key = this.deps.signing.publicKey(seen.header.kid as string, now);
      if (!key) return undefined; // its key left the JWKS (retired, or rotated away at once)
      // Keys are re-read from Redis every few seconds (new objects, same key material).
      if (key === seen.key || key.equals(seen.key)) {
        seen.key = key;
        this.deps.metrics.introspectSignatures.inc({ check: 'remembered' });
        return seen;
      }
    }
    const parts = token.split('.');
    if (parts.length !== 3) return undefined;
    let header: Record<string, unknown>;
    let claims: Record<string, unknown>;
    try {
      header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
      claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
    } catch {
      return undefined;
    }
    if (!header || !claims || typeof claims !== 'object') return undefined;
    if (header.typ !== 'at+jwt' || typeof header.kid !== 'string') return undefined;
    const key = this.deps.signing.publicKey(header.kid, now);
    if (!key) return undefined;
    const input = Buffer.from(`${parts[0]}.${parts[1]}`);
    const sig = Buffer.from(parts[2]!, 'base64url');
    // Node's decoder skips padding and stray characters and ignores a last character's spare bits, so many
    // strings decode to one signature; the broker issued exactly one of them (RFC 7515 base64url).
    if (sig.toString('base64url') !== parts[2]) return undefined;
    this.deps.metrics.introspectSignatures.inc({ check: 'verified' });
    if (!verifiedBy(key, header.alg, input, sig)) return undefined;
    const verified = { key, header, claims };
    // Only until its exp: after that it is inactive whatever its signature (and a token without one is not kept).
    if (typeof claims.exp === 'number' && Number.isFinite(claims.exp))
      this.verified.remember(id, verified, claims.exp * 1000, token.length);
    return verified;
  }
}

/**
 * Ends one lease for `reason` (its revoke already recorded): a credential with nothing upstream at once,
 * an upstream one by the worker (an `issuing` one as soon as its issuance finishes). Returns the status
 * the lease has now. Also what re-applies a revocation a Redis that went back in time lost (ops/reapply.ts).
 */
export async function endOneLease(
  deps: Deps,
  lease: LeaseRecord,
  reason: RevokeReason,
  now: number,
): Promise<'revoked' | 'revoking' | 'issuing'> {
  if (deps.providers.get(lease.provider)?.upstream === false && lease.status !== 'issuing') {
    await endLeases(deps, [lease], reason, now);
    return 'revoked';
  }
  const res = await deps.leases.requestEnd(lease.leaseId, reason);
  if (res.kind === 'revoking') await deps.queue.endLease(lease, res.reason, now);
  return res.kind === 'deferred' ? 'issuing' : 'revoking';
}
