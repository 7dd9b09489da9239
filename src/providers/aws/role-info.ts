import { performance } from 'node:perf_hooks';
import { GetRoleCommand } from '@aws-sdk/client-iam';
import type { Logger } from '../../logger.ts';
import type { AwsClients } from './clients.ts';
import { awsErrorCode } from './upstream.ts';

export interface RoleInfo {
  roleId: string;
  maxSessionDuration: number;
}

const TTL_MS = 5 * 60_000;

/** `arn:aws:iam::123:role/path/name` → `name` (IAM calls take the name, not the ARN). */
export function roleNameFromArn(roleArn: string): string {
  return roleArn
    .slice(roleArn.indexOf(':role/') + ':role/'.length)
    .split('/')
    .pop()!;
}

/** `arn:aws:iam::123456789012:role/name` → `123456789012`. */
export function accountFromArn(roleArn: string): string {
  return roleArn.split(':')[4] ?? '';
}

/**
 * IAM facts about a role (its RoleId and MaxSessionDuration), cached for a few
 * minutes. Optional by design: without iam:GetRole, or for a role in another
 * account, the answer is undefined and issuing carries on unclamped.
 */
export class RoleInfoCache {
  private readonly clients: AwsClients;
  private readonly logger: Logger;
  /**
   * `until` on the monotonic clock (performance.now()): with Date.now(), a wall clock stepped back an hour kept
   * a role's MaxSessionDuration (or a failed lookup) an hour past TTL_MS (test/providers/aws/caches-clock-step.test.ts).
   */
  private readonly cache = new Map<string, { info: RoleInfo | undefined; until: number }>();

  constructor(clients: AwsClients, logger: Logger) {
    this.clients = clients;
    this.logger = logger;
  }

  async get(roleArn: string): Promise<RoleInfo | undefined> {
    const hit = this.cache.get(roleArn);
    if (hit && hit.until > performance.now()) return hit.info;
    let info: RoleInfo | undefined;
    try {
      const out = await this.clients.current.iam.send(new GetRoleCommand({ RoleName: roleNameFromArn(roleArn) }));
      // A role of the same name in another account is not this one.
      if (out.Role?.Arn === roleArn && out.Role.RoleId)
        info = { roleId: out.Role.RoleId, maxSessionDuration: out.Role.MaxSessionDuration ?? 3600 };
    } catch (err) {
      this.logger.debug({ roleArn, code: awsErrorCode(err) }, "iam GetRole failed; issuing without the role's MaxSessionDuration");
    }
    this.cache.set(roleArn, { info, until: performance.now() + TTL_MS });
    return info;
  }
}
