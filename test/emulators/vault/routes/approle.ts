import { fields, noContent, ok, type Reply, type RequestContext, type Route } from '../context.ts';
import type { AppRoleEntry, AppRoleSecretId } from '../state.ts';
import { badRequest, multiError, rfc3339, unsupportedPath, uuid, VaultHttpError } from '../util.ts';
import { authBlock } from './token.ts';

const NEVER = '0001-01-01T00:00:00Z';

/** The role named in the path, in a mounted AppRole backend of the request's namespace. */
function role(ctx: RequestContext): AppRoleEntry {
  const space = ctx.state.space(ctx.ns);
  const mount = ctx.params.mount!;
  if (!space.approleMounts.has(mount)) throw unsupportedPath();
  const r = space.approles.get(`${mount}/${ctx.params.role}`);
  // Vault: reading an unknown role's sub-paths answers 400 "role ... does not exist".
  if (!r) throw badRequest(`role "${ctx.params.role}" does not exist`);
  return r;
}

function mountOf(ctx: RequestContext): string {
  const mount = ctx.params.mount!;
  if (mount === 'token' || !ctx.state.space(ctx.ns).approleMounts.has(mount)) throw unsupportedPath();
  return mount;
}

/** Mints a secret-id under a role (also used by the emulator's test helpers). */
export function generateSecretId(
  now: number,
  r: AppRoleEntry,
  opts: { ttl?: number; numUses?: number; metadata?: Record<string, string>; cidrList?: string[]; secretId?: string } = {},
): AppRoleSecretId {
  const ttl = opts.ttl ?? r.secretIdTtl;
  const entry: AppRoleSecretId = {
    secretId: opts.secretId ?? uuid(),
    accessor: uuid(),
    creationTime: now,
    expireAt: ttl > 0 ? now + ttl * 1000 : null,
    numUses: opts.numUses ?? r.secretIdNumUses,
    metadata: opts.metadata ?? {},
    cidrList: opts.cidrList ?? [],
  };
  r.secretIds.set(entry.secretId, entry);
  return entry;
}

function secretIdData(s: AppRoleSecretId): Record<string, unknown> {
  const ttl = s.expireAt === null ? 0 : Math.round((s.expireAt - s.creationTime) / 1000);
  return {
    cidr_list: s.cidrList,
    creation_time: rfc3339(s.creationTime),
    expiration_time: s.expireAt === null ? NEVER : rfc3339(s.expireAt),
    last_updated_time: rfc3339(s.creationTime),
    metadata: s.metadata,
    secret_id_accessor: s.accessor,
    secret_id_num_uses: s.numUses,
    secret_id_ttl: ttl,
    token_bound_cidrs: [],
  };
}

const findByAccessor = (r: AppRoleEntry, accessor: string) => [...r.secretIds.values()].find((s) => s.accessor === accessor);

/** The role and the secret-id named by the request's `secret_id_accessor` (lookup and destroy by accessor). */
function secretIdByAccessor(ctx: RequestContext) {
  const r = role(ctx);
  const { secret_id_accessor } = fields(ctx, { secret_id_accessor: 'string' });
  if (!secret_id_accessor) throw badRequest('missing secret_id_accessor');
  const s = findByAccessor(r, secret_id_accessor);
  if (!s) throw accessorMissing(secret_id_accessor);
  return { r, s };
}

const accessorMissing = (accessor: string) =>
  new VaultHttpError(404, [`failed to find accessor entry for secret_id_accessor: "${accessor}"`]);

/**
 * `secret-id` (Vault chooses it) and `custom-secret-id` (the caller does), one handler as in Vault
 * (handleRoleSecretIDCommon): same fields besides `secret_id`, same answer.
 */
function createSecretId(ctx: RequestContext, custom: boolean): Reply {
  const common = { metadata: 'string', cidr_list: 'strings', token_bound_cidrs: 'strings', num_uses: 'int', ttl: 'duration' } as const;
  const f = custom ? fields(ctx, { ...common, secret_id: 'string' }) : fields(ctx, common);
  const secretId = custom ? (f as { secret_id?: string }).secret_id : undefined;
  if (custom && !secretId) throw badRequest('missing secret_id');
  const r = role(ctx);
  // Vault answers registerSecretIDEntry's error as an internal one: a 500, not a 400.
  if (secretId !== undefined && r.secretIds.has(secretId))
    throw new VaultHttpError(500, [multiError('failed to store secret_id: SecretID is already registered')]);
  let metadata: Record<string, string> = {};
  if (f.metadata !== undefined) {
    try {
      metadata = JSON.parse(f.metadata) as Record<string, string>;
    } catch {
      throw badRequest('failed to parse metadata: invalid JSON');
    }
  }
  const s = generateSecretId(ctx.state.now(), r, {
    ttl: f.ttl,
    numUses: f.num_uses,
    metadata,
    cidrList: f.cidr_list,
    ...(secretId !== undefined ? { secretId } : {}),
  });
  return ok({
    data: {
      secret_id_accessor: s.accessor,
      secret_id: s.secretId,
      secret_id_ttl: s.expireAt === null ? 0 : Math.round((s.expireAt - s.creationTime) / 1000),
      secret_id_num_uses: s.numUses,
    },
    mount_type: 'approle',
  });
}

