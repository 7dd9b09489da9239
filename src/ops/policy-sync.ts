import type { Deps } from '../deps.ts';

/** How often an instance that could not follow a reload tries again (its watcher or SIGHUP may be sooner). */
const RETRY_MS = 5_000;

/**
 * Follows the policy reloads other instances announce. Every instance reloads its own copy of the files;
 * which copy is newer cannot be told from here (files reach instances at different times), so:
 * - files that do not load (half-written, say without the end of an incident's forbid): the previous set
 *   stays in force, as for any failed reload, but this instance is not ready until its files load (a
 *   retry every few seconds, its watcher, SIGHUP). Otherwise it would go on deciding under a set the
 *   operators replaced while the admin was told the reload worked. Audited once per announcement
 *   (`policy.reload`, decision `error`, `policy_invalid`); `jit_policy_in_sync` is 0 meanwhile;
 * - files that load as another set than the one announced: audited (`policy_mismatch`) and logged, and
 *   the instance stays ready; its watcher loads the files as they change.
 */
export class PolicySync {
  private readonly deps: Deps;
  /** Files that did not load after an announcement: the version in force then. */
  private behind: { inForce: string } | undefined;
  private reported: string | undefined;
  /** The last announcement: a retry for an earlier one gives way to it. */
  private latest: string | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(deps: Deps) {
    this.deps = deps;
    deps.metrics.policyInSync.set(1);
  }

  /**
   * Whether this instance decides under a set it could load since the announcement (for /readyz). A set
   * loaded by other means (its watcher, SIGHUP) counts at once; the next retry confirms it.
   */
  get inSync(): boolean {
    return this.behind === undefined || this.deps.policy.version !== this.behind.inForce;
  }

  /** Another instance reloaded and announced `version` (undefined from a version that sent none): reload here. */
  async follow(version: string | undefined): Promise<void> {
    this.latest = version;
    this.reported = undefined;
    await this.attempt(version);
  }

  /** This instance reloaded its own files and announced them. */
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
    if (this.behind) this.deps.logger.info({ version: this.deps.policy.version }, 'policy files load again; ready');
    this.behind = undefined;
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
    if (problem === undefined) {
      this.settle();
      if (wanted !== undefined && inForce !== wanted) {
        this.deps.logger.warn({ announced: wanted, inForce }, 'policy files here load as another set than the one announced');
        await this.report('policy_mismatch', wanted, inForce);
      }
      return;
    }
    this.behind = { inForce };
    this.deps.metrics.policyInSync.set(0);
    this.deps.logger.error(
      { announced: wanted, inForce, err: problem },
      'policy files do not load after a reload; not ready until they do',
    );
    await this.report('policy_invalid', wanted, inForce);
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.attempt(wanted), RETRY_MS);
    this.timer.unref();
  }

  /** One record per announcement and outcome. */
  private async report(reason: 'policy_invalid' | 'policy_mismatch', wanted: string | undefined, inForce: string): Promise<void> {
    if (this.reported === reason) return;
    this.reported = reason;
    await this.deps.audit
      .append({ action: 'policy.reload', actor: 'broker', decision: 'error', reason, detail: { expected: wanted ?? '', inForce } })
      .catch((err) => this.deps.logger.error({ err: (err as Error).message }, 'could not audit a policy reload left behind'));
  }
}
