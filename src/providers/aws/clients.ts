import { IAMClient } from '@aws-sdk/client-iam';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { readSecret } from '../../config/load.ts';
import { AwsClock } from './aws-clock.ts';
import { boundAnswers } from './bounded-answer.ts';
import type { AwsSettings } from './config.ts';
import { accountFromArn } from './role-info.ts';
import { markUnanswered, wasUnanswered } from '../types.ts';
import { classify, longestBackoffMs, withRetry } from './upstream.ts';
import pTimeout from 'p-timeout';

/** How long a call refused for bad credentials waits for another instance's rotation to reach this one. */
const SWITCH_WAIT_MS = 2000;

/**
 * The longest `AwsClients.run` can go on sending attempts of one call, from its start: every attempt up to
 * `requestTimeoutMs` (the handler's timer runs from the request's start, connecting included, and ends the
 * attempt: throwOnRequestTimeout), every backoff at its cap, and the second round after waiting for a switch
 * of keys. Tight on purpose, unlike issue.ts's `callAllowanceMs` (an expiry, where more is safe): it sets
 * the end (`until`, capped) of a CreateAccessKey's window, inside which the next rotation takes a key
 * created after a lost answer for the rotation's own (unrecorded-keys.ts).
 */
export function longestRunMs(settings: AwsSettings): number {
  const round =
    settings.maxAttempts * settings.requestTimeoutMs +
    longestBackoffMs({ attempts: settings.maxAttempts, baseDelayMs: settings.retryBaseDelayMs });
  return 2 * round + Math.min(SWITCH_WAIT_MS, settings.requestTimeoutMs);
}

/** Static keys of the broker's own IAM user (the only kind that can be rotated). */
export interface StaticKeys {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface ClientPair {
  sts: STSClient;
  iam: IAMClient;
  /** Bumped on every switch of credentials, so a call can tell it raced a rotation. */
  generation: number;
}

/**
 * The STS and IAM clients the provider calls through, and the broker's own
 * credentials behind them: `settings.credentials` when given, else the SDK's
 * default chain. Rotation swaps both clients at once; the old pair is kept
 * alive briefly so calls already in flight can finish.
 */
export class AwsClients {
  private readonly settings: AwsSettings;
  private keys: StaticKeys | undefined;
  private pair: ClientPair;
  /** Replaced pairs, destroyed a little later (or on close). */
  private readonly retired = new Map<ClientPair, NodeJS.Timeout>();
  /** Resolved (and replaced) on every switch of keys. */
  private switched = deferred();
  /** The account the broker's credentials act in, per client pair, once asked (`account`). */
  private readonly accounts = new WeakMap<ClientPair, string>();

  /** AWS's clock, bounded from above by the `Date` of every STS and IAM answer (the deny list's agent cut-offs). */
  readonly awsClock = new AwsClock();

  constructor(settings: AwsSettings) {
    this.settings = settings;
    const c = settings.credentials;
    this.keys = c && {
      accessKeyId: readSecret(c.accessKeyId, 'providers.aws.credentials.accessKeyId'),
      secretAccessKey: readSecret(c.secretAccessKey, 'providers.aws.credentials.secretAccessKey'),
      ...(c.sessionToken ? { sessionToken: readSecret(c.sessionToken, 'providers.aws.credentials.sessionToken') } : {}),
    };
    this.pair = this.build(this.keys, 0);
  }

  get current(): ClientPair {
    return this.pair;
  }

  /** The configured static keys; undefined when the SDK's default chain is used. */
  get staticKeys(): StaticKeys | undefined {
    return this.keys;
  }

  /**
   * Runs an upstream call on the current clients with the configured retry
   * policy. A call refused for bad credentials while the keys were switched
   * under it (rotation here, or by another instance) is retried on the new keys;
   * refused before the switch reached this instance, it waits briefly for it.
   */
  async run<T>(call: (pair: ClientPair) => Promise<T>): Promise<T> {
    let used = this.pair;
    const attempt = () =>
      withRetry(
        () => {
          used = this.pair;
          return call(used);
        },
        {
          attempts: this.settings.maxAttempts,
          baseDelayMs: this.settings.retryBaseDelayMs,
          retryIf: (_err, kind) => kind === 'auth' && used !== this.pair,
        },
      );
    try {
      return await attempt();
    } catch (err) {
      // Another instance may have just rotated the key and retired ours: its
      // announcement arrives only after the old key is deactivated. Wait briefly
      // for the switch and retry once on the new keys, rather than fail the request.
      if (classify(err) !== 'auth' || !this.rotatable || !(await this.switchedSince(used, SWITCH_WAIT_MS))) throw err;
      try {
        return await attempt();
      } catch (again) {
        // The first round's unanswered attempts may have been carried out: say so on the final error too.
        if (wasUnanswered(err)) markUnanswered(again);
        throw again;
      }
    }
  }

