import { randomUUID } from 'node:crypto';
import type { Deps } from '../deps.ts';

/** How often a follower left behind checks again, and how often an instance says which set it has. */
const CHECK_MS = 5_000;
/** An instance's word on its set lives this long without a refresh (then it is taken as gone). */
const VERSION_TTL_MS = 30_000;

/**
 * Follows the policy reloads other instances announce. Every instance reloads its own copy of the files,
 * and copies reach instances at different times; the set to be on is the one the announcing instance has
 * now (it says so in Redis every few seconds, its watcher's reloads included), not the one it announced:
 * - this instance's files do not load (half-written, say without the end of an incident's forbid), or
 *   load as another set than the announcer's: the set loaded stays in force, but the instance is not
 *   ready and its policy decisions that grant answer 503 until they agree, rather than go on deciding
 *   under a set the operators replaced while the admin was told the reload worked. It checks again every
 *   few seconds (reloading its files); its watcher or SIGHUP may be sooner. Audited once per announcement and reason (`policy.reload`, decision
 *   `error`, `policy_invalid` or `policy_mismatch`); `jit_policy_in_sync` is 0 meanwhile;
 * - the announcer's files change afterwards (they were the older copy): the followers follow that, so a
 *   reload made through an instance with older files does not leave the newer ones out of rotation;
 * - the announcer's word cannot be read (Redis failing) or has expired (it is gone): the set it announced
 *   is the one to agree with, so a blip never lets a follower on a replaced set back in;
 * - two reloads at once: the later announcement wins (each carries its time on the broker's clock); an
 *   instance ignores one older than its own, so the two cannot end up waiting on each other.
 */
export class PolicySync {
  private readonly deps: Deps;
  /** This process, as other instances' announcements and checks name it. */
  readonly instance = randomUUID();
  /** This instance disagrees with the announcement it follows. */
  private behind = false;
  private reported = new Set<string>();
  private latest: string | undefined;
  private latestAt: number | undefined;
  /** The version the followed announcement named (the target when the announcer's word cannot be read). */
  private announced: string | undefined;
  /** When this instance last announced a reload of its own (the broker's clock). */
  private ownAt: number | undefined;
  private timer: NodeJS.Timeout | undefined;
  private readonly heartbeat: NodeJS.Timeout;

  constructor(deps: Deps) {
    this.deps = deps;
    deps.metrics.policyInSync.set(1);
    this.heartbeat = setInterval(() => void this.publish().catch(() => {}), CHECK_MS);
    this.heartbeat.unref();
  }

  /** Whether this instance may decide (for /readyz): it agrees with the last announcer it heard of. */
  get inSync(): boolean {
    return !this.behind;
  }

  /** Says which set this instance has now (also when its watcher reloaded it). */
  async publish(): Promise<void> {
    await this.deps.redis.set(this.key(this.instance), this.deps.policy.version, 'PX', VERSION_TTL_MS);
  }

  /** Another instance reloaded and announced (an older version may send neither version nor instance). */
  async follow(ev: { version?: string; instance?: string; at?: number }): Promise<void> {
    if (ev.instance === this.instance) return; // its own announcement: already reloaded
    if (ev.instance !== undefined && ev.at !== undefined) {
      // The later announcement wins, the instance id breaking a tie: one older than this instance's own reload,
      // or than the one it follows (a message arriving late), is ignored.
      const later = (at: number | undefined, id: string | undefined) =>
        at === undefined || ev.at! > at || (ev.at === at && (id === undefined || ev.instance! > id));
      if (!later(this.ownAt, this.instance) || !later(this.latestAt, this.latest)) return;
    }
    if (ev.instance === undefined) {
      await this.deps.policy.reload().catch((err) => this.deps.logger.error({ err: (err as Error).message }, 'policy reload refused'));
      return;
    }
    this.latest = ev.instance;
    this.latestAt = ev.at;
    this.announced = ev.version;
    this.reported.clear();
    await this.check(ev.instance);
  }

  /** This instance reloaded its own files and is about to announce them (at `at`, the broker's clock). */
  async loaded(at: number): Promise<void> {
    this.latest = undefined;
    this.latestAt = undefined;
    this.ownAt = at;
    this.settle();
    // Best effort: the heartbeat says it again within seconds; the reload itself has happened.
    await this.publish().catch((err) => this.deps.logger.warn({ err: (err as Error).message }, 'could not publish the policy version'));
  }

  close(): void {
    clearTimeout(this.timer);
    clearInterval(this.heartbeat);
  }

  private key(instance: string): string {
    return this.deps.keys.plain('policy-version', instance);
  }

  private settle(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.behind) this.deps.logger.info({ version: this.deps.policy.version }, 'policy set agrees with the last reload; ready');
    this.behind = false;
    this.deps.metrics.policyInSync.set(1);
  }

  private async check(announcer: string): Promise<void> {
    let problem: string | undefined;
    try {
      await this.deps.policy.reload();
    } catch (err) {
      problem = (err as Error).message;
    }
    // Unreadable or expired: the version it announced (fail closed, never open on a Redis blip).
    const target = (await this.deps.redis.get(this.key(announcer)).catch(() => null)) ?? this.announced;
    if (announcer !== this.latest) return; // a newer announcement (or this instance's own reload) took over
    void this.publish().catch(() => {});
    const inForce = this.deps.policy.version;
    const reason = problem !== undefined ? 'policy_invalid' : target === undefined || target === inForce ? undefined : 'policy_mismatch';
    if (reason === undefined) {
      this.settle();
      return;
    }
    this.behind = true;
    this.deps.metrics.policyInSync.set(0);
    this.deps.logger.error(
      { announcer, expected: target, inForce, err: problem },
      'policy set disagrees with the last reload; not ready until it agrees',
    );
    await this.report(reason, announcer, target ?? '', inForce);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.check(announcer), CHECK_MS);
    this.timer.unref();
  }

  /** One record per announcement and reason. */
  private async report(reason: string, announcer: string, expected: string, inForce: string): Promise<void> {
    if (this.reported.has(reason)) return;
    this.reported.add(reason);
    await this.deps.audit
      .append({ action: 'policy.reload', actor: 'broker', decision: 'error', reason, detail: { announcer, expected, inForce } })
      .catch((err) => this.deps.logger.error({ err: (err as Error).message }, 'could not audit a policy reload left behind'));
  }
}
