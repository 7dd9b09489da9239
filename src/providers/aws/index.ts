export { createAwsProvider, type AwsProvider, type AwsProviderOptions } from './provider.ts';
export { containerCredentialsRouter, type ContainerCredentialsDeps } from './container-credentials.ts';
export type { DenyFallbackEvent } from './deny-list.ts';
export { awsRoleSchema, awsSettingsSchema, type AwsRoleConfig, type AwsSettings } from './config.ts';
