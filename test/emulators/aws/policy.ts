import { malformedPolicy } from './errors.ts';

/** One IAM policy statement, normalised (single values turned into lists). */
export interface Statement {
  Sid?: string;
  Effect: 'Allow' | 'Deny';
  Action?: string[];
  NotAction?: string[];
  Resource?: string[];
  NotResource?: string[];
  Condition?: Record<string, Record<string, string[]>>;
}

export interface PolicyDocument {
  Version?: string;
  Statement: Statement[];
}

/**
 * The condition operators the emulator evaluates. Real IAM knows many more;
 * anything else is rejected when the policy is stored, so a broker that
 * starts relying on an operator the emulator cannot judge fails loudly here
 * instead of passing a test by accident.
 */
const OPERATORS = ['StringEquals', 'StringNotEquals', 'StringLike', 'DateLessThan', 'DateGreaterThan'] as const;

const toList = (v: unknown, what: string): string[] => {
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'string')) return v as string[];
  throw malformedPolicy(`${what} must be a string or a non-empty list of strings.`);
};

/**
 * Parses and checks a policy document like IAM does on PutRolePolicy and STS
 * on a session policy: valid JSON, known Version, each statement with an
 * Effect, exactly one of Action/NotAction and of Resource/NotResource.
 */
export function parsePolicy(text: string): PolicyDocument {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw malformedPolicy('The policy is not in the valid JSON format.');
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw malformedPolicy('The policy is not in the valid JSON format.');
  const d = doc as Record<string, unknown>;
  for (const k of Object.keys(d))
    if (!['Version', 'Id', 'Statement'].includes(k)) throw malformedPolicy(`Syntax errors in policy: unknown top-level element ${k}.`);
  if (d.Version !== undefined && d.Version !== '2012-10-17' && d.Version !== '2008-10-17')
    throw malformedPolicy('The policy must contain a valid version string');
  if (d.Statement === undefined) throw malformedPolicy('Syntax errors in policy: Statement is required.');
  const raw = Array.isArray(d.Statement) ? d.Statement : [d.Statement];
  if (raw.length === 0) throw malformedPolicy('Syntax errors in policy: Statement must not be empty.');
  const statements = raw.map((s: unknown, i): Statement => {
    if (!s || typeof s !== 'object') throw malformedPolicy(`Syntax errors in policy: statement ${i} is not an object.`);
    const st = s as Record<string, unknown>;
    for (const k of Object.keys(st)) {
      if (!['Sid', 'Effect', 'Action', 'NotAction', 'Resource', 'NotResource', 'Condition', 'Principal', 'NotPrincipal'].includes(k))
        throw malformedPolicy(`Syntax errors in policy: unknown element ${k}.`);
    }
    if (st.Principal !== undefined || st.NotPrincipal !== undefined)
      throw malformedPolicy('Policy document should not specify a principal.');
    if (st.Effect !== 'Allow' && st.Effect !== 'Deny') throw malformedPolicy(`Syntax errors in policy: Effect must be Allow or Deny.`);
    if ((st.Action === undefined) === (st.NotAction === undefined))
      throw malformedPolicy('Syntax errors in policy: a statement needs exactly one of Action and NotAction.');
    if ((st.Resource === undefined) === (st.NotResource === undefined)) throw malformedPolicy('Policy statement must contain resources.');
    const out: Statement = { Effect: st.Effect };
    if (st.Sid !== undefined) {
      if (typeof st.Sid !== 'string' || !/^[A-Za-z0-9]*$/.test(st.Sid)) throw malformedPolicy('Statement IDs (SID) must be alpha-numeric.');
      out.Sid = st.Sid;
    }
    for (const k of ['Action', 'NotAction'] as const) {
      if (st[k] === undefined) continue;
      out[k] = toList(st[k], k);
      for (const a of out[k]!)
        if (a !== '*' && !/^[a-zA-Z0-9-]+:[A-Za-z0-9*?]+$/.test(a))
          throw malformedPolicy(`Actions/Conditions must be prefaced by a vendor, e.g., iam, sdb, ec2, etc. (${a})`);
    }
    for (const k of ['Resource', 'NotResource'] as const) if (st[k] !== undefined) out[k] = toList(st[k], k);
    if (st.Condition !== undefined) out.Condition = parseCondition(st.Condition);
    return out;
  });
  // IAM: "the Sid value must be unique within a JSON policy".
  const sids = statements.map((s) => s.Sid).filter((sid): sid is string => sid !== undefined);
  if (new Set(sids).size !== sids.length) throw malformedPolicy('Statement IDs (SID) in a single policy must be unique.');
  return { ...(typeof d.Version === 'string' ? { Version: d.Version } : {}), Statement: statements };
}

