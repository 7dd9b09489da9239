import { readSecret } from '../../config/load.ts';
import { ConfigError, upstreamFailed } from '../../errors.ts';
import type { Logger } from '../../logger.ts';
import { addressOf, makeClient, namespaceOf, type VaultClient } from './client.ts';
import type { VaultSettings } from './config.ts';
import { classify, isForbidden, safeCause } from './errors.ts';
import { firstLoginFailure } from './login-failure.ts';

/** One broker token and the client bound to it. A rotation or re-login makes a new one. */
interface Generation {
  readonly client: VaultClient;
  /** The same token in other namespaces than the configured one (revoking what was issued in one). */
  readonly elsewhere: Map<string, VaultClient>;
  readonly accessor: string;
  /** TTL granted at login, in seconds (0 = never expires: a root or periodic-less static token). */
  readonly fullTtl: number;
  /**
   * Epoch ms; null = no expiry known. A wall-clock step does not move the renewal: this is read only by
   * `schedule`, in the same turn it is set, and the renewal timer runs on the monotonic clock (setTimeout).
   */
  expiresAt: number | null;
  renewable: boolean;
  /** Vault capped the last renewal at the token's max TTL: the next step is a new login, not a renewal. */
  capped: boolean;
  inflight: number;
  retiring: boolean;
  /** Whether to revoke it once idle (never the operator's static token, nor one already lost). */
  revokeWhenIdle: boolean;
  revoked: boolean;
}

const MAX_RETRY_MS = 30_000;

/**
 * The broker's own Vault login. It keeps one current token, renews it at 2/3
 * of its TTL, logs in again (AppRole) when renewal reaches the token's max
 * TTL or the token is lost, and counts the calls running on each token so a
 * replaced token is revoked only once nothing uses it.
 *
 * Issued credentials never hang off this token (child tokens are orphans,
 * dynamic secrets are read with a per-lease token), so replacing or revoking
 * it never takes an agent's credential down with it.
 */
export class VaultSession {
  private readonly settings: VaultSettings;
  private readonly logger: Logger;
  private readonly staticToken: string | undefined;
  private readonly approleAuth: { roleId: string; mount: string; roleName: string | undefined } | undefined;
  /** AppRole secret-id in use; kept in memory only, never logged. */
  private secretIdValue: string | undefined;
  private current: Generation | undefined;
  private pendingLogin: Promise<Generation> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private retryMs = 1000;
  private closed = false;
  private exclusiveTail: Promise<unknown> = Promise.resolve();

  constructor(settings: VaultSettings, logger: Logger) {
    this.settings = settings;
    this.logger = logger;
    const auth = settings.auth;
    if ('token' in auth) {
      this.staticToken = readSecret(auth.token, 'providers.vault.auth.token');
    } else {
      const a = auth.approle;
      this.approleAuth = { roleId: a.roleId, mount: a.mount, roleName: a.roleName };
      this.secretIdValue =
        a.secretId !== undefined
          ? readSecret(a.secretId, 'providers.vault.auth.approle.secretId')
          : readSecret({ file: a.secretIdFile! }, 'providers.vault.auth.approle.secretIdFile');
    }
  }

  /** AppRole settings, or undefined with token auth. */
  get approle(): { roleId: string; mount: string; roleName: string | undefined } | undefined {
    return this.approleAuth;
  }

  /** The AppRole secret-id in use (for rotation only). */
  get secretId(): string | undefined {
    return this.secretIdValue;
  }

  /** Accessor of the current broker token (an identifier, safe to log), or undefined before the first login. */
  get accessor(): string | undefined {
    return this.current?.accessor;
  }

  /**
   * First login. Credentials Vault refuses fail startup with the config key;
   * an unreachable or sealed Vault does not (the broker starts not-ready and
   * keeps trying), so a Vault outage cannot stop the broker from starting.
   */
  async start(): Promise<void> {
    try {
      if (this.staticToken !== undefined) await this.adoptStaticToken(this.staticToken);
      else await this.switchTo(await this.login(this.secretIdValue!), { revokeOld: false });
    } catch (err) {
      const why = firstLoginFailure(err, this.address);
      if (why.retry) {
        // An untrusted certificate is more often the operator's to fix than an outage: said as an error.
        const log = why.reason === 'tls' ? this.logger.error.bind(this.logger) : this.logger.warn.bind(this.logger);
        log({ err: safeCause(err), reason: why.reason }, `vault: first login failed (${why.text}); retrying in the background`);
        this.scheduleRetry();
        return;
      }
      throw new ConfigError(why.key, why.text);
    }
  }

  /** The configured namespace, as recorded in a lease's handle ('' = the root namespace). */
  get namespace(): string {
    return namespaceOf(this.settings.namespace);
  }

  /** The configured address, as recorded in a lease's handle (addressOf). */
  get address(): string {
    return addressOf(this.settings.address);
  }

