import type { PolicyDecision, PolicyEngine, PolicyRequest } from './types.ts';

/**
 * Labels a sub-task added can only narrow (docs/policy.md, "Delegation").
 *
 * Why: a sub-task may add label keys its parent lacks, and under a policy
 * that permits on the presence of a label (`context.task.labels has
 * approved`) a new key would widen: an agent could approve itself by opening
 * a sub-task with that label. So when delegation added labels, the request is
 * asked twice, with all the task's labels and with only those the root task's
 * orchestrator set, and permitted only if both are. A forbid that matches
 * an added label still denies (the first question).
 */
export function authorizeNarrowing(engine: PolicyEngine, req: PolicyRequest): PolicyDecision & { delegatedLabels?: true } {
  const full = engine.authorize(req);
  const task = req.context.task;
  if (!full.allowed || !task?.orchestratorLabels) return full;
  const rootOnly = engine.authorize({ ...req, context: { ...req.context, task: { ...task, labels: task.orchestratorLabels } } });
  if (rootOnly.allowed) return { ...full, policies: [...new Set([...full.policies, ...rootOnly.policies])] };
  return { ...rootOnly, delegatedLabels: true };
}
