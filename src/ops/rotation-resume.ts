import { performance } from 'node:perf_hooks';
import type { Deps } from '../deps.ts';
import { BrokerError } from '../errors.ts';
import type { RotationService } from './rotation.ts';

/** The longest wait between attempts at a rotation that keeps failing. */
const MAX_BACKOFF_MS = 3_600_000;

/**
 * Finishes rotations that did not: a rotation's intent (`keys.rotationIntent`) is in Redis only while
 * one runs, and stays when it dies or fails half-way. What it made upstream (an AWS access key, a Vault
 * secret-id) may then be valid and unused, and only the next rotation retired it, which might be months
 * away. Every `rotation.resumeInterruptedSeconds` a worker looks for an intent whose rotation lock is free
 * and rotates that target again (audited `rotate` with `detail.resumed`), which retires the leftovers
 * first. A rotation that keeps failing is tried again with a doubling wait, up to an hour. Any number of
 * workers may run this: the rotation lock lets one through.
 */
export class RotationResume {
  private readonly deps: Deps;
  private readonly rotation: RotationService;
  private timer: NodeJS.Timeout | undefined;
  /**
   * Per target: when to try again after a failed attempt (performance.now()), and the wait after the next
   * failure. Monotonic: with Date.now(), a wall clock stepped back an hour held off finishing a rotation, and
   * retiring the live key it left, for that hour more (test/ops/rotation-resume-clock-step.test.ts).
   */
  private readonly backoff = new Map<string, { at: number; waitMs: number }>();
  /** The pass under way: one at a time, and stop() waits for it. */
  private running: Promise<void> | undefined;

  constructor(deps: Deps, rotation: RotationService) {
    this.deps = deps;
    this.rotation = rotation;
  }

  start(): void {
    const everyMs = this.deps.config.rotation.resumeInterruptedSeconds * 1000;
    if (everyMs <= 0) return;
    this.timer = setInterval(() => void this.pass(everyMs), everyMs);
    this.timer.unref();
  }

  /** Stops the timer; resolves once a pass under way has ended (its Redis commands before the connections close). */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }

  /** One look at every provider target (the signing key's rotation leaves no upstream secret behind). */
  pass(everyMs = this.deps.config.rotation.resumeInterruptedSeconds * 1000): Promise<void> {
    if (this.running) return Promise.resolve();
    this.running = this.look(everyMs).finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async look(everyMs: number): Promise<void> {
    try {
      for (const target of this.rotation.targets()) {
        if (target === 'signing-key') continue;
        const wait = this.backoff.get(target);
        if (wait && performance.now() < wait.at) continue;
        const { redis, keys } = this.deps;
        // Separate reads: on a Cluster the two keys may live in different slots.
        // A lock with a TTL: a rotation is running. One without (no broker sets that) the rotation takes over.
        if (!(await redis.exists(keys.rotationIntent(target))) || (await redis.pttl(keys.lock(`rotate:${target}`))) > 0) continue;
        try {
          this.deps.logger.warn({ target }, 'rotation: an earlier rotation did not finish; rotating again to retire what it left');
          await this.rotation.rotate('schedule', target, { resumed: true });
          this.backoff.delete(target);
        } catch (err) {
          // A rotation that must wait (AWS: until IAM can list a key an unanswered call may have made) says how long.
          const asked = err instanceof BrokerError && err.retryAfterSeconds ? err.retryAfterSeconds * 1000 : 0;
          const waitMs = Math.min(MAX_BACKOFF_MS, Math.max(everyMs, asked, (wait?.waitMs ?? everyMs / 2) * 2));
          this.backoff.set(target, { at: performance.now() + waitMs, waitMs });
          const code = err instanceof BrokerError ? err.code : 'rotation_failed';
          this.deps.logger.warn({ target, code, retryInMs: waitMs }, 'rotation: resuming an unfinished rotation failed');
        }
      }
    } catch (err) {
      this.deps.logger.warn({ err: (err as Error).message }, 'rotation: looking for unfinished rotations failed');
    }
  }
}