  /**
   * Runs `fn` with the broker token, in the configured namespace or in `opts.namespace` (the one a
   * credential was issued in: '' = root). A 403 may mean the token was lost
   * (revoked, expired while Vault was down): if `lookup-self` confirms it,
   * the session logs in again once and retries; a genuine ACL denial (or a
   * namespace the token cannot act in) is passed on.
   */
  async call<T>(fn: (client: VaultClient) => Promise<T>, opts: { namespace?: string } = {}): Promise<T> {
    const ns = opts.namespace === undefined ? undefined : namespaceOf(opts.namespace);
    const gen = await this.active();
    try {
      return await this.run(gen, fn, ns);
    } catch (err) {
      if (!isForbidden(err) || !this.approleAuth || !(await this.isLost(gen))) throw err;
      this.logger.warn({ accessor: gen.accessor }, 'vault: broker token lost; logging in again');
      return await this.run(await this.relogin(gen), fn, ns);
    }
  }

  /** An unauthenticated client (logins, health). */
  anonymous(): VaultClient {
    return makeClient(this.settings, '');
  }

  /** A client for another token (a per-lease reader token). */
  clientFor(token: string): VaultClient {
    return makeClient(this.settings, token);
  }

  /** AppRole login with `secretId`; returns the new token without switching to it. */
  async login(secretId: string): Promise<Generation> {
    const a = this.approleAuth!;
    const r = await this.anonymous().write(`auth/${a.mount}/login`, { role_id: a.roleId, secret_id: secretId });
    const auth = r?.auth as { client_token?: string; accessor?: string; lease_duration?: number; renewable?: boolean } | undefined;
    if (!auth?.client_token) throw upstreamFailed('upstream_error', 'Vault answered the AppRole login without a token.');
    return this.generation(auth.client_token, auth.accessor ?? '', auth.lease_duration ?? 0, auth.renewable ?? false, true);
  }

  /**
   * Makes `gen` current (with the secret-id it came from, after a rotation)
   * and retires the previous token. Resolves once the previous token is
   * revoked if nothing was using it; otherwise the last call on it revokes it.
   */
  async switchTo(gen: Generation, opts: { revokeOld: boolean; secretId?: string }): Promise<void> {
    const old = this.current;
    this.current = gen;
    if (opts.secretId !== undefined) this.secretIdValue = opts.secretId;
    this.retryMs = 1000;
    this.schedule(gen);
    this.logger.info({ accessor: gen.accessor, ttlSeconds: gen.fullTtl }, 'vault: broker token in use');
    if (old && old !== gen) {
      old.retiring = true;
      old.revokeWhenIdle &&= opts.revokeOld;
      await this.reap(old);
    }
  }

  /** Runs `fn` after every earlier exclusive section (rotations never overlap). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.exclusiveTail.then(fn, fn);
    this.exclusiveTail = next.catch(() => undefined);
    return next;
  }

  /**
   * Makes `secretId` (a rotated one another instance distributed) the one the background login uses, when
   * no token is held yet and Vault cannot be reached to try it now: at a startup during a Vault outage,
   * failing to log in with it stopped the broker. Returns whether it was taken.
   */
  loginLaterWith(secretId: string): boolean {
    if (this.current || !this.approleAuth || this.closed) return false;
    this.secretIdValue = secretId;
    // A refused configured secret-id scheduled no retry (createVaultProvider waits for this one): make sure one runs.
    this.scheduleRetry();
    return true;
  }

  /** Whether the session holds a token (readiness). */
  get loggedIn(): boolean {
    return this.current !== undefined;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
  }

  private async active(): Promise<Generation> {
    if (this.closed) throw upstreamFailed('upstream_unavailable', 'The Vault provider is closed.');
    return this.current ?? this.relogin(undefined);
  }

  private async run<T>(gen: Generation, fn: (client: VaultClient) => Promise<T>, ns?: string): Promise<T> {
    gen.inflight++;
    try {
      return await fn(ns === undefined || ns === this.namespace ? gen.client : this.clientIn(gen, ns));
    } finally {
      gen.inflight--;
      if (gen.retiring) void this.reap(gen);
    }
  }

  /** `gen`'s token sending X-Vault-Namespace `ns` (none for the root namespace). */
  private clientIn(gen: Generation, ns: string): VaultClient {
    let c = gen.elsewhere.get(ns);
    if (!c) {
      const { namespace: _configured, ...rest } = this.settings;
      c = makeClient(ns ? { ...rest, namespace: ns } : rest, gen.client.token);
      gen.elsewhere.set(ns, c);
    }
    return c;
  }

  private async isLost(gen: Generation): Promise<boolean> {
    if (gen !== this.current) return true;
    try {
      await gen.client.read('auth/token/lookup-self');
      return false;
    } catch (err) {
      return isForbidden(err);
    }
  }

