import type { EntityUidJson, Expr, PolicyJson } from '@cedar-policy/cedar-wasm/nodejs';
import type { PolicyAction } from './types.ts';

/** Every action of the contract, in a fixed order. */
export const POLICY_ACTIONS: readonly PolicyAction[] = ['openTask', 'completeTask', 'issue', 'revoke', 'rotate'];

/** The request variables whose attributes a policy can read. */
export type AttrRoot = 'principal' | 'resource' | 'context';

/**
 * One attribute path a policy reads, e.g. `context.task.labels.ticket`.
 * `whole` is false when the policy only tests for presence (`has`), true when
 * it uses the value itself.
 */
export interface AttrPath {
  root: AttrRoot;
  attrs: readonly string[];
  whole: boolean;
}

const ROOTS = new Set<string>(['principal', 'resource', 'context']);

/**
 * The actions a policy's scope admits. `All` (or anything we do not
 * recognise) admits every action, which is always safe: a policy that cannot
 * match an action only costs time, never changes the decision.
 */
export function actionsOf(policy: PolicyJson): PolicyAction[] {
  const scope = policy.action;
  const uids =
    scope.op === '==' && 'entity' in scope
      ? [scope.entity]
      : scope.op === 'in' && 'entity' in scope
        ? [scope.entity]
        : scope.op === 'in' && 'entities' in scope
          ? scope.entities
          : undefined;
  if (!uids) return [...POLICY_ACTIONS];
  const ids = uids.map(actionId);
  if (ids.some((id) => id === undefined)) return [...POLICY_ACTIONS];
  // Without action groups in the schema, `in` is equality.
  return POLICY_ACTIONS.filter((a) => ids.includes(a));
}

/**
 * `Type::"id"` when the policy's resource scope is `resource == Type::"id"`,
 * else undefined (the policy may apply to any resource).
 */
export function resourceOf(policy: PolicyJson): string | undefined {
  const scope = policy.resource;
  if (scope.op !== '==' || !('entity' in scope)) return undefined;
  const u = '__entity' in scope.entity ? scope.entity.__entity : scope.entity;
  return resourceKey(u.type, u.id);
}

/** How resources are named in {@link resourceOf}. */
export const resourceKey = (type: string, id: string): string => `${type}::${JSON.stringify(id)}`;

function actionId(uid: EntityUidJson): string | undefined {
  const u = '__entity' in uid ? uid.__entity : uid;
  return u.type === 'Action' ? u.id : undefined;
}

/** Every attribute path read by the policy's conditions. */
export function attributePaths(policy: PolicyJson): AttrPath[] {
  const out: AttrPath[] = [];
  for (const clause of policy.conditions) walk(clause.body, out);
  return out;
}

/** `principal.a.b` → { root: principal, attrs: [a, b] }; anything else → undefined. */
function pathOf(e: Expr): { root: AttrRoot; attrs: string[] } | undefined {
  if ('Var' in e) return ROOTS.has(e.Var as string) ? { root: e.Var as AttrRoot, attrs: [] } : undefined;
  if ('.' in e) {
    const get = e['.'] as { left: Expr; attr: string };
    const inner = pathOf(get.left);
    return inner && { root: inner.root, attrs: [...inner.attrs, get.attr] };
  }
  return undefined;
}

function walk(e: Expr, out: AttrPath[]): void {
  const node = e as Record<string, unknown>;
  if ('Value' in node || 'Slot' in node) return;
  if ('Var' in node || '.' in node) {
    const p = pathOf(e);
    if (p) {
      out.push({ ...p, whole: true });
      return;
    }
    if ('.' in node) walk((node['.'] as { left: Expr }).left, out);
    return;
  }
  if ('has' in node) {
    const has = node.has as { left: Expr; attr: string | string[] };
    const p = pathOf(has.left);
    if (p) out.push({ root: p.root, attrs: [...p.attrs, ...(Array.isArray(has.attr) ? has.attr : [has.attr])], whole: false });
    else walk(has.left, out);
    return;
  }
  if ('like' in node) {
    walk((node.like as { left: Expr }).left, out);
    return;
  }
  if ('Record' in node) {
    for (const v of Object.values(node.Record as Record<string, Expr>)) walk(v, out);
    return;
  }
  // Every other node is { op: { left, right } | { arg } | { if, then, else } | { left, entity_type, in? } }
  // or an extension call { fn: [args] }: the sub-expressions are its object values.
  for (const payload of Object.values(node)) {
    const children = Array.isArray(payload) ? payload : Object.values(payload as Record<string, unknown>);
    for (const child of children) if (child !== null && typeof child === 'object') walk(child as Expr, out);
  }
}
