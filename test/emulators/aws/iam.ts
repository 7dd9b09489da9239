import type { AccessKey, Role } from './account.ts';
import { Constraints, onlyParams, type ActionContext, type Handler } from './action.ts';
import { AwsError, noSuchEntity } from './errors.ts';
import { parsePolicy, policySize } from './policy.ts';
import { el, esc, isoSeconds, members } from './xml.ts';

/** Aggregate size of all inline policies of one role (IAM quota, whitespace not counted). */
export const ROLE_INLINE_POLICY_LIMIT = 10_240;

const NAME_RE = /^[\w+=,.@-]+$/;
const NAME_SHOWN = '[\\w+=,.@-]+';
const ACCESS_KEY_RE = /^[\w]+$/;

function roleFor(ctx: ActionContext, action: string): Role {
  const c = new Constraints();
  c.required('roleName', ctx.params.RoleName);
  c.length('roleName', ctx.params.RoleName, 1, 64);
  c.pattern('roleName', ctx.params.RoleName, NAME_RE, NAME_SHOWN);
  c.check();
  const role = ctx.account.role(ctx.params.RoleName!);
  ctx.account.authorize(ctx.principal, `iam:${action}`, role.arn);
  return role;
}

function policyName(ctx: ActionContext): string {
  const c = new Constraints();
  c.required('policyName', ctx.params.PolicyName);
  c.length('policyName', ctx.params.PolicyName, 1, 128);
  c.pattern('policyName', ctx.params.PolicyName, NAME_RE, NAME_SHOWN);
  c.check();
  return ctx.params.PolicyName!;
}

/** IAM returns policy documents URL-encoded (RFC 3986); SDK callers must decodeURIComponent them. */
const encodeDoc = (doc: string) => encodeURIComponent(doc);

const getRole: Handler = (ctx) => {
  onlyParams('GetRole', ctx.params, [/^RoleName$/]);
  const role = roleFor(ctx, 'GetRole');
  const trust = JSON.stringify({
    Version: '2012-10-17',
    Statement: [
      { Effect: 'Allow', Principal: { AWS: role.trust ?? `arn:aws:iam::${ctx.account.accountId}:root` }, Action: 'sts:AssumeRole' },
    ],
  });
  return (
    `<Role>${el('Path', role.path)}${el('RoleName', role.roleName)}${el('RoleId', role.roleId)}${el('Arn', role.arn)}` +
    `${el('CreateDate', isoSeconds(role.createDate))}${el('AssumeRolePolicyDocument', encodeDoc(trust))}${el('MaxSessionDuration', role.maxSessionDuration)}</Role>`
  );
};

const putRolePolicy: Handler = (ctx) => {
  onlyParams('PutRolePolicy', ctx.params, [/^(RoleName|PolicyName|PolicyDocument)$/]);
  const role = roleFor(ctx, 'PutRolePolicy');
  const name = policyName(ctx);
  const c = new Constraints();
  c.required('policyDocument', ctx.params.PolicyDocument);
  c.length('policyDocument', ctx.params.PolicyDocument, 1, 131_072);
  c.check();
  const doc = ctx.params.PolicyDocument!;
  parsePolicy(doc);
  let total = policySize(doc);
  for (const [other, text] of role.inlinePolicies) if (other !== name) total += policySize(text);
  if (total > ROLE_INLINE_POLICY_LIMIT) {
    throw new AwsError('LimitExceeded', 409, `Maximum policy size of ${ROLE_INLINE_POLICY_LIMIT} bytes exceeded for role ${role.roleName}`);
  }
  role.inlinePolicies.set(name, doc);
  return undefined;
};

const getRolePolicy: Handler = (ctx) => {
  onlyParams('GetRolePolicy', ctx.params, [/^(RoleName|PolicyName)$/]);
  const role = roleFor(ctx, 'GetRolePolicy');
  const name = policyName(ctx);
  const doc = role.inlinePolicies.get(name);
  if (doc === undefined) throw noSuchEntity(`The role policy with name ${name} cannot be found.`);
  return el('RoleName', role.roleName) + el('PolicyName', name) + el('PolicyDocument', encodeDoc(doc));
};

const deleteRolePolicy: Handler = (ctx) => {
  onlyParams('DeleteRolePolicy', ctx.params, [/^(RoleName|PolicyName)$/]);
  const role = roleFor(ctx, 'DeleteRolePolicy');
  const name = policyName(ctx);
  if (!role.inlinePolicies.delete(name)) throw noSuchEntity(`The role policy with name ${name} cannot be found.`);
  return undefined;
};

