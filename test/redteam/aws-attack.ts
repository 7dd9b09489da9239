import type { AwsEmulator } from '../emulators/aws/index.ts';
import { ORCH, call, type TestBroker } from '../helpers/broker.ts';
import { callerIdentityAs } from '../providers/aws/helpers.ts';

/**
 * What the AWS deny-list attacks share: calls that wait out the caller's rate
 * limit (the attacks need time, not speed), "does this session still work"
 * through the real STS client, and root tasks on the `reports-bucket` role.
 * `world` is read at call time (the broker and emulator start in beforeAll).
 */
export function awsAttack(world: () => { t: TestBroker; emu: AwsEmulator }) {
  async function paced(method: string, path: string, who: string, body?: unknown) {
    const { t } = world();
    for (;;) {
      const r = await call(t.url, method, path, t.as(who), body);
      if (r.status !== 429) return r;
      await new Promise((res) => setTimeout(res, 1000 * Number(r.headers.get('retry-after') ?? 1)));
    }
  }

  /** 'ok' when the session's keys still work, else the STS error code (AccessDenied once denied). */
  function whoAmI(c: Record<string, string>): Promise<string> {
    return callerIdentityAs(world().emu.url, {
      accessKeyId: c.AccessKeyId!,
      secretAccessKey: c.SecretAccessKey!,
      sessionToken: c.SessionToken!,
    });
  }

  const openRoot = (taskId: string, agent: string) =>
    paced('POST', '/v1/tasks', ORCH, {
      taskId,
      agent,
      tenant: 'acme',
      purpose: 'reports',
      ttlSeconds: 7200,
      grants: [{ role: 'reports-bucket', scopes: ['s3:GetObject'] }],
    });

  return { paced, whoAmI, openRoot };
}
