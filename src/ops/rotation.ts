import type { Redis } from 'ioredis';
import type { Deps } from '../deps.ts';
import { badRequest, BrokerError, upstreamFailed } from '../errors.ts';
import type { WorkloadIdentity } from '../identity/types.ts';
import type { Kek } from '../signing/kek.ts';
import { authorize } from '../authz.ts';

/** Broadcast on `${prefix}:events:broker` so every instance switches. */
type BrokerEvent = { type: 'rotated'; target: string } | { type: 'policy-reload' };

/**
 * Rotation of the broker's own secrets (signing key, Vault AppRole secret-id,
 * AWS access key), on demand and on a schedule. The rotating instance seals
 * the new upstream secret with the KEK into Redis and announces it; every
 * instance (and any that starts later) decrypts it and switches. An instance
 * that cannot decrypt refuses to start rather than run with a stale secret.
 */
export class RotationService {
  private readonly deps: Deps;
  private readonly kek: Kek;
  private readonly publisher: Redis;

  constructor(deps: Deps, kek: Kek, publisher: Redis) {
    this.deps = deps;
    this.kek = kek;
    this.publisher = publisher;
  }

  /** Targets this instance can rotate. */
  targets(): string[] {
    return this.deps.providers
      .all()
      .filter(([, p]) => p.rotate)
      .map(([k]) => (k === 'jwt' ? 'signing-key' : k));
  }

  async rotate(who: WorkloadIdentity | 'schedule', target: string): Promise<Record<string, unknown>> {
    const actor = who === 'schedule' ? 'broker' : who.id;
    if (who !== 'schedule') await authorize(this.deps, who, 'rotate', { type: 'Broker', id: 'broker' }, {}, {});
    const provider = this.deps.providers.get(target === 'signing-key' ? 'jwt' : target);
    if (!provider?.rotate) throw badRequest('unknown_rotation_target', `Cannot rotate "${target}"; targets: ${this.targets().join(', ')}.`);
    // One rotation per target at a time across all instances.
    const lock = this.deps.keys.lock(`rotate:${target}`);
    if (!(await this.deps.redis.set(lock, actor, 'PX', 120_000, 'NX')))
      throw new BrokerError('rotation_in_progress', 409, 'Conflict', `A rotation of ${target} is already running.`);
    try {
      let distributed = false;
      const result = await provider.rotate(async (secret) => {
        await this.deps.redis.set(this.deps.keys.secrets(target), this.kek.encrypt(JSON.stringify(secret), `secret:${target}`));
        await this.announce({ type: 'rotated', target });
        distributed = true;
        // Give every instance time to switch before the provider retires the old secret.
        await new Promise((r) => setTimeout(r, this.deps.config.rotation.switchGraceMs));
      });
      if (!distributed) await this.announce({ type: 'rotated', target }); // signing key: instances reload from Redis
      this.deps.metrics.rotations.inc({ target, result: 'ok' });
      await this.deps.audit.append({ action: 'rotate', actor, decision: 'ok', reason: target, detail: { rotated: result.rotated } });
      return { target, rotated: result.rotated, ...(result.detail ?? {}) };
    } catch (err) {
      this.deps.metrics.rotations.inc({ target, result: 'failed' });
      const code = err instanceof BrokerError ? err.code : 'rotation_failed';
      await this.deps.audit.append({ action: 'rotate', actor, decision: 'error', reason: code, detail: { target, oldSecretInUse: true } });
      if (err instanceof BrokerError) throw err;
      throw upstreamFailed('rotation_failed', `Rotating ${target} failed; the previous secret is still in use.`, { cause: err });
    } finally {
      await this.deps.redis.del(lock);
    }
  }

  /** At startup and on announcements: switch to the newest distributed secret of every provider. */
  async applyDistributedSecrets(only?: string): Promise<void> {
    for (const [kind, p] of this.deps.providers.all()) {
      const target = kind === 'jwt' ? 'signing-key' : kind;
      if (only && only !== target) continue;
      if (kind === 'jwt') {
        await this.deps.signing.reload();
        continue;
      }
      if (!p.useSecret) continue;
      const sealed = await this.deps.redis.get(this.deps.keys.secrets(target));
      if (!sealed) continue;
      let secret: Record<string, string>;
      try {
        secret = JSON.parse(this.kek.decrypt(sealed, `secret:${target}`));
      } catch {
        throw new Error(`cannot decrypt the rotated ${target} secret in Redis: wrong secrets.kek? Refusing to run with a stale secret.`);
      }
      await p.useSecret(secret);
    }
  }

  async broadcastPolicyReload(): Promise<{ reloaded: boolean; policies: number }> {
    const r = await this.deps.policy.reload();
    await this.announce({ type: 'policy-reload' });
    await this.deps.audit.append({ action: 'policy.reload', actor: 'broker', decision: 'ok', detail: { policies: r.policies } });
    return { reloaded: true, policies: r.policies };
  }

  /** Handles an event from another instance. */
  async onEvent(raw: string): Promise<void> {
    const ev = JSON.parse(raw) as BrokerEvent;
    if (ev.type === 'rotated') await this.applyDistributedSecrets(ev.target);
    else
      await this.deps.policy
        .reload()
        .catch((err) => this.deps.logger.error({ err: (err as Error).message }, 'policy reload refused; old set stays'));
  }

  private async announce(ev: BrokerEvent): Promise<void> {
    await this.publisher.publish(this.deps.keys.channel('broker'), JSON.stringify(ev));
  }
}