const listRolePolicies: Handler = (ctx) => {
  onlyParams('ListRolePolicies', ctx.params, [/^(RoleName|Marker|MaxItems)$/]);
  const role = roleFor(ctx, 'ListRolePolicies');
  return (
    members(
      'PolicyNames',
      [...role.inlinePolicies.keys()].sort().map((n) => esc(n)),
    ) + el('IsTruncated', false)
  );
};

/** The user an access-key call is about: UserName, else the caller's own user (IAM's rule). */
function keyOwner(ctx: ActionContext, action: string): string {
  const c = new Constraints();
  c.length('userName', ctx.params.UserName, 1, 128);
  c.pattern('userName', ctx.params.UserName, NAME_RE, NAME_SHOWN);
  c.check();
  const p = ctx.principal;
  const userName = ctx.params.UserName ?? (p.kind === 'user' ? p.user.userName : undefined);
  if (!userName) throw new AwsError('ValidationError', 400, 'Must specify userName when calling with non-User credentials');
  const user = ctx.account.users.get(userName);
  if (!user) throw noSuchEntity(`The user with name ${userName} cannot be found.`);
  ctx.account.authorize(p, `iam:${action}`, user.arn);
  return userName;
}

function keyOf(ctx: ActionContext, userName: string): AccessKey {
  const c = new Constraints();
  c.required('accessKeyId', ctx.params.AccessKeyId);
  c.length('accessKeyId', ctx.params.AccessKeyId, 16, 128);
  c.pattern('accessKeyId', ctx.params.AccessKeyId, ACCESS_KEY_RE, '[\\w]+');
  c.check();
  const key = ctx.account.keys.get(ctx.params.AccessKeyId!);
  if (!key || key.userName !== userName) throw noSuchEntity(`The Access Key with id ${ctx.params.AccessKeyId} cannot be found.`);
  return key;
}

const createAccessKey: Handler = (ctx) => {
  onlyParams('CreateAccessKey', ctx.params, [/^UserName$/]);
  const key = ctx.account.createAccessKey(keyOwner(ctx, 'CreateAccessKey'), ctx.keyPropagationDelay);
  return (
    `<AccessKey>${el('UserName', key.userName)}${el('AccessKeyId', key.accessKeyId)}${el('Status', key.status)}` +
    `${el('SecretAccessKey', key.secretAccessKey)}${el('CreateDate', isoSeconds(key.createDate))}</AccessKey>`
  );
};

const updateAccessKey: Handler = (ctx) => {
  onlyParams('UpdateAccessKey', ctx.params, [/^(UserName|AccessKeyId|Status)$/]);
  const key = keyOf(ctx, keyOwner(ctx, 'UpdateAccessKey'));
  const status = ctx.params.Status;
  if (status !== 'Active' && status !== 'Inactive') {
    throw new AwsError(
      'ValidationError',
      400,
      `1 validation error detected: Value '${status}' at 'status' failed to satisfy constraint: Member must satisfy enum value set: [Active, Inactive]`,
    );
  }
  key.status = status;
  return undefined;
};

const deleteAccessKey: Handler = (ctx) => {
  onlyParams('DeleteAccessKey', ctx.params, [/^(UserName|AccessKeyId)$/]);
  const key = keyOf(ctx, keyOwner(ctx, 'DeleteAccessKey'));
  ctx.account.keys.delete(key.accessKeyId);
  return undefined;
};

const listAccessKeys: Handler = (ctx) => {
  onlyParams('ListAccessKeys', ctx.params, [/^(UserName|Marker|MaxItems)$/]);
  const userName = keyOwner(ctx, 'ListAccessKeys');
  const keys = [...ctx.account.keys.values()].filter((k) => k.userName === userName);
  return (
    members(
      'AccessKeyMetadata',
      keys.map(
        (k) =>
          `${el('UserName', k.userName)}${el('AccessKeyId', k.accessKeyId)}${el('Status', k.status)}${el('CreateDate', isoSeconds(k.createDate))}`,
      ),
    ) + el('IsTruncated', false)
  );
};

export const iamHandlers: Record<string, Handler> = {
  GetRole: getRole,
  PutRolePolicy: putRolePolicy,
  GetRolePolicy: getRolePolicy,
  DeleteRolePolicy: deleteRolePolicy,
  ListRolePolicies: listRolePolicies,
  CreateAccessKey: createAccessKey,
  UpdateAccessKey: updateAccessKey,
  DeleteAccessKey: deleteAccessKey,
  ListAccessKeys: listAccessKeys,
};
