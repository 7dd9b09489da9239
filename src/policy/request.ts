import type { EntityJson, StatefulAuthorizationCall } from '@cedar-policy/cedar-wasm/nodejs';
import { isEmptyProjection, project, type Projections } from './projection.ts';
import type { PolicyRequest } from './types.ts';

/**
 * The Cedar call for a request: principal `Workload::"<identity>"` with its
 * attributes as an entity, resource `Role|Task|Broker::"<id>"`, and the
 * context, each reduced to what the action's policies can observe.
 */
export function toCedarCall(req: PolicyRequest, projections: Projections, preparsedPolicySetId: string): StatefulAuthorizationCall {
  const principal = { type: 'Workload', id: req.principal.id };
  const resource = { type: req.resource.type, id: req.resource.id };
  const entities: EntityJson[] = [];
  if (!isEmptyProjection(projections.principal)) {
    const { id, trust, kind, claims } = req.principal;
    entities.push({
      uid: principal,
      attrs: project({ id, trust, kind, claims }, projections.principal) as EntityJson['attrs'],
      parents: [],
    });
  }
  if (!isEmptyProjection(projections.resource)) {
    entities.push({ uid: resource, attrs: project({ id: req.resource.id }, projections.resource) as EntityJson['attrs'], parents: [] });
  }
  return {
    principal,
    action: { type: 'Action', id: req.action },
    resource,
    context: project(contextOf(req), projections.context) as StatefulAuthorizationCall['context'],
    entities,
    preparsedPolicySetId,
  };
}

/** Absent values stay absent (never defaulted): a policy that reads them errors, and errors never permit. */
function contextOf(req: PolicyRequest): Record<string, unknown> {
  const { task, ttlSeconds, scopes, approved, target } = req.context;
  const ctx: Record<string, unknown> = {};
  if (task) {
    ctx.task = {
      id: task.id,
      tenant: task.tenant,
      purpose: task.purpose,
      agent: task.agent,
      labels: task.labels,
      roles: task.roles,
      depth: task.depth,
      rootId: task.rootId,
      ...(task.parentId === undefined ? {} : { parentId: task.parentId }),
    };
  }
  if (ttlSeconds !== undefined) ctx.ttlSeconds = ttlSeconds;
  if (scopes !== undefined) ctx.scopes = scopes;
  if (approved !== undefined) ctx.approved = approved;
  if (target !== undefined) ctx.target = target;
  return ctx;
}
