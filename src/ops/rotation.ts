import { outboxIntent } from '../audit/outbox-intent.ts';
import type { OutboxEvent } from '../audit/record.ts';
import { authorize } from '../authz.ts';
import type { Deps } from '../deps.ts';
import { BrokerError, badRequest, conflict, upstreamFailed } from '../errors.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import { PolicyLoadError } from '../policy/errors.ts';
import { PolicySync } from './policy-sync.ts';
import { ProviderRegistry } from '../providers/registry.ts';
import { type RotationJournal, RotationLockLost, type RotationResult } from '../providers/types.ts';
import { acquireLock, type HeldLock, keepLock, reportTakeover } from '../redis/lock.ts';
import type { RedisClient } from '../redis/scripts.ts';
import type { Kek } from '../signing/kek.ts';
import { openJournal } from './rotation-journal.ts';
import { SealedSecrets } from './sealed-secrets.ts';

/**
 * The rotation lock of a target: set for 10 s and extended every third of that while the rotation runs (its
 * switch grace, its upstream calls), so a process killed mid-rotation blocks the next rotation of the target
 * (409 `rotation_in_progress`) and the workers' resume of it for 10 s, not 30. Its steps are fenced (a write is
 * refused once the lock is another's, and each upstream retire checks it first), so a hold that lapses under a
 * Redis stall costs a rotation that stops, never two that write. `ttlMs` stays the previous release's TTL (30 s):
 * its lock is waited out during a rolling upgrade, not taken over. Lower it to `holdMs` once no such release runs.
 */
const LOCK = { ttlMs: 30_000, holdMs: 10_000 };

/** Broadcast on `${prefix}:events:broker` so every instance follows. */
export type BrokerEvent =
  | { type: 'rotated'; target: string }
  | { type: 'policy-reload'; version?: string; instance?: string; at?: number }
  | { type: 'quarantine' };

/**
 * Rotation of the broker's own secrets (signing key, Vault AppRole secret-id,
 * AWS access key), on demand and on a schedule. The rotating instance seals
 * the new upstream secret with the KEK into Redis and announces it; every
 * instance (and any that starts later) decrypts it and switches. An instance
 * that cannot decrypt refuses to start rather than run with a stale secret.
 */
export class RotationService {
  private readonly deps: Deps;
  private readonly sealed: SealedSecrets;
  private readonly publisher: RedisClient;
  /** Follows reloads announced by other instances (and says when it cannot). */
  readonly policySync: PolicySync;

  constructor(deps: Deps, kek: Kek, publisher: RedisClient) {
    this.deps = deps;
    this.sealed = new SealedSecrets(deps.redis, deps.keys, kek);
    this.publisher = publisher;
    this.policySync = new PolicySync(deps);
  }

  /** Targets this instance can rotate. */
  targets(): string[] {
    return this.deps.providers
      .all()
      .filter(([, p]) => p.rotate)
      .map(([k]) => ProviderRegistry.targetOf(k));
  }

