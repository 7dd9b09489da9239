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

/**
 * The environment for a program that should use `cred`: the parent's, without
 * the caller's own identity (`JIT_TOKEN`, `JIT_TOKEN_FILE`: the program gets
 * the credential, never the identity that can mint more), plus
 * {@link credentialEnv}. For AWS credentials `AWS_PROFILE` and any previous
 * session variables are dropped as well: the JS SDK ignores environment keys
 * while a profile is named.
 */
export function childEnv(parent: NodeJS.ProcessEnv, cred: IssuedCredential): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(parent)) if (v !== undefined) out[k] = v;
  delete out.JIT_TOKEN;
  delete out.JIT_TOKEN_FILE;
  const env = credentialEnv(cred);
  if (env.AWS_ACCESS_KEY_ID !== undefined) {
    for (const k of ['AWS_PROFILE', 'AWS_DEFAULT_PROFILE', 'AWS_SESSION_TOKEN', 'AWS_SECURITY_TOKEN', 'AWS_CREDENTIAL_EXPIRATION'])
      delete out[k];
  }
  return { ...out, ...env };
}