function parseCondition(c: unknown): Record<string, Record<string, string[]>> {
  if (!c || typeof c !== 'object' || Array.isArray(c)) throw malformedPolicy('Syntax errors in policy: Condition must be an object.');
  const out: Record<string, Record<string, string[]>> = {};
  for (const [op, block] of Object.entries(c)) {
    if (!(OPERATORS as readonly string[]).includes(op))
      throw malformedPolicy(`Emulator: unsupported condition operator ${op} (supported: ${OPERATORS.join(', ')}).`);
    if (!block || typeof block !== 'object' || Array.isArray(block))
      throw malformedPolicy(`Syntax errors in policy: ${op} must map keys to values.`);
    out[op] = {};
    for (const [key, v] of Object.entries(block)) {
      const values = toList(v, `${op}.${key}`);
      if (op.startsWith('Date') && values.some((x) => Number.isNaN(Date.parse(x)))) throw malformedPolicy(`Invalid date in ${op}.${key}.`);
      out[op]![key.toLowerCase()] = values;
    }
  }
  return out;
}

/** IAM wildcard match: `*` any run, `?` one character. */
export function wildcard(pattern: string, value: string, ignoreCase: boolean): boolean {
  const re = pattern
    .replace(/[.+^${}()|[\]\\]/g, '\\$&')
    .replace(/\*/g, '.*')
    .replace(/\?/g, '.');
  return new RegExp(`^${re}$`, ignoreCase ? 'i' : '').test(value);
}

/** What a request carries into policy evaluation. Context keys are lower-case (IAM keys are case-insensitive). */
export interface RequestContext {
  action: string;
  resource: string;
  keys: Record<string, string>;
}

function conditionHolds(cond: Statement['Condition'], ctx: RequestContext): boolean {
  for (const [op, block] of Object.entries(cond ?? {})) {
    for (const [key, values] of Object.entries(block)) {
      const actual = ctx.keys[key];
      let ok: boolean;
      if (actual === undefined)
        ok = op === 'StringNotEquals'; // absent key: only negated operators match
      else if (op === 'StringEquals') ok = values.includes(actual);
      else if (op === 'StringNotEquals') ok = !values.includes(actual);
      else if (op === 'StringLike') ok = values.some((v) => wildcard(v, actual, false));
      else if (op === 'DateLessThan') ok = values.some((v) => Date.parse(actual) < Date.parse(v));
      else ok = values.some((v) => Date.parse(actual) > Date.parse(v));
      if (!ok) return false;
    }
  }
  return true;
}

/** Whether a statement applies to the request (action, resource and every condition). */
export function statementMatches(st: Statement, ctx: RequestContext): boolean {
  const actionHit = st.Action
    ? st.Action.some((a) => wildcard(a, ctx.action, true))
    : !st.NotAction!.some((a) => wildcard(a, ctx.action, true));
  if (!actionHit) return false;
  const resourceHit = st.Resource
    ? st.Resource.some((r) => wildcard(r, ctx.resource, false))
    : !st.NotResource!.some((r) => wildcard(r, ctx.resource, false));
  return resourceHit && conditionHolds(st.Condition, ctx);
}

/** Size as IAM counts it: the document without insignificant whitespace. */
export function policySize(text: string): number {
  return JSON.stringify(JSON.parse(text)).length;
}