  /** One login at a time: concurrent callers that found the token lost share it. */
  private relogin(lost: Generation | undefined): Promise<Generation> {
    if (this.current && this.current !== lost) return Promise.resolve(this.current);
    if (!this.approleAuth) {
      return Promise.reject(upstreamFailed('upstream_auth_failed', "The broker's Vault token is no longer valid."));
    }
    this.pendingLogin ??= this.login(this.secretIdValue!)
      .then(async (gen) => {
        await this.switchTo(gen, { revokeOld: false });
        return gen;
      })
      .catch((err: unknown) => {
        const f = classify(err);
        if (f.kind === 'sealed' || f.kind === 'unavailable') throw err;
        throw upstreamFailed('upstream_auth_failed', 'The broker could not log in to Vault.', { cause: safeCause(err) });
      })
      .finally(() => {
        this.pendingLogin = undefined;
      });
    return this.pendingLogin;
  }

  private async adoptStaticToken(token: string): Promise<void> {
    const client = makeClient(this.settings, token);
    // Usable at once, even if Vault cannot be reached to look it up yet.
    if (!this.current) this.current = this.generation(token, '', 0, false, false);
    const r = await client.read('auth/token/lookup-self');
    const d = r.data as { accessor: string; ttl: number; renewable: boolean; creation_ttl?: number };
    const gen = this.generation(token, d.accessor, d.ttl, d.renewable, false, d.creation_ttl);
    await this.switchTo(gen, { revokeOld: false });
  }

  private generation(token: string, accessor: string, ttl: number, renewable: boolean, revokeWhenIdle: boolean, fullTtl = ttl): Generation {
    return {
      client: makeClient(this.settings, token),
      elsewhere: new Map(),
      accessor,
      fullTtl: ttl > 0 ? Math.max(ttl, fullTtl) : 0,
      expiresAt: ttl > 0 ? Date.now() + ttl * 1000 : null,
      renewable,
      capped: false,
      inflight: 0,
      retiring: false,
      revokeWhenIdle,
      revoked: false,
    };
  }

  private async reap(gen: Generation): Promise<void> {
    if (gen.inflight > 0 || gen.revoked || !gen.revokeWhenIdle) return;
    gen.revoked = true;
    try {
      await gen.client.write('auth/token/revoke-self', {});
      this.logger.info({ accessor: gen.accessor }, 'vault: retired broker token revoked');
    } catch (err) {
      // It expires on its own; a failure here costs nothing but a log line.
      if (!isForbidden(err))
        this.logger.warn({ accessor: gen.accessor, err: safeCause(err) }, 'vault: could not revoke the retired broker token');
    }
  }

  /** Renews (or, near its max TTL, replaces) the token at 2/3 of its remaining life. */
  private schedule(gen: Generation): void {
    clearTimeout(this.timer);
    if (this.closed || gen.expiresAt === null) return;
    if (!gen.renewable && !this.approleAuth) return;
    const delay = Math.max(0, ((gen.expiresAt - Date.now()) * 2) / 3);
    this.timer = setTimeout(() => void this.refresh(gen), delay);
    this.timer.unref();
  }

  private async refresh(gen: Generation): Promise<void> {
    if (this.closed || gen !== this.current) return;
    try {
      if (gen.renewable && !gen.capped) {
        const r = await this.run(gen, (c) => c.write('auth/token/renew-self', { increment: `${gen.fullTtl}s` }));
        const ttl = Number(r.auth?.lease_duration ?? 0);
        gen.expiresAt = Date.now() + ttl * 1000;
        // Vault gives less than asked for once the token nears its max TTL: log in again before then.
        gen.capped = ttl < gen.fullTtl;
        this.logger.debug({ accessor: gen.accessor, ttlSeconds: ttl }, 'vault: broker token renewed');
        this.schedule(gen);
        return;
      }
      if (!this.approleAuth) {
        this.logger.warn({ accessor: gen.accessor }, 'vault: the configured token cannot be renewed further and will expire');
        return;
      }
      await this.switchTo(await this.login(this.secretIdValue!), { revokeOld: true });
    } catch (err) {
      if (this.closed) return;
      let failure = err;
      if (isForbidden(err) && this.approleAuth) {
        try {
          await this.relogin(gen);
          return;
        } catch (loginErr) {
          failure = loginErr;
        }
      }
      this.logger.warn({ accessor: gen.accessor, err: safeCause(failure) }, 'vault: broker token refresh failed; retrying');
      this.scheduleRetry();
    }
  }

  private scheduleRetry(): void {
    clearTimeout(this.timer);
    if (this.closed) return;
    const delay = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, MAX_RETRY_MS);
    this.timer = setTimeout(() => void this.retry(), delay);
    this.timer.unref();
  }

  private async retry(): Promise<void> {
    if (this.closed) return;
    try {
      if (this.staticToken !== undefined && (!this.current || this.current.accessor === '')) {
        await this.adoptStaticToken(this.staticToken);
      } else if (this.current) {
        await this.refresh(this.current);
      } else {
        await this.relogin(undefined);
      }
    } catch (err) {
      this.logger.warn({ err: safeCause(err) }, 'vault: login retry failed');
      this.scheduleRetry();
    }
  }
}
