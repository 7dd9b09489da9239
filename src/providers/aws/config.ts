import { z } from 'zod';
import { approvalSchema, secretSourceSchema } from '../../config/common.ts';

const roleArn = z
  .string()
  .regex(/^arn:aws[a-z-]*:iam::\d{12}:role\/[\w+=,.@/-]{1,512}$/, 'must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)');

/** A role served by STS AssumeRole, scoped down by a session policy built from the grant's scopes. */
export const awsRoleSchema = z.strictObject({
  provider: z.literal('aws'),
  roleArn,
  /** STS allows 900..43200 and the IAM role's MaxSessionDuration; 3600 is the AWS default. */
  maxTtlSeconds: z.int().min(900).max(43_200).default(3600),
  /** Resources the session policy allows the scoped actions on (default "*"). */
  resources: z.array(z.string().min(1).max(2048)).max(50).default(['*']),
  externalId: z
    .string()
    .min(2)
    .max(1224)
    .regex(/^[\w+=,.@:/-]*$/)
    .optional(),
  approval: approvalSchema,
});
export type AwsRoleConfig = z.infer<typeof awsRoleSchema>;

export const awsSettingsSchema = z.strictObject({
  region: z.string().min(1).default('us-east-1'),
  /** An STS/IAM-compatible endpoint (LocalStack, the test emulator); default real AWS. */
  endpoint: z.url().optional(),
  /** IAM endpoint when it differs from `endpoint` (real AWS: IAM is global). */
  iamEndpoint: z.url().optional(),
  credentials: z
    .strictObject({
      accessKeyId: secretSourceSchema,
      secretAccessKey: secretSourceSchema,
      sessionToken: secretSourceSchema.optional(),
    })
    .optional(),
  revocation: z.enum(['iam-deny', 'none']).default('iam-deny'),
  /** The broker's own IAM user, for access-key rotation (default: the user the credentials belong to). */
  userName: z.string().min(1).max(64).optional(),
  rotationPeriodSeconds: z.int().min(60).optional(),
  /** Attempts per upstream call; throttling, 5xx and network errors are retried with jittered backoff. */
  maxAttempts: z.int().min(1).max(10).default(3),
  retryBaseDelayMs: z.int().min(1).max(10_000).default(200),
  /** Per-request timeout towards STS/IAM. */
  requestTimeoutMs: z.int().min(100).max(60_000).default(5000),
  /** Tag sessions with task/tenant/agent (the trust policy must allow sts:TagSession). */
  sessionTags: z.boolean().default(true),
  /** Set SourceIdentity from the agent (the trust policy must allow sts:SetSourceIdentity). */
  sourceIdentity: z.boolean().default(true),
  /** Name of the broker-managed inline Deny policy on each role. */
  revocationPolicyName: z
    .string()
    .min(1)
    .max(128)
    .regex(/^[\w+=,.@-]+$/)
    .default('jit-broker-revoked-sessions'),
  /** Budget for that policy; IAM allows 10,240 chars for all inline policies of a role together. */
  revocationPolicyMaxChars: z.int().min(512).max(10_240).default(10_240),
  /**
   * How far the broker's clock (its Redis-time estimate) may be from AWS's: a
   * deny is kept this much longer than the latest expiry of what it denies.
   */
  clockSkewSeconds: z.int().min(0).max(3600).default(300),
  /**
   * How often each role's deny policy is read back and any deny the broker wrote, but a write that landed
   * late erased, is written again (the sweeper's reconcile pass; one instance per role per interval).
   */
  revocationVerifySeconds: z.int().min(1).max(3600).default(30),
  /** After rotation, how often to try the new key while IAM propagates it. */
  rotationVerifyAttempts: z.int().min(1).max(60).default(10),
  rotationVerifyDelayMs: z.int().min(1).max(30_000).default(1000),
});
export type AwsSettings = z.infer<typeof awsSettingsSchema>;
