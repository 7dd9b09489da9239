import { z } from 'zod';
import { scopeSchema } from '../config/common.ts';
import { spiffeProblem } from '../identity/spiffe-id.ts';
import { hasControls } from '../cli/terminal.ts';
import { nfc } from '../tasks/nfc.ts';
import { textHasControls } from './hidden-text.ts';

/**
 * A task id a caller chooses: 1-128 chars of [A-Za-z0-9._:-] (contract section 3); `~` is reserved for sub-task ids.
 * Not `.` nor `..`: as a URL path segment every client resolves it away (/v1/tasks/../complete is /v1/complete,
 * /console/tasks/.. the console's home), so such a task could be neither addressed nor looked at in the console.
 */
export const TASK_NAME = /^(?!\.\.?$)[A-Za-z0-9._:-]{1,128}$/;
export const taskIdSchema = z.string().regex(TASK_NAME, 'must be 1-128 characters of [A-Za-z0-9._:-], not "." nor ".."');
/** A task id the broker made: a root id, then `~<name>` per delegation level, at most 512 chars. */
export const taskRefSchema = z
  .string()
  .max(512)
  .regex(/^[A-Za-z0-9._:-]{1,128}(~[A-Za-z0-9._:-]{1,128})*$/, 'must be a task id (names of [A-Za-z0-9._:-] joined by "~")');
/** `?limit=` of every list page (contract section 3): at most this many items, this many when absent. */
export const LIST_LIMIT_MAX = 500;
export const LIST_LIMIT_DEFAULT = 50;
/** `?limit=` and `?cursor=` of every list (the cursor is opaque, bound to its caller and filters). */
export const paging = {
  limit: z.coerce.number().int().min(1).max(LIST_LIMIT_MAX).default(LIST_LIMIT_DEFAULT),
  cursor: z.string().min(1).max(8192).optional(),
};
/** Lease and approval ids are ours: 32 lowercase hex characters. */
export const leaseIdSchema = z.string().regex(/^[a-f0-9]{32}$/, 'must be 32 lowercase hex characters');
const identitySchema = z
  .string()
  .min(3)
  .max(2048)
  .regex(/^[\x21-\x7e]+$/, 'must be an identity string (SPIFFE ID or <issuer>#<sub>)')
  // One ending in `/*` is an identity pattern (no caller is ever that identity, src/identity/verifier.ts): as a
  // task's agent, the console's Revoke all and Quarantine for it would stop every identity below it.
  .refine((s) => !s.endsWith('/*'), 'must be one identity, not a pattern ending in /*')
  .superRefine((s, ctx) => {
    const problem = spiffeProblem(s);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  });
const scopesSchema = z
  .array(scopeSchema)
  .max(100)
  .refine((s) => new Set(s).size === s.length, { message: 'scopes must not repeat' });

/**
 * Text the broker compares (a tenant, a label value, a purpose), taken in NFC (src/tasks/nfc.ts): a caller's
 * decomposed "café" is the composed one's tenant, and reads back composed. Bounded once normalised, since NFC
 * may lengthen a string (U+0958 is two code points in NFC).
 */
export const nfcText = (max: number) => z.string().transform(nfc).pipe(z.string().min(1).max(max));

const LABEL_KEY = /^[A-Za-z0-9_.-]{1,64}$/;
/** Labels per task (a sub-task's inherited ones included). */
export const MAX_LABELS = 32;

/**
 * Task labels: at most 32, keys 1-64 chars of [A-Za-z0-9_.-], string values
 * of at most 256 chars once in NFC (as {@link nfcText}; keys are ASCII, the
 * same in every form), parsed into a null-prototype record. Checked by hand
 * because z.record assigns keys onto a plain object: `__proto__` would set
 * the prototype and vanish (unchecked) instead of being a label like any other.
 */
export const labelsSchema = z
  .custom<Record<string, string>>((v) => v !== null && typeof v === 'object' && !Array.isArray(v), {
    message: 'must be an object of string labels',
  })
  .check((ctx) => {
    const entries = Object.entries(ctx.value);
    if (entries.length > MAX_LABELS) ctx.issues.push({ code: 'custom', input: ctx.value, message: `at most ${MAX_LABELS} labels` });
    for (const [k, v] of entries) {
      if (!LABEL_KEY.test(k))
        ctx.issues.push({ code: 'custom', input: k, path: [k], message: 'label keys are 1-64 chars of [A-Za-z0-9_.-]' });
      else if (typeof v !== 'string' || nfc(v).length > 256)
        ctx.issues.push({ code: 'custom', input: v, path: [k], message: 'label values are strings of at most 256 characters' });
    }
  })
  .transform((v) => {
    const out: Record<string, string> = Object.create(null);
    for (const [k, val] of Object.entries(v)) out[k] = nfc(val);
    return out;
  });

/**
 * What each rule refuses, as a refusal says it: exactly the characters its check matches ({@link hasControls},
 * src/http/hidden-text.ts `textHasControls`), so a caller told its text was refused knows what to take out, and that free text may
 * keep what it is meant to (zero-width joiners in emoji and scripts, bidi marks).
 */