  /**
   * Rotates `target`. `immediate` (signing key only: a compromised key) makes
   * the new key sign at once and drops the old one from the JWKS.
   */
  async rotate(
    who: WorkloadIdentity | 'schedule',
    target: string,
    opts: { immediate?: boolean; resumed?: boolean; scheduledFor?: string } = {},
  ): Promise<Record<string, unknown>> {
    const actor = who === 'schedule' ? 'broker' : who.id;
    if (who !== 'schedule') await authorize(this.deps, who, 'rotate', { type: 'Broker', id: 'broker' }, { target }, {});
    const found = this.deps.providers.byRotationTarget(target);
    const provider = found?.[1];
    if (!provider?.rotate) throw badRequest('unknown_rotation_target', `Cannot rotate "${target}"; targets: ${this.targets().join(', ')}.`);
    if (opts.immediate && target !== 'signing-key') throw badRequest('invalid_request', '`immediate` applies to the signing key only.');
    // One rotation per target at a time across all instances. Short-lived and renewed while the rotation
    // runs, so a process that dies mid-rotation blocks the next one for seconds, not minutes.
    const lock = await acquireLock(this.deps.redis, this.deps.keys.lock(`rotate:${target}`), {
      ...LOCK,
      onTakeover: reportTakeover(this.deps.logger, (e) => this.deps.audit.append(e)),
    });
    if (!lock) throw conflict('rotation_in_progress', `A rotation of ${target} is already running.`);
    // Kept from the start: writing the intent below can take longer than the hold on a slow Redis.
    const keep = keepLock(lock, 'rotation');
    const flags = {
      ...(opts.immediate ? { immediate: true } : {}),
      ...(opts.resumed ? { resumed: true } : {}),
      // A scheduled firing names its slot, so a late run is told from a double one (two records, one slot).
      ...(opts.scheduledFor ? { scheduledFor: opts.scheduledFor } : {}),
    };
    // A rotation changes state in many steps (Redis, the provider, every instance), so its record cannot ride
    // in one script: it goes to the ops chain's outbox before the first step, saying `interrupted`, and is
    // kept there while the rotation runs. A process that dies part-way leaves that record for recovery
    // (src/audit/outbox.ts); one that finishes puts the outcome in its place (OutboxIntent.finish).
    let intent: Awaited<ReturnType<typeof outboxIntent>>;
    try {
      intent = await outboxIntent(this.deps, 'ops', {
        action: 'rotate',
        actor,
        decision: 'error',
        reason: 'rotation_interrupted',
        detail: { target, interrupted: true, ...flags },
      });
    } catch (err) {
      keep.stop();
      await lock.release().catch(() => {});
      throw err;
    }
    // The outcome is recorded once, after the rotation succeeded or failed: a failed record of a rotation that
    // succeeded must not be taken for a failed rotation (its record said `rotation_failed`, `oldSecretInUse`).
    let outcome: OutboxEvent;
    let answer: Record<string, unknown> | undefined;
    let failure: unknown;
    try {
      try {
        const result = await this.rotateHeld(target, provider, lock, keep.signal, opts);
        this.deps.metrics.rotations.inc({ target, result: 'ok' });
        outcome = { action: 'rotate', actor, decision: 'ok', reason: target, detail: { rotated: result.rotated, ...flags } };
        answer = { target, rotated: result.rotated, ...(result.detail ?? {}) };
      } catch (err) {
        // A takeover (the lock lapsed, another rotation goes on) is not a failed rotation for alerting.
        this.deps.metrics.rotations.inc({ target, result: err instanceof RotationLockLost ? 'taken_over' : 'failed' });
        // Run with the secret Redis names (what the others run with, or what the rotation that took the
        // lock distributes), not with one a failed step left this instance on.
        if (target !== 'signing-key') await this.applyDistributedSecrets(target).catch(() => {});
        if (err instanceof RotationLockLost) {
          outcome = { action: 'rotate', actor, decision: 'error', reason: err.code, detail: { target, lockLost: true } };
          failure = err;
        } else {
          const code = err instanceof BrokerError ? err.code : 'rotation_failed';
          // rotation_incomplete: the instances could not all be switched back, so both secrets were kept valid.
          const state: Record<string, boolean> = code === 'rotation_incomplete' ? { bothSecretsValid: true } : { oldSecretInUse: true };
          outcome = {
            action: 'rotate',
            actor,
            decision: 'error',
            reason: code,
            detail: { target, ...state, ...(opts.resumed ? { resumed: true } : {}) },
          };
          failure =
            err instanceof BrokerError
              ? err
              : upstreamFailed('rotation_failed', `Rotating ${target} failed; the previous secret is still in use.`, { cause: err });
        }
      }
      try {
        await intent.finish(outcome);
      } catch (err) {
        // Redis failed at the swap: the outcome is tried again in the background (and the intent stands for
        // it should the process die first). The answer stays the rotation's: a 503 for a rotation that was
        // done would have the caller rotate again, and one for a failed rotation would hide its code.
        this.deps.logger.warn({ target, err: (err as Error).message }, 'rotation: its outcome record is not in Redis yet; retrying');
      }
    } finally {
      intent.stop();
      keep.stop();
      await lock.release();
    }
    if (failure !== undefined) throw failure;
    return answer!;
  }

  /** The steps of a rotation of `target`, under its lock (rotate). */
  private async rotateHeld(
    target: string,
    provider: NonNullable<ReturnType<Deps['providers']['byRotationTarget']>>[1],
    lock: HeldLock,
    held: AbortSignal,
    opts: { immediate?: boolean; resumed?: boolean },
  ): Promise<Pick<RotationResult, 'rotated' | 'detail'>> {
    // Start from the secret the others run with (Redis's), so "not in use" below means not in use anywhere.
    if (target !== 'signing-key') await this.applyDistributedSecrets(target);
    const journal = await this.journal(target, lock, held);
    if (journal.leftover && target !== 'signing-key') {
      // A rotation killed between sealing a secret into Redis and announcing it left the others on the one it
      // was retiring: tell them of Redis's first, and give them time to switch, before leftovers are retired.
      await this.announce({ type: 'rotated', target });
      await new Promise((r) => setTimeout(r, this.deps.config.rotation.switchGraceMs));
    }
    let distributed = false;
    const result = await provider.rotate!(
      async (secret) => {
        // Fenced: a rotation whose lock lapsed must not hand out its key over the current holder's work.
        await this.sealed.write(target, secret, lock);
        await this.announce({ type: 'rotated', target });
        distributed = true;
        // Give every instance time to switch before the provider retires the old secret.
        await new Promise((r) => setTimeout(r, this.deps.config.rotation.switchGraceMs));
      },
      opts,
      journal,
    );
    if (!distributed) await this.announce({ type: 'rotated', target }); // signing key: instances reload from Redis
    return result;
  }

