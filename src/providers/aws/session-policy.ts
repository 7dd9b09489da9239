import { badRequest } from '../../errors.ts';

/** STS's limit for the plaintext of an inline session policy. */
export const SESSION_POLICY_MAX_CHARS = 2048;

/** An IAM action as a scope: `service:Action`, wildcards allowed (`s3:Get*`). */
const IAM_ACTION = /^[a-zA-Z0-9-]+:[A-Za-z0-9*?]+$/;

/**
 * Actions that let a session escape the deny that ends its task, refused as scopes, by service (IAM matches
 * both parts case-insensitively).
 *
 * STS: a new credential made from this session. A chained session gets a name and a lifetime the agent picks,
 * and no session policy unless the agent adds one: the deny that ends a task (by session name) does not reach
 * it, so it could outlive the task with the role's full permissions. The same holds for `GetWebIdentityToken`
 * (an AWS-signed JWT of this identity, good for up to 1 h at external services, which an IAM deny never
 * reaches) and `GetDelegatedAccessToken` (credentials of another principal, traded for a token, outside the
 * broker's session names).
 *
 * IAM: a long-lived credential of an IAM user (an access key, a console password, a service-specific
 * credential, an SSH or signing key), which lives until someone deletes it; and the role's own policies, where
 * the broker's deny lives (`PutRolePolicy` overwrites it, `DeleteRolePolicy` removes it) and whom it trusts
 * (`UpdateAssumeRolePolicy`: anyone, later), or a new role that trusts anyone from the start (`CreateRole`: its
 * trust policy is written when it is made; `AttachRolePolicy` then gives it what it needs, and it lives on,
 * outside any deny of the broker's). The role's permissions should not allow these either; refusing
 * the scope keeps an agent from being granted them by a grant that says `iam:*`.
 */
const ESCAPING: Record<string, readonly string[]> = {
  sts: [
    'AssumeRole',
    'AssumeRoleWithSAML',
    'AssumeRoleWithWebIdentity',
    'AssumeRoot',
    'GetFederationToken',
    'GetWebIdentityToken',
    'GetDelegatedAccessToken',
  ],
  iam: [
    'CreateAccessKey',
    'CreateLoginProfile',
    'UpdateLoginProfile',
    'CreateServiceSpecificCredential',
    'ResetServiceSpecificCredential',
    'UploadSSHPublicKey',
    'UploadSigningCertificate',
    'PutRolePolicy',
    'DeleteRolePolicy',
    'UpdateAssumeRolePolicy',
    'CreateRole',
  ],
};

/** Whether a scope (an IAM action pattern; IAM matches actions case-insensitively) covers one of {@link ESCAPING}. */
function chains(scope: string): boolean {
  const [service = '', action = ''] = scope.split(':');
  const actions = Object.hasOwn(ESCAPING, service.toLowerCase()) ? ESCAPING[service.toLowerCase()]! : [];
  if (actions.length === 0) return false;
  const glob = new RegExp(`^${action.replace(/[*?]/g, (c) => (c === '*' ? '.*' : '.'))}$`, 'i');
  return actions.some((a) => glob.test(a));
}

/** 400 invalid_scope for scopes that would let a session escape its task's end (checked when a task opens and at issuance). */
export function refuseChaining(scopes: readonly string[]): void {
  const chaining = scopes.filter(chains);
  if (chaining.length > 0)
    throw badRequest(
      'invalid_scope',
      `Scopes may not let the session assume a role, mint a credential of its own or change the role's policies (${chaining.join(', ')}): it would outlive the task and escape its revocation.`,
    );
}

/** IAM's date form, to the second, rounded up. */
const iamDate = (ms: number) => new Date(Math.ceil(ms / 1000) * 1000).toISOString().replace('.000Z', 'Z');

/**
 * The inline session policy for a credential: Allow the granted scopes (IAM
 * actions) on the role's resources, in one statement, only before `notAfter`.
 * STS intersects it with the role's own permissions, so the session can do at
 * most what both allow. `notAfter` is the earlier of the task's deadline and
 * the latest the broker's record promised the session could live (the intent's
 * `expiresAt`), plus the clock-skew margin: a session is useless once its task
 * is over (STS's 900-s minimum may outlast the task), even while IAM is
 * unreachable and no deny can be written; and a session STS makes later than
 * planned, after a stall that outlasted the issuance's orphan deadline, is
 * useless once the deny written when the issuance was given up lapses.
 * Too large for STS is the caller's problem (too many scopes or resources), so
 * it is a 400 here rather than a 502 from upstream.
 */
export function sessionPolicy(scopes: readonly string[], resources: readonly string[], notAfter: number): string {
  // Without a session policy the session would get all of the role's permissions: never.
  if (scopes.length === 0)
    throw badRequest('scopes_empty', 'An aws credential needs at least one scope (an IAM action such as s3:GetObject).');
  const bad = scopes.filter((s) => !IAM_ACTION.test(s));
  if (bad.length > 0) throw badRequest('invalid_scope', `Scopes for aws roles are IAM actions like s3:GetObject; not: ${bad.join(', ')}.`);
  refuseChaining(scopes);
  const allow = { Effect: 'Allow', Action: [...new Set(scopes)].sort(), Resource: [...new Set(resources)] };
  const bounded = JSON.stringify({
    Version: '2012-10-17',
    Statement: [{ ...allow, Condition: { DateLessThan: { 'aws:CurrentTime': iamDate(notAfter) } } }],
  });
  if (bounded.length <= SESSION_POLICY_MAX_CHARS) return bounded;
  // The deadline costs ~70 characters: a policy that fits STS without it is still issued (as before the
  // deadline existed), its late-session cover then being the give-up's deny alone (docs/providers/aws.md).
  const policy = JSON.stringify({ Version: '2012-10-17', Statement: [allow] });
  if (policy.length > SESSION_POLICY_MAX_CHARS) {
    throw badRequest(
      'policy_too_large',
      `The session policy for these scopes and resources is ${policy.length} characters; STS allows ${SESSION_POLICY_MAX_CHARS}. Request fewer scopes.`,
    );
  }
  return policy;
}