export const REFUSED_CHARACTERS = {
  name:
    'control characters, line or paragraph separators, invisible characters (zero-width, bidi controls and every other ' +
    'default-ignorable or format character), lone surrogates, spaces other than the ASCII space, or blank glyphs (the ' +
    'blank braille pattern, the Khitan filler, the musical null notehead)',
  text:
    'control characters (C0, DEL, C1), line or paragraph separators (U+2028, U+2029), or bidi embeddings, overrides ' +
    'and isolates (U+202A-U+202E, U+2066-U+2069), or characters that hide text (zero-width space, word joiner and ' +
    'invisible operators, BOM, interlinear annotation, Hangul and Khitan fillers, the musical null notehead, Unicode ' +
    'tag characters outside the flags of England, Scotland and Wales, two invisible characters in a row, a variation ' +
    'selector that selects no glyph, other ' +
    'default-ignorable characters, a run of blanks holding spaces of more than one kind (but an ASCII space beside a ' +
    'no-break, narrow no-break or ideographic one, the two taking turns or one of them once) or more than one ' +
    'invisible or format character); joiners (ZWJ, ZWNJ), direction marks and emoji are allowed',
} as const satisfies Record<CheckedText[2], string>;

/**
 * A role named by a caller: any short string. Only configured roles are roles, and naming anything else
 * is answered by what the name is used for (contract section 3: a grant answers 400 `unknown_role`, a
 * credential request 403 `role_not_granted`), not as a malformed body.
 */
const roleRefSchema = z
  .string()
  .min(1)
  .max(256)
  .refine((s) => !hasControls(s), `role names may not hold ${REFUSED_CHARACTERS.name}`);

/**
 * A TTL a caller sends: a task's `ttlSeconds`, a grant's `maxTtlSeconds`, a credential's `ttlSeconds`. The schema
 * says only what is malformed (not an integer, below 1, or beyond 2^53 - 1 where a double stops being exact: 400
 * `invalid_request`); how long is too long is the config's to say, one way per field whatever the number: a task
 * over `tasks.maxTtlSeconds` answers 400 `ttl_too_long` (TaskService), a grant's ceiling and a credential request
 * are clamped to the role's maximum and the task's time left (contract section 3, the effective TTL). A fixed
 * schema bound on top made one number answer two ways: 604,800 `ttl_too_long` or clamped, 604,801 `invalid_request`.
 */
const ttlSchema = z.int().min(1);

export const grantSchema = z.strictObject({
  role: roleRefSchema,
  /** Literal: omitted = the role's configured set; `[]` = none. */
  scopes: scopesSchema.optional(),
  maxTtlSeconds: ttlSchema.optional(),
});

export const openTaskSchema = z.strictObject({
  taskId: taskIdSchema.optional(),
  parentTaskId: taskRefSchema.optional(),
  agent: identitySchema,
  /** Required for a root task; a sub-task inherits its parent's (and may only repeat it). */
  tenant: nfcText(128).optional(),
  purpose: nfcText(1024).optional(),
  ttlSeconds: ttlSchema,
  grants: z
    .array(grantSchema)
    .min(1)
    .max(100)
    .refine((g) => new Set(g.map((x) => x.role)).size === g.length, { message: 'a role may appear in only one grant' }),
  labels: labelsSchema.optional(),
});
export type OpenTaskBody = z.infer<typeof openTaskSchema>;

/**
 * A caller's text and the rule it is held to: a `name` (compared by policies, filters and patterns, so a lookalike
 * must not pass for another) to the role names' rule ({@link hasControls}); `text` a human reads (a purpose, a
 * reason) to {@link textHasControls}.
 */
export type CheckedText = readonly [field: string, value: string | undefined, rule: 'name' | 'text'];

/** A field {@link fieldWithControls} refused, and the rule it was held to. */
export interface RefusedText {
  field: string;
  rule: CheckedText[2];
}

/**
 * The first of `fields` whose value holds characters it may not carry, with its field name and rule, or undefined:
 * the one check of text the broker records into audit and shows in lists and the console (task opening, approval
 * decisions, quarantines, the kill switch). Callers refuse it with {@link import('../authz.ts').refuseControls},
 * an audited denial, which is why it is not a schema refinement (a schema's 400 is not audited).
 */
export function fieldWithControls(fields: Iterable<CheckedText>): RefusedText | undefined {
  for (const [field, value, rule] of fields) {
    if (value !== undefined && (rule === 'name' ? hasControls(value) : textHasControls(value))) return { field, rule };
  }
  return undefined;
}

/** The first text field of a task to open that holds characters a task may not carry, as `fromZod` names fields. */
export function textWithControls(body: Pick<OpenTaskBody, 'tenant' | 'purpose' | 'labels'>): RefusedText | undefined {
  return fieldWithControls([
    ['tenant', body.tenant, 'name'],
    ['purpose', body.purpose, 'text'],
    ...Object.entries(body.labels ?? {}).map(([k, v]): CheckedText => [`labels.${k}`, v, 'name']),
  ]);
}

export const credentialRequestSchema = z.strictObject({
  taskId: taskRefSchema,
  role: roleRefSchema,
  scopes: scopesSchema.optional(),
  ttlSeconds: ttlSchema.optional(),
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
  /** Signing key only: sign with the new key at once and drop the old one from the JWKS (a compromised key). */
  immediate: z.boolean().optional(),
});
