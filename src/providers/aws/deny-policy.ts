/** ISO-8601 at whole seconds, the form IAM date conditions use. */
export const isoSeconds = (ms: number) => new Date(Math.floor(ms / 1000) * 1000).toISOString().replace('.000Z', 'Z');

/**
 * The broker-managed inline Deny policy on a role (protocols.md 2.8): one
 * statement denying everything to the revoked sessions by `aws:userid`
 * (`ROLEID:<session>`), and, after an overflow, one denying every session
 * issued before a cut-off by `aws:TokenIssueTime`. Undefined = no policy.
 */
export function denyPolicyDocument(userIds: readonly string[], cutoffMs: number | undefined): string | undefined {
  const statements: unknown[] = [];
  if (userIds.length > 0) {
    statements.push({
      Sid: 'DenyRevokedSessions',
      Effect: 'Deny',
      Action: '*',
      Resource: '*',
      Condition: { StringEquals: { 'aws:userid': [...userIds].sort() } },
    });
  }
  if (cutoffMs !== undefined) {
    statements.push({
      Sid: 'DenyOlderSessions',
      Effect: 'Deny',
      Action: '*',
      Resource: '*',
      Condition: { DateLessThan: { 'aws:TokenIssueTime': isoSeconds(cutoffMs) } },
    });
  }
  return statements.length === 0 ? undefined : JSON.stringify({ Version: '2012-10-17', Statement: statements });
}
