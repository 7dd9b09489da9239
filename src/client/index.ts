/**
 * `jit-broker/client`: a typed client for the broker's HTTP API, with
 * credentials refreshed before they expire and an AWS SDK v3 credential
 * provider. Runs on Node 20 or later; depends on nothing but `fetch`.
 */
export { BrokerClient, DEFAULT_BROKER_URL, isPending, type BrokerClientOptions, type WaitOptions } from './broker-client.ts';
export { awsCredentialsOf, credentialProcessOutput, fromBroker, type AwsCredentialIdentity, type FromBrokerOptions } from './aws.ts';
export { childEnv, credentialEnv } from './env.ts';
export { ApprovalPendingError, BrokerResponseError, BrokerUnreachableError, ClientConfigError, JitError, isTransient } from './errors.ts';
export type { TokenInput } from './token-source.ts';
export type * from './types.ts';
