import { z } from 'zod';
import { secretSourceSchema } from '../config/common.ts';

/** Hosts a browser treats as this machine: http is acceptable there, and only there. */
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);

/** True for an http URL on a loopback host (where a Secure cookie could not be set). */
export function isLoopbackHttp(url: string): boolean {
  const u = new URL(url);
  return u.protocol === 'http:' && LOOPBACK.has(u.hostname);
}

/**
 * The optional `console` section (contract section 10): the OIDC provider
 * people sign in with. `issuer` is kept exactly as written, because the ID
 * token's `iss` must equal it and the `trust` entry that verifies it.
 */
export const consoleSchema = z.strictObject({
  issuer: z.url({ protocol: /^https?$/ }),
  clientId: z.string().min(1).max(256),
  /** A confidential client's secret (`${VAR}` or `{ file }`); without it the broker is a public client and PKCE alone binds the code. */
  clientSecret: secretSourceSchema.optional(),
  /** Scopes asked for at sign-in; `openid` is always sent. */
  scopes: z.array(z.string().regex(/^[\x21\x23-\x5B\x5D-\x7E]+$/)).default(['openid']),
  /** A session never outlives the ID token it was started with, nor this. */
  sessionMaxAgeSeconds: z
    .int()
    .min(60)
    .max(7 * 86_400)
    .default(8 * 3600),
  /** How long a started sign-in may take at the provider before its state is forgotten. */
  loginTimeoutSeconds: z.int().min(30).max(3600).default(600),
});
export type ConsoleConfig = z.infer<typeof consoleSchema>;

interface TrustLike {
  kind: 'spiffe' | 'oidc';
  issuer?: string | undefined;
  audiences: string[];
}

/**
 * The trust entry that verifies the console's ID tokens: of the entries for its issuer, the one listing the client
 * id among its audiences (the verifier picks an issuer's entry by the token's `aud`), else the issuer's first.
 */
export function consoleTrust<T extends TrustLike>(trust: readonly T[], con: Pick<ConsoleConfig, 'issuer' | 'clientId'>): T | undefined {
  const entries = trust.filter((t) => t.kind === 'oidc' && t.issuer === con.issuer);
  return entries.find((t) => t.audiences.includes(con.clientId)) ?? entries[0];
}

/**
 * Cross-field rules, checked once at load: the ID token is verified through
 * the broker's own OIDC trust, so an entry for this issuer must accept the
 * client id as audience; and the session cookie is Secure, so the broker must
 * be reached over https unless it only listens on this machine.
 */
export function checkConsoleConfig(
  c: { console?: ConsoleConfig | undefined; trust: TrustLike[]; server: { publicUrl: string } },
  addIssue: (path: (string | number)[], message: string) => void,
): void {
  const con = c.console;
  if (!con) return;
  const entry = consoleTrust(c.trust, con);
  if (!entry) {
    addIssue(
      ['console', 'issuer'],
      `no trust entry with kind: oidc and issuer "${con.issuer}": the console verifies ID tokens through one`,
    );
  } else if (!entry.audiences.includes(con.clientId)) {
    addIssue(['console', 'clientId'], `the kind: oidc trust entry for "${con.issuer}" must list "${con.clientId}" among its audiences`);
  }
  if (new URL(c.server.publicUrl).protocol !== 'https:' && !isLoopbackHttp(c.server.publicUrl)) {
    addIssue(['server', 'publicUrl'], 'the console needs an https publicUrl (plain http only on a loopback address)');
  }
  if (new URL(con.issuer).protocol !== 'https:' && !isLoopbackHttp(con.issuer)) {
    addIssue(['console', 'issuer'], 'must be an https URL (plain http only on a loopback address)');
  }
}