  /**
   * The AWS account the broker's own credentials act in (STS GetCallerIdentity, which needs no permission),
   * asked once per set of credentials. IAM takes a role's *name*, in this account: a role ARN of another
   * account cannot be written to (revocation, deny-list.ts).
   */
  async account(): Promise<string> {
    const known = this.accounts.get(this.pair);
    if (known !== undefined) return known;
    let used = this.pair;
    const out = await this.run((pair) => {
      used = pair;
      return pair.sts.send(new GetCallerIdentityCommand({}));
    });
    if (!out.Account) throw new Error('STS GetCallerIdentity answered without an Account');
    this.learnAccount(out.Account, used);
    return out.Account;
  }

  /**
   * Whether `roleArn` is a role of the account the broker's credentials act in (`account`, which it answers too).
   * IAM takes a role's name and acts in the caller's account, so only such a role's sessions can be denied from
   * here: the one test behind both `revocable` (what a credential is issued as, provider.ts) and the deny list's
   * refusal to write elsewhere (deny-list.ts), so that the two cannot disagree. Throws what GetCallerIdentity
   * threw: each caller maps it to its own error.
   */
  async ownsRole(roleArn: string): Promise<{ owns: boolean; account: string }> {
    const account = await this.account();
    return { owns: account === accountFromArn(roleArn), account };
  }

  /** Records the account a GetCallerIdentity on `pair` answered (ready() asks it too). */
  learnAccount(account: string, pair: ClientPair = this.pair): void {
    this.accounts.set(pair, account);
  }

  /** Whether the keys were switched away from `pair`, waiting up to `ms` for it. */
  private async switchedSince(pair: ClientPair, ms: number): Promise<boolean> {
    if (this.pair !== pair) return true;
    await pTimeout(this.switched.promise, { milliseconds: Math.min(ms, this.settings.requestTimeoutMs), fallback: () => {} });
    return this.pair !== pair;
  }

  /** Whether the broker's own key can be rotated: long-term keys, not a session or the default chain. */
  get rotatable(): boolean {
    return this.keys !== undefined && this.keys.sessionToken === undefined;
  }

  /** A client pair for other keys, not installed (used to verify a new key before switching). */
  build(keys: StaticKeys | undefined, generation: number): ClientPair {
    const common = {
      region: this.settings.region,
      // One retry policy, ours (upstream.ts): the SDK must not retry underneath it.
      maxAttempts: 1,
      // throwOnRequestTimeout: without it this SDK only logs a warning past requestTimeout and waits on a
      // silent upstream for good, and every deadline computed from requestTimeoutMs (the orphan window) is wrong.
      requestHandler: {
        requestTimeout: this.settings.requestTimeoutMs,
        connectionTimeout: Math.min(this.settings.requestTimeoutMs, 3000),
        throwOnRequestTimeout: true,
      },
      ...(keys ? { credentials: keys } : {}),
    };
    const iamEndpoint = this.settings.iamEndpoint ?? this.settings.endpoint;
    const sts = new STSClient({ ...common, ...(this.settings.endpoint ? { endpoint: this.settings.endpoint } : {}) });
    const iam = new IAMClient({ ...common, ...(iamEndpoint ? { endpoint: iamEndpoint } : {}) });
    // requestTimeout ends at the answer's head: the body gets the rest of the same deadline, and a size cap.
    boundAnswers(sts, this.settings.requestTimeoutMs, this.awsClock);
    boundAnswers(iam, this.settings.requestTimeoutMs, this.awsClock);
    return { sts, iam, generation };
  }

  /** Switches every later call to new keys. */
  use(keys: StaticKeys, pair?: ClientPair): void {
    const old = this.pair;
    this.keys = keys;
    this.pair = pair && pair.generation > old.generation ? pair : this.build(keys, old.generation + 1);
    const switched = this.switched;
    this.switched = deferred();
    switched.resolve();
    const timer = setTimeout(() => {
      this.retired.delete(old);
      destroy(old);
    }, 30_000);
    timer.unref();
    this.retired.set(old, timer);
  }

  close(): void {
    for (const [pair, timer] of this.retired) {
      clearTimeout(timer);
      destroy(pair);
    }
    this.retired.clear();
    destroy(this.pair);
  }
}

function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

function destroy(pair: ClientPair): void {
  pair.sts.destroy();
  pair.iam.destroy();
}
