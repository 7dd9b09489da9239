import { fields, noContent, ok, type RequestContext, type Route } from '../context.ts';
import { badRequest, base62, notFound, uuid } from '../util.ts';

/**
 * `database/creds/:name`: a new database user per read, with a lease owned by
 * the calling token. Revoking the lease (directly, or by revoking the token)
 * drops the user — `isDbUserValid` in the emulator shows it.
 */
function databaseCreds(ctx: RequestContext) {
  fields(ctx, {});
  const name = ctx.params.name!;
  const role = ctx.state.space(ctx.ns).dbRoles.get(name);
  if (!role) throw badRequest(`unknown role: ${name}`);
  const display = ctx.token!.displayName.replace(/[^a-zA-Z0-9-]/g, '-').slice(0, 8);
  const username = `v-${display}-${name.slice(0, 8)}-${base62(20).toLowerCase()}-${Math.floor(ctx.state.now() / 1000)}`;
  const password = `${base62(4)}-${uuid()}`;
  const lease = ctx.state.addLease(ctx.ns, ctx.path, ctx.token!.id, role.defaultTtl, role.maxTtl, true, () => {
    const u = ctx.state.dbUsers.get(username);
    if (u) u.valid = false;
  });
  ctx.state.dbUsers.set(username, { username, role: name, valid: true, leaseId: lease.id });
  return ok({
    lease_id: lease.id,
    renewable: true,
    lease_duration: role.defaultTtl,
    data: { username, password },
    mount_type: 'database',
  });
}

/**
 * `aws/creds/:name` and `aws/sts/:name`. iam_user leases are renewable and
 * revoking them deletes the key; STS-typed leases are not renewable, and
 * "revoking" them changes nothing on AWS — the emulator marks the key invalid
 * only for iam_user, to stay honest about that.
 */
function awsCreds(ctx: RequestContext, stsEndpoint: boolean) {
  const f = fields(ctx, { ttl: 'duration', role_arn: 'string', role_session_name: 'string', mfa_code: 'string' });
  const name = ctx.params.name!;
  const role = ctx.state.space(ctx.ns).awsRoles.get(name);
  if (!role) throw badRequest(`Role "${name}" not found`);
  const sts = role.credentialType !== 'iam_user';
  if (stsEndpoint && !sts) throw badRequest(`Can't generate STS credentials for a role that does not have an STS credential type`);
  if (!stsEndpoint && f.ttl !== undefined && !sts) throw badRequest('ttl is only valid for STS credential types');
  const ttl = f.ttl ?? role.defaultTtl;
  const accessKey = `${sts ? 'ASIA' : 'AKIA'}${base62(16).toUpperCase()}`;
  const lease = ctx.state.addLease(ctx.ns, ctx.path, ctx.token!.id, ttl, ttl, !sts, () => {
    const k = ctx.state.awsKeys.get(accessKey);
    if (k && !sts) k.valid = false;
  });
  ctx.state.awsKeys.set(accessKey, { accessKey, role: name, valid: true, leaseId: lease.id });
  return ok({
    lease_id: lease.id,
    renewable: !sts,
    lease_duration: ttl,
    mount_type: 'aws',
    data: {
      access_key: accessKey,
      secret_key: base62(40),
      session_token: sts ? base62(120) : null,
      arn: sts
        ? `arn:aws:sts::123456789012:assumed-role/${name}/vault-${base62(10)}`
        : `arn:aws:iam::123456789012:user/vault-${name}-${base62(8)}`,
    },
  });
}

/** KV v1 at `secret/`: a static secret store, so tests can use an issued token on a real path. */
const kvRoute: Route = {
  pattern: /^secret\/(?<key>.+)$/,
  ops: {
    read: (ctx) => {
      const data = ctx.state.space(ctx.ns).kv.get(ctx.params.key!);
      if (!data) throw notFound();
      return ok({ data, lease_duration: 2_764_800, mount_type: 'kv' });
    },
    write: (ctx) => {
      ctx.state.space(ctx.ns).kv.set(ctx.params.key!, { ...ctx.body });
      return noContent();
    },
    delete: (ctx) => {
      ctx.state.space(ctx.ns).kv.delete(ctx.params.key!);
      return noContent();
    },
  },
};

export const secretRoutes: Route[] = [
  kvRoute,
  { pattern: /^database\/creds\/(?<name>[\w.-]+)$/, ops: { read: databaseCreds } },
  { pattern: /^aws\/creds\/(?<name>[\w.-]+)$/, ops: { read: (c) => awsCreds(c, false), write: (c) => awsCreds(c, false) } },
  { pattern: /^aws\/sts\/(?<name>[\w.-]+)$/, ops: { read: (c) => awsCreds(c, true), write: (c) => awsCreds(c, true) } },
];
