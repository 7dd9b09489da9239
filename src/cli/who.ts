import { tokenSource } from '../client/token-source.ts';

/**
 * The refusals whose cause is usually the identity the caller used: a step of the getting-started guide run with
 * the orchestrator's token instead of the agent's (or the other way round). Naming that identity is what gets a
 * person unstuck; the broker's detail cannot, as it never echoes the caller's identity.
 */
export const WHO_MATTERS = new Set([
  'not_orchestrator',
  'not_task_agent',
  'not_parent_agent',
  'not_task_orchestrator',
  'not_task_party',
  'not_lease_party',
  'not_approval_party',
  'not_approver',
  'not_admin',
]);

/**
 * The identity string the caller's token is for, read from its payload without verifying it: only to show the
 * person who they are, never to decide anything (the broker verified it). `<iss>#<sub>` for OIDC, the SPIFFE ID
 * for an SVID; undefined when the token cannot be read, so a hint never hides the refusal itself.
 */
export async function identityOf(tokenFile: string | undefined, env: NodeJS.ProcessEnv): Promise<string | undefined> {
  try {
    const jwt = await tokenSource({ tokenFile, env })();
    const claims = JSON.parse(Buffer.from(jwt.split('.')[1] ?? '', 'base64url').toString('utf8')) as { iss?: unknown; sub?: unknown };
    if (typeof claims.sub !== 'string' || !claims.sub) return undefined;
    if (claims.sub.startsWith('spiffe://')) return claims.sub;
    return typeof claims.iss === 'string' ? `${claims.iss}#${claims.sub}` : undefined;
  } catch {
    return undefined;
  }
}
