import { z } from 'zod';

/** `approval: required` makes credential requests for the role wait for an approver. */
export const approvalSchema = z.enum(['required', 'none']).default('none');

/** An OAuth scope / IAM action / Vault policy name: printable, no spaces. */
export const scopeSchema = z
  .string()
  .min(1)
  .max(256)
  .regex(/^[\x21\x23-\x5B\x5D-\x7E]+$/, 'must be printable ASCII without spaces, quotes or backslashes');

/**
 * A secret value. After `${VAR}` substitution it is a plain string; `{ file }`
 * reads it from a file at startup (trailing newline trimmed). Literal secrets
 * in committed config are the operator's choice to avoid; we cannot tell.
 */
export const secretSourceSchema = z.union([z.string().min(1), z.strictObject({ file: z.string().min(1) })]);
export type SecretSource = z.infer<typeof secretSourceSchema>;

/**
 * An identity pattern: an exact identity string, or one ending in `/*` that
 * matches any identity below that path.
 */
export const identityPatternSchema = z
  .string()
  .min(3)
  .max(2048)
  .refine((p) => !p.includes('*') || (p.endsWith('/*') && p.indexOf('*') === p.length - 1), {
    message: 'a pattern is an exact identity or ends in "/*" (no other wildcards)',
  });

/** Role names appear in URLs, Cedar entity ids and STS session names. */
export const roleNameSchema = z
  .string()
  .min(1)
  .max(64)
  .regex(/^[A-Za-z0-9._-]+$/, 'role names are 1-64 chars of [A-Za-z0-9._-]');
