import { z } from 'zod';
import { approvalSchema, scopeSchema } from '../../config/common.ts';

/** A role served by the broker's own signer: an RFC 9068 access token for `audience`. */
export const jwtRoleSchema = z.strictObject({
  provider: z.literal('jwt'),
  audience: z.string().min(1).max(512),
  maxTtlSeconds: z.int().min(1).max(86_400).default(900),
  /** Scopes this role may ever carry; when set, grants are checked against it at task open. */
  scopes: z.array(scopeSchema).max(100).optional(),
  approval: approvalSchema,
});
export type JwtRoleConfig = z.infer<typeof jwtRoleSchema>;

/** providers.jwt: the built-in signer. Everything has a default. */
export const jwtSettingsSchema = z
  .strictObject({
    alg: z.enum(['ES256', 'EdDSA']).default('ES256'),
    /** How long a retired signing key stays in the JWKS after its last token could have expired. */
    retireGraceSeconds: z.int().min(0).max(86_400).default(60),
    /**
     * A new signing key is in the JWKS this long before it signs anything. Longer than jose's
     * 30 s refetch cooldown plus the JWKS max-age (60 s), so a resource server that cached the
     * key set before a rotation knows the new key before it sees a token signed with it.
     */
    publishLeadSeconds: z.int().min(0).max(3600).default(90),
  })
  .default({ alg: 'ES256', retireGraceSeconds: 60, publishLeadSeconds: 90 });
export type JwtSettings = z.infer<typeof jwtSettingsSchema>;
