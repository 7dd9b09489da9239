/** One Redis server as named by a `redis://` or `rediss://` URL. */
export interface RedisEndpoint {
  readonly host: string;
  readonly port: number;
  /** `rediss://`: TLS to this server. */
  readonly tls: boolean;
  /** ACL user (Redis 6+); absent means the `default` user. */
  readonly username?: string;
  readonly password?: string;
  /** Database number from the URL path (`/2`); absent means 0. */
  readonly db?: number;
}

/** Thrown by {@link parseRedisUrl}; the message never repeats the URL, which may hold a password. */
export class RedisUrlError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RedisUrlError';
  }
}

/**
 * Parses a `redis://[user:password@]host[:port][/db]` or `rediss://` URL.
 *
 * Stricter than ioredis on purpose: a query string or fragment is refused
 * (it is almost always a password with an unencoded `?` or `#` that would
 * otherwise be cut off silently), and so is a user name without a password.
 * User name and password are percent-decoded.
 */
export function parseRedisUrl(raw: string, defaultPort = 6379): RedisEndpoint {
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new RedisUrlError('is not a valid URL (percent-encode reserved characters such as "@", "/", "#" in the user name and password)');
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new RedisUrlError('must be a redis:// or rediss:// URL');
  if (!u.hostname) throw new RedisUrlError('has no host');
  if (u.search || u.hash || raw.includes('#') || raw.includes('?')) {
    throw new RedisUrlError('must not have a query string or fragment (percent-encode "?" and "#" in a password)');
  }
  const port = u.port ? Number(u.port) : defaultPort;
  if (port < 1) throw new RedisUrlError('has port 0');
  let db: number | undefined;
  const path = u.pathname.replace(/^\/+/, '');
  if (path !== '') {
    if (!/^\d{1,5}$/.test(path)) throw new RedisUrlError('path must be a database number such as /0');
    db = Number(path);
  }
  let username: string | undefined;
  let password: string | undefined;
  try {
    username = u.username ? decodeURIComponent(u.username) : undefined;
    password = u.password ? decodeURIComponent(u.password) : undefined;
  } catch {
    throw new RedisUrlError('has a malformed percent-encoding in the user name or password');
  }
  if (username !== undefined && password === undefined)
    throw new RedisUrlError('names a user but no password (redis://user:password@host)');
  // WHATWG URL keeps the brackets of an IPv6 literal; sockets want the bare address.
  const host = u.hostname.replace(/^\[(.*)\]$/, '$1');
  return {
    host,
    port,
    tls: u.protocol === 'rediss:',
    ...(username !== undefined ? { username } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(db !== undefined ? { db } : {}),
  };
}

/** `host:port` for logs (IPv6 in brackets); never the credentials. */
export function endpointLabel(e: Pick<RedisEndpoint, 'host' | 'port'>): string {
  return e.host.includes(':') ? `[${e.host}]:${e.port}` : `${e.host}:${e.port}`;
}
