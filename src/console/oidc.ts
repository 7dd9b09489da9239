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
 */
export class ConsoleOidcClient {
  private readonly cfg: ConsoleConfig;
  private readonly redirectUri: string;
  private discovered: Promise<client.Configuration> | undefined;

  constructor(cfg: ConsoleConfig, publicUrl: string) {
    this.cfg = cfg;
    this.redirectUri = `${publicUrl}/console/callback`;
  }

  private configuration(): Promise<client.Configuration> {
    this.discovered ??= this.discover().catch((err) => {
      this.discovered = undefined; // try again on the next sign-in
      throw err;
    });
    return this.discovered;
  }

  private async discover(): Promise<client.Configuration> {
    const secret = this.cfg.clientSecret ? readSecret(this.cfg.clientSecret, 'console.clientSecret') : undefined;
    const execute = isLoopbackHttp(this.cfg.issuer) ? [client.allowInsecureRequests] : [];
    return client.discovery(
      new URL(this.cfg.issuer),
      this.cfg.clientId,
      { redirect_uris: [this.redirectUri], response_types: ['code'] },
      secret ? client.ClientSecretBasic(secret) : client.None(),
      { execute, timeout: 10 },
    );
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
