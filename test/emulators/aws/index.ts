export { startAwsEmulator, type AwsEmulator, type AwsEmulatorOptions, type EmulatedUser, type RecordedRequest } from './server.ts';
export { ROLE_INLINE_POLICY_LIMIT } from './iam.ts';