export const approleRoutes: Route[] = [
  {
    pattern: /^auth\/(?<mount>[\w-]+)\/login$/,
    unauthenticated: true,
    ops: {
      write: (ctx) => {
        const mount = mountOf(ctx);
        const f = fields(ctx, { role_id: 'string', secret_id: 'string' });
        if (!f.role_id) throw badRequest('missing role_id');
        const space = ctx.state.space(ctx.ns);
        const r = [...space.approles.values()].find((x) => x.mount === mount && x.roleId === f.role_id);
        if (!r) throw badRequest('invalid role or secret ID');
        if (!f.secret_id) throw badRequest('missing secret_id');
        const s = r.secretIds.get(f.secret_id);
        if (!s) throw badRequest('invalid role or secret ID');
        if (s.numUses > 0 && --s.numUses === 0) r.secretIds.delete(s.secretId);
        const now = ctx.state.now();
        const t = ctx.state.mintToken({
          namespace: ctx.ns,
          policies: [...new Set([...r.policies, 'default'])].sort(),
          meta: { role_name: r.name },
          displayName: mount,
          numUses: 0,
          creationTtl: r.tokenTtl,
          expireAt: now + r.tokenTtl * 1000,
          maxExpireAt: now + r.tokenMaxTtl * 1000,
          explicitMaxTtl: 0,
          renewable: true,
          orphan: true,
          parent: null,
          path: `auth/${mount}/login`,
        });
        return ok({ auth: authBlock(ctx.state, t), mount_type: 'approle' });
      },
    },
  },
  {
    pattern: /^auth\/(?<mount>[\w-]+)\/role\/(?<role>[\w.-]+)\/role-id$/,
    ops: { read: (ctx) => ok({ data: { role_id: role(ctx).roleId }, mount_type: 'approle' }) },
  },
  {
    pattern: /^auth\/(?<mount>[\w-]+)\/role\/(?<role>[\w.-]+)\/secret-id\/?$/,
    ops: {
      write: (ctx) => createSecretId(ctx, false),
      list: (ctx) => {
        const keys = [...role(ctx).secretIds.values()].map((s) => s.accessor);
        if (!keys.length) throw new VaultHttpError(404, []);
        return ok({ data: { keys }, mount_type: 'approle' });
      },
    },
  },
  {
    pattern: /^auth\/(?<mount>[\w-]+)\/role\/(?<role>[\w.-]+)\/custom-secret-id$/,
    ops: { write: (ctx) => createSecretId(ctx, true) },
  },
  {
    pattern: /^auth\/(?<mount>[\w-]+)\/role\/(?<role>[\w.-]+)\/secret-id\/lookup$/,
    ops: {
      write: (ctx) => {
        const r = role(ctx);
        const { secret_id } = fields(ctx, { secret_id: 'string' });
        if (!secret_id) throw badRequest('missing secret_id');
        const s = r.secretIds.get(secret_id);
        // Vault returns no response (204) for an unknown secret-id.
        return s ? ok({ data: secretIdData(s), mount_type: 'approle' }) : noContent();
      },
    },
  },
  {
    pattern: /^auth\/(?<mount>[\w-]+)\/role\/(?<role>[\w.-]+)\/secret-id\/destroy$/,
    ops: {
      write: (ctx) => {
        const r = role(ctx);
        const { secret_id } = fields(ctx, { secret_id: 'string' });
        if (!secret_id) throw badRequest('missing secret_id');
        r.secretIds.delete(secret_id);
        return noContent();
      },
    },
  },
  {
    pattern: /^auth\/(?<mount>[\w-]+)\/role\/(?<role>[\w.-]+)\/secret-id-accessor\/lookup$/,
    ops: {
      write: (ctx) => {
        const { s } = secretIdByAccessor(ctx);
        return ok({ data: secretIdData(s), mount_type: 'approle' });
      },
    },
  },
  {
    pattern: /^auth\/(?<mount>[\w-]+)\/role\/(?<role>[\w.-]+)\/secret-id-accessor\/destroy$/,
    ops: {
      write: (ctx) => {
        const { r, s } = secretIdByAccessor(ctx);
        r.secretIds.delete(s.secretId);
        return noContent();
      },
    },
  },
];
