import type { Deps } from '../deps.ts';

/** How often an instance that could not follow a reload tries again (its watcher or SIGHUP may be sooner). */
const RETRY_MS = 5_000;

/**
 * Keeps this instance on the policy set the last reload announced (a reload through any instance). An
 * instance whose files do not load, or load as another set (a mounted volume still being written),
 * keeps its previous set in force, as a failed reload always does; but it is not ready until it loads
 * the announced one. Otherwise it would go on deciding under a set the operators replaced, say without
 * the forbid an incident called for, while the admin was told the reload worked. The first failure
 * for each announced set is audited (`policy.reload`, decision `error`) and `jit_policy_in_sync` says
 * 0; the reload is retried every few seconds.
 */
export class PolicySync {
  private readonly deps: Deps;
  /** Left behind: the announced version, and the one in force when following it failed. */
  private behind: { wanted: string; inForce: string } | undefined;
  private reported: string | undefined;
  /** The last announcement: a retry for an earlier one gives way to it. */
  private latest: string | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(deps: Deps) {
    this.deps = deps;
    deps.metrics.policyInSync.set(1);
  }

  /**
   * Whether this instance decides under the announced set (for /readyz). A set loaded since the failure
   * by other means (this instance's own reload, its watcher, SIGHUP) counts until the next retry checks it.
   */
  get inSync(): boolean {
    return this.behind === undefined || this.deps.policy.version !== this.behind.inForce;
  }

  /** Another instance reloaded and announced `version` (undefined from a version that sent none): load it here. */
  async follow(version: string | undefined): Promise<void> {
    this.latest = version;
    await this.attempt(version);
  }

  /** This instance reloaded and announced its set: it is the one to follow. */
  loaded(): void {
    this.latest = undefined;
    this.settle();
  }

  close(): void {
    clearTimeout(this.timer);
  }

  private settle(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.behind) this.deps.logger.info({ version: this.deps.policy.version }, 'policy set caught up with the announced reload');
    this.behind = undefined;
    this.reported = undefined;
    this.deps.metrics.policyInSync.set(1);
  }

  private async attempt(wanted: string | undefined): Promise<void> {
    let problem: string | undefined;
    try {
      await this.deps.policy.reload();
    } catch (err) {
      problem = (err as Error).message;
    }
    if (wanted !== this.latest) return; // a newer announcement (or this instance's own reload) took over
    const inForce = this.deps.policy.version;
    if (wanted === undefined || inForce === wanted) {
      if (problem) this.deps.logger.error({ err: problem }, 'policy reload refused; the previous set stays in force');
      this.settle();
      return;
    }
    this.behind = { wanted, inForce };
    this.deps.metrics.policyInSync.set(0);
    this.deps.logger.error(
      { expected: wanted, inForce, err: problem },
      'could not load the announced policy set; not ready until it loads',
    );
    if (this.reported !== wanted) {
      this.reported = wanted;
      await this.deps.audit
        .append({
          action: 'policy.reload',
          actor: 'broker',
          decision: 'error',
          // Files that do not load, or that load as another set than the one announced.
          reason: problem === undefined ? 'policy_mismatch' : 'policy_invalid',
          detail: { expected: wanted, inForce },
        })
        .catch((err) => this.deps.logger.error({ err: (err as Error).message }, 'could not audit a policy set left behind'));
    }
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.attempt(wanted), RETRY_MS);
    this.timer.unref();
  }
}
