import type { CookieOptions, Request } from 'express';
import { isLoopbackHttp } from './config.ts';

/**
 * The console's two cookies. The session cookie is HttpOnly and
 * SameSite=Strict, Secure unless the broker is served over plain http on a
 * loopback address (where a browser would drop a Secure cookie). The sign-in
 * cookie carries the PKCE verifier from /console/login to /console/callback; it
 * must survive the provider's redirect back, a cross-site navigation, so it is
 * SameSite=Lax; over https it is a __Host- cookie (Path=/, no Domain).
 */
export class ConsoleCookies {
  readonly session: string;
  readonly login: string;
  private readonly secure: boolean;

  constructor(publicUrl: string) {
    const u = new URL(publicUrl);
    this.secure = !isLoopbackHttp(publicUrl);
    // __Host- pins the cookie to this origin (Secure, Path=/, no Domain). Loopback brokers on other
    // ports would share a cookie of the same name (cookies ignore ports), so the port goes in the name.
    const port = u.port || (u.protocol === 'https:' ? '443' : '80');
    this.session = this.secure ? '__Host-jit-console' : `jit-console-${port}`;
    // The sign-in cookie holds the PKCE verifier and state: __Host- too, so a sibling subdomain cannot toss in
    // its own (a sign-in it started itself) and sign a victim into the attacker's session when the victim
    // follows a link to the callback. __Host- requires Path=/ (loginOptions).
    this.login = this.secure ? '__Host-jit-console-login' : `jit-console-login-${port}`;
  }

  sessionOptions(maxAgeMs: number): CookieOptions {
    return { httpOnly: true, secure: this.secure, sameSite: 'strict', path: '/', maxAge: maxAgeMs };
  }

  loginOptions(maxAgeMs: number): CookieOptions {
    // On loopback http (no cookie prefixes there) it stays scoped to the callback path alone.
    return { httpOnly: true, secure: this.secure, sameSite: 'lax', path: this.secure ? '/' : '/console/callback', maxAge: maxAgeMs };
  }

  /** Reads one cookie from the request header (the broker has no cookie-parsing middleware elsewhere). */
  read(req: Request, name: string): string | undefined {
    const header = req.headers.cookie;
    if (!header) return undefined;
    for (const part of header.split(';')) {
      const eq = part.indexOf('=');
      if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
    }
    return undefined;
  }
}
