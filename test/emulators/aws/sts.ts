import { randomBytes } from 'node:crypto';
import { deflateRawSync } from 'node:zlib';
import { awsId, type Session } from './account.ts';
import { Constraints, intParam, listParam, onlyParams, type ActionContext, type Handler } from './action.ts';
import { accessDenied, AwsError, validationError } from './errors.ts';
import { parsePolicy } from './policy.ts';
import { el, isoSeconds } from './xml.ts';

const NAME_RE = /^[\w+=,.@-]*$/;
const NAME_SHOWN = '[\\w+=,.@-]*';
const TAG_RE = /^[\p{L}\p{Z}\p{N}_.:/=+\-@]*$/u;
const TAG_SHOWN = '[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]*';
const EXTERNAL_ID_RE = /^[\w+=,.@:/-]*$/;
const POLICY_CHARS_RE = /^[\u0009\u000A\u000D\u0020-\u00FF]+$/;
const ROLE_ARN_RE = /^arn:aws:iam::(\d{12}):role\/(?:[\w+=,.@-]+\/)*([\w+=,.@-]{1,64})$/;

/** STS AssumeRole with every documented parameter limit (protocols.md 2.3). */
const assumeRole: Handler = (ctx) => {
  const { params, account } = ctx;
  onlyParams('AssumeRole', params, [
    /^(RoleArn|RoleSessionName|DurationSeconds|Policy|ExternalId|SourceIdentity)$/,
    /^Tags(\.member\.\d+\.(Key|Value))?$/,
    /^TransitiveTagKeys(\.member\.\d+)?$/,
    /^PolicyArns$/,
  ]);
  const duration = intParam(params, 'DurationSeconds', 'durationSeconds');
  const tags = listParam(params, 'Tags').map((t) => ({ Key: t.Key ?? '', Value: t.Value ?? '' }));
  const transitive = listParam(params, 'TransitiveTagKeys').map((t) => t['']!);
  const c = new Constraints();
  c.required('roleArn', params.RoleArn);
  c.length('roleArn', params.RoleArn, 20, 2048);
  c.required('roleSessionName', params.RoleSessionName);
  c.length('roleSessionName', params.RoleSessionName, 2, 64);
  c.pattern('roleSessionName', params.RoleSessionName, NAME_RE, NAME_SHOWN);
  c.range('durationSeconds', duration, 900, 43_200);
  c.length('policy', params.Policy, 1, 2048);
  c.pattern('policy', params.Policy, POLICY_CHARS_RE, '[\\u0009\\u000A\\u000D\\u0020-\\u00FF]+');
  if (tags.length > 50)
    c.problems.push(`Value '[…]' at 'tags' failed to satisfy constraint: Member must have length less than or equal to 50`);
  tags.forEach((t, i) => {
    c.required(`tags.${i + 1}.member.key`, t.Key);
    c.length(`tags.${i + 1}.member.key`, t.Key, 1, 128);
    c.pattern(`tags.${i + 1}.member.key`, t.Key, TAG_RE, TAG_SHOWN);
    c.length(`tags.${i + 1}.member.value`, t.Value, 0, 256);
    c.pattern(`tags.${i + 1}.member.value`, t.Value, TAG_RE, TAG_SHOWN);
  });
  if (transitive.length > 50)
    c.problems.push(`Value '[…]' at 'transitiveTagKeys' failed to satisfy constraint: Member must have length less than or equal to 50`);
  transitive.forEach((k, i) => {
    c.length(`transitiveTagKeys.${i + 1}.member`, k, 1, 128);
    c.pattern(`transitiveTagKeys.${i + 1}.member`, k, TAG_RE, TAG_SHOWN);
  });
  c.length('externalId', params.ExternalId, 2, 1224);
  c.pattern('externalId', params.ExternalId, EXTERNAL_ID_RE, '[\\w+=,.@:\\/-]*');
  c.length('sourceIdentity', params.SourceIdentity, 2, 64);
  c.pattern('sourceIdentity', params.SourceIdentity, NAME_RE, NAME_SHOWN);
  c.check();

  const roleArn = params.RoleArn!;
  const m = ROLE_ARN_RE.exec(roleArn);
  if (!m) throw validationError([`${roleArn} is invalid`]);
  // A role of another account (cross-account AssumeRole): the session is that account's, judged by its IAM.
  const home = m[1] === account.accountId ? account : (ctx.peers?.get(m[1]!) ?? account);
  const role = home.roles.get(m[2]!);
  const callerArn = account.arnOf(ctx.principal);
  // Real STS does not tell a missing role from a forbidden one.
  const notAuthorized = () => accessDenied(`User: ${callerArn} is not authorized to perform: sts:AssumeRole on resource: ${roleArn}`);
  if (m[1] !== home.accountId || !role || role.arn !== roleArn) throw notAuthorized();
  account.authorize(ctx.principal, 'sts:AssumeRole', roleArn);
  if (role.trust && !role.trust.includes(callerArn)) throw notAuthorized();
  if (role.externalId !== undefined && params.ExternalId !== role.externalId) throw notAuthorized();

  const seconds = duration ?? 3600;
  if (ctx.principal.kind === 'session' && seconds > 3600)
    throw validationError(['The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.']);
  if (seconds > role.maxSessionDuration)
    throw new AwsError('ValidationError', 400, 'The requested DurationSeconds exceeds the MaxSessionDuration set for this role.');
  if (params.SourceIdentity?.toLowerCase().startsWith('aws:')) throw validationError(['SourceIdentity must not start with "aws:"']);
  const keys = new Set<string>();
  for (const t of tags) {
    const k = t.Key.toLowerCase();
    if (k.startsWith('aws:')) throw validationError(['Tag keys must not start with "aws:".']);
    if (keys.has(k)) throw validationError(['Duplicate tag keys found. Please note that Tag keys are case insensitive.']);
    keys.add(k);
  }
  for (const k of transitive) {
    if (!keys.has(k.toLowerCase())) throw validationError([`The transitive tag key ${k} is not one of the session tag keys.`]);
  }
  if (params.PolicyArns !== undefined && params.PolicyArns !== '')
    throw new AwsError('InvalidParameter', 400, 'Emulator: PolicyArns is not supported.');
  const policy = params.Policy === undefined ? undefined : parsePolicy(params.Policy);

  // AWS's packed format is undocumented; this stands in for it: compressed policy plus raw tag bytes.
  const packed =
    (params.Policy ? deflateRawSync(params.Policy).length : 0) +
    tags.reduce((n, t) => n + Buffer.byteLength(t.Key) + Buffer.byteLength(t.Value), 0) +
    transitive.reduce((n, k) => n + Buffer.byteLength(k), 0);
  const percent = Math.ceil((packed * 100) / ctx.packedPolicyLimit);
  if (percent > 100)
    throw new AwsError(
      'PackedPolicyTooLarge',
      400,
      `Packed size of the session policy and session tags is ${percent}% of the allowed limit.`,
    );

  const now = home.clock();
  const session: Session = {
    accessKeyId: awsId('ASIA', 16),
    secretAccessKey: randomBytes(30).toString('base64'),
    sessionToken: `IQoJb3JpZ2luX2VjE${randomBytes(180).toString('base64')}`,
    role,
    sessionName: params.RoleSessionName!,
    issuedAt: now,
    expiresAt: now + seconds * 1000,
    policy,
    policyText: params.Policy,
    tags,
    transitiveTagKeys: transitive,
    sourceIdentity: params.SourceIdentity,
    externalId: params.ExternalId,
    issuedTo: callerArn,
  };
  home.sessions.set(session.accessKeyId, session);
  const arn = `arn:aws:sts::${home.accountId}:assumed-role/${role.roleName}/${session.sessionName}`;
  return (
    el('SourceIdentity', session.sourceIdentity) +
    `<AssumedRoleUser>${el('Arn', arn)}${el('AssumedRoleId', `${role.roleId}:${session.sessionName}`)}</AssumedRoleUser>` +
    `<Credentials>${el('AccessKeyId', session.accessKeyId)}${el('SecretAccessKey', session.secretAccessKey)}${el('SessionToken', session.sessionToken)}${el('Expiration', isoSeconds(session.expiresAt))}</Credentials>` +
    el('PackedPolicySize', percent)
  );
};

/**
 * GetCallerIdentity. Deviation from AWS, on purpose: real STS answers it even
 * under an explicit Deny; the emulator applies the role's Deny statements to
 * it so a test can prove a revoked session is cut off with one cheap call.
 */
const getCallerIdentity: Handler = (ctx: ActionContext) => {
  onlyParams('GetCallerIdentity', ctx.params, []);
  const p = ctx.principal;
  if (p.kind === 'session' && ctx.account.evaluate(p.session, 'sts:GetCallerIdentity', '*') === 'explicit-deny') {
    throw accessDenied(
      `User: ${ctx.account.arnOf(p)} is not authorized to perform: sts:GetCallerIdentity with an explicit deny in an identity-based policy`,
    );
  }
  return el('Arn', ctx.account.arnOf(p)) + el('UserId', ctx.account.userIdOf(p)) + el('Account', ctx.account.accountId);
};

export const stsHandlers: Record<string, Handler> = { AssumeRole: assumeRole, GetCallerIdentity: getCallerIdentity };
