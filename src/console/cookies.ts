import type { CookieOptions, Request } from 'express';
import { isLoopbackHttp } from './config.ts';

/**
 * The console's two cookies. The session cookie is HttpOnly and
 * SameSite=Strict, Secure unless the broker is served over plain http on a
 * loopback address (where a browser would drop a Secure cookie). The sign-in
 * cookie carries the PKCE verifier from /console/login to /console/callback; it
 * must survive the provider's redirect back, a cross-site navigation, so it is
 * SameSite=Lax and scoped to the callback path alone.
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
    this.login = this.secure ? '__Secure-jit-console-login' : `jit-console-login-${port}`;
  }

  sessionOptions(maxAgeMs: number): CookieOptions {
    return { httpOnly: true, secure: this.secure, sameSite: 'strict', path: '/', maxAge: maxAgeMs };
  }

  loginOptions(maxAgeMs: number): CookieOptions {
    return { httpOnly: true, secure: this.secure, sameSite: 'lax', path: '/console/callback', maxAge: maxAgeMs };
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
