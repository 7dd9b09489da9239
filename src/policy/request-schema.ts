import { z } from 'zod';
import { rootTaskId } from '../tasks/types.ts';
import type { PolicyRequest } from './types.ts';

const strings = z.array(z.string());
/** A string map into a null-prototype record: z.record would drop (and not check) a `__proto__` key. */
const stringMap = z
  .custom<Record<string, string>>((v) => v !== null && typeof v === 'object' && !Array.isArray(v), {
    message: 'must be an object of strings',
  })
  .check((ctx) => {
    for (const [k, v] of Object.entries(ctx.value))
      if (typeof v !== 'string') ctx.issues.push({ code: 'custom', input: v, path: [k], message: 'must be a string' });
  })
  .transform((v) => {
    const out: Record<string, string> = Object.create(null);
    for (const [k, val] of Object.entries(v)) out[k] = val;
    return out;
  });

/**
 * A {@link PolicyRequest} as JSON (what `scripts/policy.ts explain` reads).
 * The broker builds requests itself; this is for tools and tests.
 */
export const policyRequestSchema = z.strictObject({
  principal: z.strictObject({
    id: z.string().min(1),
    trust: z.string(),
    kind: z.enum(['spiffe', 'oidc']),
    claims: stringMap.default({}),
  }),
  action: z.enum(['openTask', 'completeTask', 'issue', 'revoke', 'rotate']),
  resource: z.strictObject({ type: z.enum(['Role', 'Task', 'Broker']), id: z.string().min(1) }),
  context: z
    .strictObject({
      task: z
        .strictObject({
          id: z.string(),
          tenant: z.string(),
          purpose: z.string(),
          agent: z.string(),
          labels: stringMap.default({}),
          roles: strings,
          parentId: z.string().optional(),
          depth: z.int().min(0).default(0),
          // As the broker derives it when a request file leaves it out: the first name of the id.
          rootId: z.string().optional(),
        })
        .transform((t) => ({ ...t, rootId: t.rootId ?? rootTaskId(t.id) }))
        .optional(),
      ttlSeconds: z.int().optional(),
      scopes: strings.optional(),
      approved: z.boolean().optional(),
      target: z.string().optional(),
    })
    .default({}),
}) satisfies z.ZodType<PolicyRequest, unknown>;