  /** The rotation intent of `target`, as the provider's journal (src/ops/rotation-journal.ts). */
  private journal(target: string, lock: HeldLock, held: AbortSignal): Promise<RotationJournal> {
    return openJournal(this.deps.redis, this.deps.keys, target, lock, this.sealed, this.deps.logger, held);
  }

  /** At startup and on announcements: switch to the newest distributed secret of every provider. */
  async applyDistributedSecrets(only?: string): Promise<void> {
    for (const [kind, p] of this.deps.providers.all()) {
      const target = ProviderRegistry.targetOf(kind);
      if (only && only !== target) continue;
      if (kind === 'jwt') {
        await this.deps.signing.reload();
        continue;
      }
      if (!p.useSecret) continue;
      let found: Awaited<ReturnType<SealedSecrets['read']>>;
      try {
        found = await this.sealed.read(target);
      } catch {
        throw new Error(`cannot decrypt the rotated ${target} secret in Redis: wrong secrets.kek? Refusing to run with a stale secret.`);
      }
      if (!found) continue;
      await p.useSecret(found.secret);
      this.sealed.hold(target, found.stored);
    }
  }

  /**
   * After Redis lost its data: writes back the rotated secrets this instance
   * runs with (sealed; never over a newer one) and announces them, so
   * instances started later, or started during the loss on the configured
   * secret the rotation retired, switch to them.
   */
  async restoreSecrets(): Promise<void> {
    for (const target of await this.sealed.restore()) {
      this.deps.logger.warn({ target }, 'wrote the rotated secret back to Redis after a data loss');
      await this.deps.audit.append({
        action: 'secret.restored',
        actor: 'broker',
        decision: 'ok',
        reason: 'redis_data_lost',
        detail: { target },
      });
      await this.announce({ type: 'rotated', target });
    }
  }

  /**
   * Reloads the policy directory here and on every instance. A set that does
   * not load is refused with the file, line and Cedar's message (409
   * policy_invalid: the admin's request is fine, the files on disk are not),
   * and the previous set stays in force.
   */
  async broadcastPolicyReload(who: WorkloadIdentity): Promise<{ reloaded: boolean; policies: number; version: string }> {
    let r: { policies: number; version: string };
    try {
      r = await this.deps.policy.reload();
    } catch (err) {
      if (!(err instanceof PolicyLoadError)) throw err;
      await this.deps.audit.append({ action: 'policy.reload', actor: who.id, decision: 'error', reason: 'policy_invalid' });
      // An admin may see file names and Cedar's messages.
      throw conflict('policy_invalid', `The policy set was not reloaded; the previous set stays in force. ${err.message}`, {
        extra: { issues: err.issues.map(({ code, file, line, column, message }) => ({ code, file, line, column, message })) },
      });
    }
    const outcome: OutboxEvent = {
      action: 'policy.reload',
      actor: who.id,
      decision: 'ok',
      detail: { policies: r.policies, version: r.version },
    };
    // Recorded with the reload's own state change (the version in force, then the announcement), which is two
    // steps: the record goes to the ops chain's outbox first, saying `interrupted`, so a process that dies in
    // between leaves it for recovery; the finished reload writes the outcome in its place.
    const intent = await outboxIntent(this.deps, 'ops', { ...outcome, detail: { ...outcome.detail, interrupted: true } });
    try {
      const at = this.deps.clock.now();
      await this.policySync.loaded(at);
      await this.announce({ type: 'policy-reload', version: r.version, instance: this.policySync.instance, at });
    } finally {
      intent.stop();
    }
    await intent.finish(outcome);
    return { reloaded: true, policies: r.policies, version: r.version };
  }

  /** Handles an event from another instance. */
  async onEvent(raw: string): Promise<void> {
    const ev = JSON.parse(raw) as BrokerEvent;
    if (ev.type === 'rotated') await this.applyDistributedSecrets(ev.target);
    else if (ev.type === 'quarantine') await this.deps.quarantine.reload();
    else await this.policySync.follow(ev);
  }

  async announce(ev: BrokerEvent): Promise<void> {
    await this.publisher.publish(this.deps.keys.channel('broker'), JSON.stringify(ev));
  }
}
