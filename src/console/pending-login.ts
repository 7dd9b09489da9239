import { z } from 'zod';

/**
 * A sign-in in progress: what /console/callback needs to finish it. It lives
 * only in the browser that started it, in the HttpOnly sign-in cookie, so a
 * request to /console/login stores nothing on the broker: a flood of them
 * costs no Redis memory, whatever the number of addresses it comes from.
 *
 * Nothing in it needs to be hidden from that browser or protected from it:
 * the PKCE verifier was always kept there; the state and nonce only bind the
 * provider's answer to this browser's sign-in, so a person who edits them can
 * only break their own sign-in; and the return path is checked again before
 * it is used. A callback works once: the cookie is cleared on the first
 * callback, and the provider redeems a code once (RFC 6749 4.1.2).
 */
export interface PendingLogin {
  state: string;
  nonce: string;
  codeVerifier: string;
  /** Where to send the person once signed in (a /console/ path). */
  returnTo: string;
  /**
   * The session this browser held when it started a sign-in without saying where from (no Sec-Fetch-Site):
   * ended once the sign-in completes. Its handle (a hash), not the cookie. A person who edits it can end only a
   * session whose handle they know, which only Redis's keys hold.
   */
  ends?: string;
}

/** openid-client's random values are 43 base64url characters; allow some room, nothing else. */
const random = z.string().regex(/^[A-Za-z0-9_-]{16,128}$/);
const pendingSchema = z.strictObject({
  state: random,
  nonce: random,
  codeVerifier: random,
  returnTo: z.string().max(2048),
  ends: z
    .string()
    .regex(/^[A-Za-z0-9_-]{43}$/)
    .optional(),
});

/** The cookie value (base64url JSON; cookie-safe without further escaping). */
export function encodePendingLogin(p: PendingLogin): string {
  return Buffer.from(JSON.stringify(p)).toString('base64url');
}

/** The pending sign-in in a cookie value, or undefined for anything that is not one. */
export function decodePendingLogin(value: string | undefined): PendingLogin | undefined {
  if (!value || value.length > 4096 || !/^[A-Za-z0-9_-]+$/.test(value)) return undefined;
  try {
    const r = pendingSchema.safeParse(JSON.parse(Buffer.from(value, 'base64url').toString('utf8')));
    return r.success ? r.data : undefined;
  } catch {
    return undefined;
  }
}
