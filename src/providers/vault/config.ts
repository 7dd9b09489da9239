import { z } from 'zod';
import { MAX_VAULT_ANSWER_BYTES } from './transport.ts';
import { approvalSchema, secretSourceSchema } from '../../config/common.ts';

const vaultPolicyName = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9_.-]+$/, 'must be a Vault policy name');

/**
 * A role served by Vault: either a dynamic secret read from `path` (revoked by
 * its Vault lease) or a child `token` with a fixed set of policies.
 */
export const vaultRoleSchema = z
  .strictObject({
    provider: z.literal('vault'),
    path: z
      .string()
      .min(1)
      .max(512)
      .regex(/^[A-Za-z0-9_./-]+$/, 'must be a Vault API path like database/creds/<role>')
      .optional(),
    token: z
      .strictObject({
        policies: z.array(vaultPolicyName).min(1).max(64),
        numUses: z.int().min(0).max(1_000_000).optional(),
        /**
         * Also attach Vault's `default` policy (lookup-self, renew-self, revoke-self). Off by
         * default (least privilege); turn it on for standard Vault clients that call
         * `auth/token/lookup-self` at start-up.
         */
        defaultPolicy: z.boolean().default(false),
      })
      .optional(),
    maxTtlSeconds: z.int().min(1).max(86_400).default(3600),
    approval: approvalSchema,
  })
  .refine((r) => (r.path === undefined) !== (r.token === undefined), { message: 'a vault role needs exactly one of `path` or `token`' });
export type VaultRoleConfig = z.infer<typeof vaultRoleSchema>;

/**
 * Vault's default `max_request_duration` (90 s): Vault gives up on a request that runs longer, so a create it
 * received cannot take effect later than this after it arrived. The default for `maxRequestDurationSeconds`.
 */
export const VAULT_MAX_REQUEST_DURATION_SECONDS = 90;

export const vaultSettingsSchema = z.strictObject({
  // Calls are `<address>/v1/...`: a query or fragment would end up inside the path of every call.
  address: z
    .url()
    .refine((u) => {
      const url = new URL(u);
      return (url.protocol === 'http:' || url.protocol === 'https:') && url.search === '' && url.hash === '';
    }, 'must be an http(s) URL without a query or fragment (a path prefix is fine)')
    .default('http://127.0.0.1:8200'),
  namespace: z.string().min(1).optional(),
  auth: z.union([
    z.strictObject({ token: secretSourceSchema }),
    z.strictObject({
      approle: z
        .strictObject({
          roleId: z.string().min(1),
          secretId: secretSourceSchema.optional(),
          secretIdFile: z.string().min(1).optional(),
          mount: z.string().min(1).default('approle'),
          /** AppRole role name, needed to generate new secret-ids on rotation. */
          roleName: z.string().min(1).optional(),
        })
        .refine((a) => (a.secretId === undefined) !== (a.secretIdFile === undefined), {
          message: 'approle needs exactly one of `secretId` or `secretIdFile`',
        }),
    }),
  ]),
  requestTimeoutMs: z.int().min(100).max(60_000).default(5000),
  /**
   * Credentials are created with this TTL and extended to the granted TTL only once the lease
   * is recorded, so one made by an instance that dies before recording it dies by itself
   * within this time (contract section 5).
   */
  issueTtlSeconds: z.int().min(5).max(3600).default(60),
  rotationPeriodSeconds: z.int().min(60).optional(),
  /**
   * How long after the broker sent it a request may still take effect in Vault: Vault's
   * `max_request_duration` (Vault's default 90 s), plus however long a proxy in front of Vault may
   * hold a request. A rotation keeps a secret-id whose create got no answer in its intent, and destroys
   * it again at every rotation, until one destroyed it longer than this after it was sent.
   */
  maxRequestDurationSeconds: z.int().min(1).max(3600).default(VAULT_MAX_REQUEST_DURATION_SECONDS),
  /**
   * The most of one Vault answer read (transport.ts). A role's `path` may be any secrets engine or plugin, whose
   * answers the broker cannot bound the way it can AWS's, so an operator whose engine answers more can raise it.
   * At most 32 MiB: every call in flight may hold this much, and one upstream must not exhaust the broker's memory.
   */
  maxAnswerBytes: z
    .int()
    .min(64 * 1024)
    .max(32 * 1024 * 1024)
    .default(MAX_VAULT_ANSWER_BYTES),
});
export type VaultSettings = z.infer<typeof vaultSettingsSchema>;
