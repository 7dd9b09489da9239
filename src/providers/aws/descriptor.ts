import type { ProviderDescriptor } from '../types.ts';
import { type AwsRoleConfig, awsRoleSchema, awsSettingsSchema } from './config.ts';
import { refuseChaining } from './session-policy.ts';

/** AWS STS: a scope is an IAM action allowed by the session policy; a grant must list them. */
export const awsDescriptor: ProviderDescriptor<AwsRoleConfig> = {
  kind: 'aws',
  roleSchema: awsRoleSchema,
  settingsSchema: awsSettingsSchema,
  rotationTarget: 'aws',
  defaultScopes: () => undefined,
  allowedScopes: () => undefined,
  // A session policy with no action allows nothing, and no session policy would allow the whole role.
  needsScope: () => true,
  checkScopes: refuseChaining,
  async create(settings, ctx) {
    // The AWS SDK is loaded only when an aws provider is configured.
    const { createAwsProvider } = await import('./provider.ts');
    return createAwsProvider(awsSettingsSchema.parse(settings), ctx, {
      // Falling back to a TokenIssueTime cut-off also cuts off unrevoked sessions of the role: that must be evidence, not just a log line.
      onDenyFallback: (e) =>
        ctx.audit?.({
          action: 'aws.deny_fallback',
          actor: 'broker',
          decision: 'ok',
          reason: e.reason,
          detail: { roleArn: e.roleArn, cutoff: e.cutoff, droppedEntries: e.droppedEntries },
        }),
      // A fold also denies the folded task's (agent's) unrevoked sessions issued before its cut-off: evidence too.
      onDenyFold: (e) =>
        ctx.audit?.({
          action: 'aws.deny_fold',
          actor: 'broker',
          decision: 'ok',
          reason: e.reason,
          detail: {
            roleArn: e.roleArn,
            scope: e.scope,
            patterns: e.patterns,
            cutoff: e.cutoff,
            replacedEntries: e.replacedEntries,
            leaseIds: e.leaseIds,
            ...(e.agentKey !== undefined ? { agentKey: e.agentKey } : {}),
            ...(e.taskKey !== undefined ? { taskKey: e.taskKey } : {}),
            ...(e.agent !== undefined ? { agent: e.agent } : {}),
            ...(e.taskId !== undefined ? { taskId: e.taskId } : {}),
          },
        }),
      ...(ctx.clock ? { clock: ctx.clock } : {}),
    });
  },
};
