import { z } from 'zod';
import { roleNameSchema, scopeSchema } from '../config/common.ts';

/** Task ids: 1-128 chars of [A-Za-z0-9._:-] (contract section 3). */
export const taskIdSchema = z.string().regex(/^[A-Za-z0-9._:-]{1,128}$/, 'must be 1-128 characters of [A-Za-z0-9._:-]');
/** Lease and approval ids are ours: 32 lowercase hex characters. */
export const leaseIdSchema = z.string().regex(/^[a-f0-9]{32}$/, 'must be 32 lowercase hex characters');
const identitySchema = z
  .string()
  .min(3)
  .max(2048)
  .regex(/^[\x21-\x7e]+$/, 'must be an identity string (SPIFFE ID or <issuer>#<sub>)');
const scopesSchema = z
  .array(scopeSchema)
  .max(100)
  .refine((s) => new Set(s).size === s.length, { message: 'scopes must not repeat' });

export const grantSchema = z.strictObject({
  role: roleNameSchema,
  scopes: scopesSchema.default([]),
  maxTtlSeconds: z
    .int()
    .min(1)
    .max(7 * 86_400)
    .optional(),
});

export const openTaskSchema = z.strictObject({
  taskId: taskIdSchema.optional(),
  parentTaskId: taskIdSchema.optional(),
  agent: identitySchema,
  tenant: z.string().min(1).max(128),
  purpose: z.string().min(1).max(1024),
  ttlSeconds: z
    .int()
    .min(1)
    .max(7 * 86_400),
  grants: z
    .array(grantSchema)
    .min(1)
    .max(100)
    .refine((g) => new Set(g.map((x) => x.role)).size === g.length, { message: 'a role may appear in only one grant' }),
  labels: z
    .record(z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'label keys are 1-64 chars of [A-Za-z0-9_.-]'), z.string().max(256))
    .refine((l) => Object.keys(l).length <= 32, { message: 'at most 32 labels' })
    .optional(),
});
export type OpenTaskBody = z.infer<typeof openTaskSchema>;

export const credentialRequestSchema = z.strictObject({
  taskId: taskIdSchema,
  role: roleNameSchema,
  scopes: scopesSchema.optional(),
  ttlSeconds: z
    .int()
    .min(1)
    .max(7 * 86_400)
    .optional(),
});
export type CredentialRequest = z.infer<typeof credentialRequestSchema>;

export const approvalDecisionSchema = z.strictObject({
  decision: z.enum(['approve', 'reject']),
  reason: z.string().min(1).max(1024).optional(),
});

export const rotateSchema = z.strictObject({
  target: z
    .string()
    .min(1)
    .max(64)
    .regex(/^[a-z0-9-]+$/),
});
