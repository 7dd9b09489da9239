import * as client from 'openid-client';
import { readSecret } from '../config/load.ts';
import type { ConsoleConfig } from './config.ts';
import { isLoopbackHttp } from './config.ts';

/** What /console/login needs to send the person to the provider and to finish the sign-in later. */
export interface AuthorizationStart {
  url: URL;
  state: string;
  nonce: string;
  codeVerifier: string;
}

/**
 * The broker as an OAuth client of the sign-in provider (authorization code
 * with PKCE, openid-client doing the protocol). Discovery happens on the first
 * sign-in and is cached; a provider that is down does not stop the broker from
 * starting, it only makes sign-in fail with a clear page until it is back.
 * openid-client's checks of the ID token's times use the broker's clock
 * (Redis's), as every other time check does.
 */
export class ConsoleOidcClient {
  private readonly cfg: ConsoleConfig;
  private readonly redirectUri: string;
  private readonly now: () => number;
  private discovered: Promise<client.Configuration> | undefined;

  /** `now`: the broker's clock in ms (RedisClock.now); the process clock when absent. */
  constructor(cfg: ConsoleConfig, publicUrl: string, opts: { now?: () => number } = {}) {
    this.cfg = cfg;
    this.redirectUri = `${publicUrl}/console/callback`;
    this.now = opts.now ?? Date.now;
  }

  /**
   * The discovered provider, as a client whose clock is the broker's: the offset
   * from the process clock is taken afresh on every call (it is re-measured as
   * Redis time is), so this builds a Configuration from the cached metadata.
   */
  private async configuration(): Promise<client.Configuration> {
    this.discovered ??= this.discover().catch((err) => {
      this.discovered = undefined; // try again on the next sign-in
      throw err;
    });
    const discovered = await this.discovered;
    const config = new client.Configuration(
      discovered.serverMetadata(),
      this.cfg.clientId,
      { ...this.metadata(), [client.clockSkew]: Math.round((this.now() - Date.now()) / 1000) },
      this.auth(),
    );
    config.timeout = discovered.timeout;
    if (isLoopbackHttp(this.cfg.issuer)) client.allowInsecureRequests(config);
    return config;
  }

  private metadata(): Partial<client.ClientMetadata> {
    return { redirect_uris: [this.redirectUri], response_types: ['code'] };
  }

  private auth(): client.ClientAuth {
    const secret = this.cfg.clientSecret ? readSecret(this.cfg.clientSecret, 'console.clientSecret') : undefined;
    return secret ? client.ClientSecretBasic(secret) : client.None();
  }

  private async discover(): Promise<client.Configuration> {
    const execute = isLoopbackHttp(this.cfg.issuer) ? [client.allowInsecureRequests] : [];
    return client.discovery(new URL(this.cfg.issuer), this.cfg.clientId, this.metadata(), this.auth(), { execute, timeout: 10 });
  }

  /** Builds the authorization request: fresh state, nonce and PKCE verifier every time. */
  async start(opts: { prompt?: string } = {}): Promise<AuthorizationStart> {
    const config = await this.configuration();
    const codeVerifier = client.randomPKCECodeVerifier();
    const state = client.randomState();
    const nonce = client.randomNonce();
    const scopes = new Set(['openid', ...this.cfg.scopes]);
    const params: Record<string, string> = {
      redirect_uri: this.redirectUri,
      scope: [...scopes].join(' '),
      code_challenge: await client.calculatePKCECodeChallenge(codeVerifier),
      code_challenge_method: 'S256',
      state,
      nonce,
    };
    if (opts.prompt) params.prompt = opts.prompt;
    return { url: client.buildAuthorizationUrl(config, params), state, nonce, codeVerifier };
  }

  /**
   * Exchanges the code on the callback URL for tokens and returns the ID
   * token. openid-client checks state, PKCE, nonce, issuer, audience and
   * expiry; the caller verifies the signature through the broker's trust.
   */
  async finish(callbackUrl: URL, checks: { state: string; nonce: string; codeVerifier: string }): Promise<string> {
    const config = await this.configuration();
    const tokens = await client.authorizationCodeGrant(config, callbackUrl, {
      expectedState: checks.state,
      expectedNonce: checks.nonce,
      pkceCodeVerifier: checks.codeVerifier,
      idTokenExpected: true,
    });
    return tokens.id_token!;
  }
}
