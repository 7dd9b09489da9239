import type { IssuedCredential } from './types.ts';

/**
 * The environment variables a program reads a credential from, by provider:
 *
 * | provider | variables |
 * |---|---|
 * | `aws` | `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_CREDENTIAL_EXPIRATION` |
 * | `jwt` | `JIT_ACCESS_TOKEN` (send it as `Authorization: Bearer $JIT_ACCESS_TOKEN`) |
 * | `vault` token role | `VAULT_TOKEN` |
 * | `vault` dynamic secret | `JIT_SECRET_<FIELD>` per field of the secret (`JIT_SECRET_USERNAME`, `JIT_SECRET_PASSWORD`, ...) and `JIT_VAULT_LEASE_ID` |
 *
 * and for every provider `JIT_LEASE_ID`, `JIT_TASK_ID`, `JIT_ROLE` and
 * `JIT_CREDENTIAL_EXPIRES_AT` (ISO 8601), none of them secret.
 */
export function credentialEnv(cred: IssuedCredential): Record<string, string> {
  const c = cred.credentials as Record<string, unknown>;
  const env: Record<string, string> = {
    JIT_LEASE_ID: cred.leaseId,
    JIT_TASK_ID: cred.taskId,
    JIT_ROLE: cred.role,
    JIT_CREDENTIAL_EXPIRES_AT: cred.expiresAt,
  };
  const str = (v: unknown) => (typeof v === 'string' ? v : typeof v === 'number' || typeof v === 'boolean' ? String(v) : undefined);
  if (cred.provider === 'aws' || typeof c.AccessKeyId === 'string') {
    env.AWS_ACCESS_KEY_ID = str(c.AccessKeyId) ?? '';
    env.AWS_SECRET_ACCESS_KEY = str(c.SecretAccessKey) ?? '';
    if (str(c.SessionToken)) env.AWS_SESSION_TOKEN = str(c.SessionToken)!;
    if (str(c.Expiration)) env.AWS_CREDENTIAL_EXPIRATION = str(c.Expiration)!;
  } else if (typeof c.access_token === 'string') {
    env.JIT_ACCESS_TOKEN = c.access_token;
  } else if (typeof c.token === 'string' && typeof c.accessor === 'string') {
    env.VAULT_TOKEN = c.token;
  } else {
    for (const [k, v] of Object.entries(c)) {
      const s = str(v);
      if (s === undefined || k === 'lease_duration') continue;
      if (k === 'lease_id') env.JIT_VAULT_LEASE_ID = s;
      else env[`JIT_SECRET_${k.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`] = s;
    }
  }
  return env;
}

/** The AWS SDK's container-credentials provider: an endpoint, and the token it sends there. */
const CONTAINER_VARS = [
  'AWS_CONTAINER_CREDENTIALS_FULL_URI',
  'AWS_CONTAINER_CREDENTIALS_RELATIVE_URI',
  'AWS_CONTAINER_AUTHORIZATION_TOKEN',
  'AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE',
];

/**
 * Whether the container-credentials set-up in `env` is the caller's broker identity under another name: the
 * endpoint is the broker's (its /v1/aws/container-credentials mints credentials for any role of the task), or
 * the token (file) is JIT_TOKEN (JIT_TOKEN_FILE) itself.
 */
function containerIsIdentity(env: NodeJS.ProcessEnv, brokerUrl: string | undefined): boolean {
  const origin = (u: string | undefined) => {
    try {
      return u ? new URL(u).origin : undefined;
    } catch {
      return undefined;
    }
  };
  const endpoint = origin(env.AWS_CONTAINER_CREDENTIALS_FULL_URI);
  const token = env.AWS_CONTAINER_AUTHORIZATION_TOKEN?.trim().replace(/^Bearer\s+/i, '');
  return (
    (endpoint !== undefined && endpoint === origin(brokerUrl ?? env.JIT_BROKER_URL)) ||
    (!!token && token === env.JIT_TOKEN?.trim()) ||
    (!!env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE && env.AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE === env.JIT_TOKEN_FILE)
  );
}

/**
 * The environment for a program that should use `cred`: the parent's, without
 * the caller's own identity (`JIT_TOKEN`, `JIT_TOKEN_FILE`: the program gets
 * the credential, never the identity that can mint more), plus
 * {@link credentialEnv}. For AWS credentials `AWS_PROFILE` and any previous
 * session variables are dropped as well: the JS SDK ignores environment keys
 * while a profile is named. The SDK's container-credentials variables go too,
 * for AWS credentials (the keys are the program's one AWS identity) and
 * whenever they are the caller's identity by another road
 * (`brokerUrl`: the broker the credential came from; default `JIT_BROKER_URL`).
 */
export function childEnv(parent: NodeJS.ProcessEnv, cred: IssuedCredential, opts: { brokerUrl?: string } = {}): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(parent)) if (v !== undefined) out[k] = v;
  delete out.JIT_TOKEN;
  delete out.JIT_TOKEN_FILE;
  const env = credentialEnv(cred);
  if (env.AWS_ACCESS_KEY_ID !== undefined || containerIsIdentity(parent, opts.brokerUrl)) for (const k of CONTAINER_VARS) delete out[k];
  if (env.AWS_ACCESS_KEY_ID !== undefined) {
    for (const k of ['AWS_PROFILE', 'AWS_DEFAULT_PROFILE', 'AWS_SESSION_TOKEN', 'AWS_SECURITY_TOKEN', 'AWS_CREDENTIAL_EXPIRATION'])
      delete out[k];
  }
  return { ...out, ...env };
}
