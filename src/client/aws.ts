import { BrokerClient, type BrokerClientOptions } from './broker-client.ts';
import { JitError } from './errors.ts';
import type { AwsCredentials, IssuedCredential } from './types.ts';

/**
 * What an AWS SDK v3 credential provider returns (structurally the SDK's
 * `AwsCredentialIdentity`, declared here so the client needs no AWS package).
 */
export interface AwsCredentialIdentity {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
  expiration?: Date;
}

/** Options of {@link fromBroker}. */
export interface FromBrokerOptions extends BrokerClientOptions {
  taskId: string;
  role: string;
  /** IAM actions; default all of the grant's. */
  scopes?: string[];
  /** Requested session length; the broker clamps it (STS minimum 900). */
  ttlSeconds?: number;
  /** Share one client (and its cache) between providers; otherwise one is made from the other options. */
  client?: BrokerClient;
}

/**
 * An AWS SDK v3 credential provider backed by the broker:
 *
 * ```ts
 * const s3 = new S3Client({ region: 'us-east-1', credentials: fromBroker({ taskId, role: 'reports-bucket' }) });
 * ```
 *
 * The SDK asks its provider again when the credentials it holds have less
 * than 5 minutes left; the client's cache answers those calls without a
 * request until its own refresh margin (default 60 s) is reached, so each
 * STS session is used for nearly its whole lifetime.
 */
export function fromBroker(opts: FromBrokerOptions): () => Promise<AwsCredentialIdentity> {
  const { taskId, role, scopes, ttlSeconds, client, ...clientOptions } = opts;
  const broker = client ?? new BrokerClient(clientOptions);
  const req = { taskId, role, ...(scopes ? { scopes } : {}), ...(ttlSeconds ? { ttlSeconds } : {}) };
  return async () => {
    const cred = await broker.getCredential(req);
    const c = awsCredentialsOf(cred);
    return {
      accessKeyId: c.AccessKeyId,
      secretAccessKey: c.SecretAccessKey,
      sessionToken: c.SessionToken,
      expiration: new Date(c.Expiration),
    };
  };
}

/**
 * The JSON an AWS `credential_process` prints (Version 1): what
 * `jit cred get --format aws-process` writes.
 */
export function credentialProcessOutput(cred: IssuedCredential): {
  Version: 1;
  AccessKeyId: string;
  SecretAccessKey: string;
  SessionToken: string;
  Expiration: string;
} {
  const c = awsCredentialsOf(cred);
  return {
    Version: 1,
    AccessKeyId: c.AccessKeyId,
    SecretAccessKey: c.SecretAccessKey,
    SessionToken: c.SessionToken,
    Expiration: c.Expiration,
  };
}

/** The STS session in an issued credential; a role of another provider is an error (`not_aws_role`). */
export function awsCredentialsOf(cred: IssuedCredential): AwsCredentials {
  const c = cred.credentials as Partial<AwsCredentials>;
  if (typeof c.AccessKeyId !== 'string' || typeof c.SecretAccessKey !== 'string' || typeof c.Expiration !== 'string')
    throw new JitError('not_aws_role', `role ${cred.role} is a ${cred.provider} role: it does not issue AWS credentials`);
  return c as AwsCredentials;
}
