import { fields, noContent, ok, type Handler, type RequestContext, type Route } from '../context.ts';
import type { TokenEntry, VaultState } from '../state.ts';
import { badRequest, rfc3339, VaultHttpError } from '../util.ts';

/** Vault's system max TTL (768h) caps every token without a tighter limit. */
export const SYSTEM_MAX_TTL = 768 * 3600;

/** The `auth` block Vault returns for a token (login, create, renew). */
export function authBlock(state: VaultState, t: TokenEntry, clientToken = t.id): Record<string, unknown> {
  return {
    client_token: clientToken,
    accessor: t.accessor,
    policies: t.policies,
    token_policies: t.policies,
    metadata: t.meta,
    lease_duration: ttlLeft(state, t),
    renewable: t.renewable,
    entity_id: '',
    token_type: 'service',
    orphan: t.orphan,
    mfa_requirement: null,
    num_uses: t.numUses,
  };
}

const ttlLeft = (state: VaultState, t: TokenEntry): number =>
  t.expireAt === null ? 0 : Math.max(0, Math.round((t.expireAt - state.now()) / 1000));

/** `auth/token/lookup*` data (`id` is "" for lookup-accessor). */
function lookupData(state: VaultState, t: TokenEntry, showId: boolean): Record<string, unknown> {
  return {
    accessor: t.accessor,
    creation_time: Math.floor(t.creationTime / 1000),
    creation_ttl: t.creationTtl,
    display_name: t.displayName,
    entity_id: '',
    expire_time: t.expireAt === null ? null : rfc3339(t.expireAt),
    explicit_max_ttl: t.explicitMaxTtl,
    id: showId ? t.id : '',
    identity_policies: null,
    issue_time: rfc3339(t.creationTime),
    last_renewal_time: t.lastRenewal === null ? null : Math.floor(t.lastRenewal / 1000),
    meta: t.meta,
    num_uses: t.numUses,
    orphan: t.orphan,
    path: t.path,
    policies: t.policies,
    renewable: t.renewable,
    ttl: ttlLeft(state, t),
    type: 'service',
  };
}

/** Vault's display-name rule: "token-" + name, runs of other characters become "-". */
const displayName = (name: string | undefined): string =>
  name ? `token-${name}`.replace(/[^a-zA-Z0-9-]+/g, '-').replace(/-$/, '') : 'token';

const sortedPolicies = (policies: string[], addDefault: boolean): string[] =>
  [...new Set([...policies, ...(addDefault ? ['default'] : [])])].sort();

function create(orphanEndpoint: boolean): Handler {
  return (ctx) => {
    const f = fields(ctx, {
      id: 'string',
      policies: 'strings',
      meta: 'map',
      no_parent: 'bool',
      no_default_policy: 'bool',
      renewable: 'bool',
      ttl: 'duration',
      explicit_max_ttl: 'duration',
      display_name: 'string',
      num_uses: 'int',
      type: 'string',
      role_name: 'any',
      period: 'any',
      entity_alias: 'any',
      lease: 'any',
    });
    const parent = ctx.token!;
    const isRoot = parent.policies.includes('root');
    for (const unsupported of ['role_name', 'period', 'entity_alias', 'lease'] as const) {
      if (f[unsupported] !== undefined) throw badRequest(`emulator: ${unsupported} is not implemented`);
    }
    if (f.id !== undefined && !isRoot) throw badRequest('root or sudo privileges required to specify token id');
    if (f.id !== undefined) throw badRequest('emulator: custom token ids are not implemented');
    if (f.type !== undefined && f.type !== 'service') throw badRequest(`emulator: token type ${f.type} is not implemented`);
    if (f.no_parent && !isRoot) throw badRequest('root or sudo privileges required to create orphan token');
    if (f.num_uses !== undefined && f.num_uses < 0) throw badRequest('number of uses cannot be negative');

    // No policies given: the child inherits the parent's (minus root unless the parent is root).
    const requested = f.policies ?? parent.policies.filter((p) => p !== 'default');
    if (requested.includes('root') && !isRoot) throw badRequest('root tokens may not be created from a non-root token');
    if (!isRoot) {
      const extra = requested.filter((p) => p !== 'default' && !parent.policies.includes(p));
      if (extra.length) throw badRequest('child policies must be subset of parent');
    }
    const policies = sortedPolicies(requested, f.no_default_policy !== true);
    const unknownPolicies = policies.filter((p) => p !== 'root' && !ctx.state.policies.has(p));
    for (const p of unknownPolicies) ctx.warnings.push(`Policy "${p}" does not exist`);

    const explicitMax = f.explicit_max_ttl ?? 0;
    let ttl = f.ttl ?? 0;
    const rootChild = policies.includes('root') && ttl === 0;
    if (!rootChild) {
      if (ttl === 0) ttl = SYSTEM_MAX_TTL;
      if (explicitMax > 0 && ttl > explicitMax) {
        ctx.warnings.push(`explicit max TTL of ${explicitMax}s is less than TTL of ${ttl}s; TTL value is capped accordingly`);
        ttl = explicitMax;
      }
      ttl = Math.min(ttl, SYSTEM_MAX_TTL);
    }
    const now = ctx.state.now();
    const orphan = orphanEndpoint || f.no_parent === true;
    const t = ctx.state.mintToken({
      namespace: ctx.ns,
      policies,
      meta: f.meta && Object.keys(f.meta).length ? { ...f.meta } : null,
      displayName: displayName(f.display_name),
      numUses: f.num_uses ?? 0,
      creationTtl: rootChild ? 0 : ttl,
      expireAt: rootChild ? null : now + ttl * 1000,
      maxExpireAt: rootChild ? null : now + (explicitMax > 0 ? explicitMax : SYSTEM_MAX_TTL) * 1000,
      explicitMaxTtl: explicitMax,
      renewable: rootChild ? false : (f.renewable ?? true),
      orphan,
      parent: orphan ? null : parent.id,
      path: orphanEndpoint ? 'auth/token/create-orphan' : 'auth/token/create',
    });
    return ok({ auth: authBlock(ctx.state, t), mount_type: 'token' });
  };
}

/** Resolves the token a lookup/renew/revoke targets: by id or by accessor, within the request's namespace. */
function byId(ctx: RequestContext, id: string | undefined): TokenEntry | undefined {
  if (!id) throw badRequest('missing token');
  const t = ctx.state.tokens.get(id);
  return t && t.namespace === ctx.ns ? t : undefined;
}

function byAccessor(ctx: RequestContext, accessor: string | undefined): TokenEntry {
  if (!accessor) throw badRequest('missing accessor');
  const id = ctx.state.accessors.get(accessor);
  const t = id === undefined ? undefined : ctx.state.tokens.get(id);
  if (!t || t.namespace !== ctx.ns) throw badRequest('invalid accessor');
  return t;
}

/**
 * Renewal: the new TTL is the increment (or the original TTL), never past the
 * token's hard cap (explicit max TTL / the auth method's max TTL).
 */
function renew(ctx: RequestContext, t: TokenEntry, increment: number | undefined, clientToken: string) {
  if (!t.renewable) throw badRequest('lease is not renewable');
  const now = ctx.state.now();
  let ttl = increment && increment > 0 ? increment : t.creationTtl;
  if (t.maxExpireAt !== null && now + ttl * 1000 > t.maxExpireAt) {
    const capped = Math.max(0, Math.floor((t.maxExpireAt - now) / 1000));
    ctx.warnings.push(`TTL of "${ttl}s" exceeded the effective max_ttl of "${capped}s"; TTL value is capped accordingly`);
    ttl = capped;
  }
  t.expireAt = now + ttl * 1000;
  t.lastRenewal = now;
  return ok({ auth: authBlock(ctx.state, t, clientToken), mount_type: 'token' });
}

export const tokenRoutes: Route[] = [
  { pattern: /^auth\/token\/create$/, ops: { write: create(false) } },
  { pattern: /^auth\/token\/create-orphan$/, ops: { write: create(true) } },
  {
    pattern: /^auth\/token\/lookup-self$/,
    ops: {
      read: (ctx) => {
        fields(ctx, {});
        return ok({ data: lookupData(ctx.state, ctx.token!, true), mount_type: 'token' });
      },
      write: (ctx) => {
        fields(ctx, {});
        return ok({ data: lookupData(ctx.state, ctx.token!, true), mount_type: 'token' });
      },
    },
  },
  {
    pattern: /^auth\/token\/lookup$/,
    ops: {
      write: (ctx) => {
        const t = byId(ctx, fields(ctx, { token: 'string' }).token);
        // Vault answers a lookup of an unknown token with 403 "bad token".
        if (!t) throw new VaultHttpError(403, ['bad token']);
        return ok({ data: lookupData(ctx.state, t, true), mount_type: 'token' });
      },
    },
  },
  {
    pattern: /^auth\/token\/lookup-accessor$/,
    ops: {
      write: (ctx) =>
        ok({ data: lookupData(ctx.state, byAccessor(ctx, fields(ctx, { accessor: 'string' }).accessor), false), mount_type: 'token' }),
    },
  },
  {
    pattern: /^auth\/token\/renew-self$/,
    ops: { write: (ctx) => renew(ctx, ctx.token!, fields(ctx, { increment: 'duration' }).increment, ctx.token!.id) },
  },
  {
    pattern: /^auth\/token\/renew$/,
    ops: {
      write: (ctx) => {
        const f = fields(ctx, { token: 'string', increment: 'duration' });
        const t = byId(ctx, f.token);
        if (!t) throw badRequest('invalid token');
        return renew(ctx, t, f.increment, t.id);
      },
    },
  },
  {
    pattern: /^auth\/token\/renew-accessor$/,
    ops: {
      write: (ctx) => {
        const f = fields(ctx, { accessor: 'string', increment: 'duration' });
        return renew(ctx, byAccessor(ctx, f.accessor), f.increment, '');
      },
    },
  },
  {
    pattern: /^auth\/token\/revoke-self$/,
    ops: {
      write: (ctx) => {
        fields(ctx, {});
        ctx.state.revokeToken(ctx.token!.id);
        return noContent();
      },
    },
  },
  {
    pattern: /^auth\/token\/revoke$/,
    ops: {
      write: (ctx) => {
        const t = byId(ctx, fields(ctx, { token: 'string' }).token);
        if (t) ctx.state.revokeToken(t.id);
        return noContent();
      },
    },
  },
  {
    pattern: /^auth\/token\/revoke-accessor$/,
    ops: {
      write: (ctx) => {
        ctx.state.revokeToken(byAccessor(ctx, fields(ctx, { accessor: 'string' }).accessor).id);
        return noContent();
      },
    },
  },
  {
    pattern: /^auth\/token\/accessors\/?$/,
    ops: {
      list: (ctx) => {
        const keys = [...ctx.state.tokens.values()].filter((t) => t.namespace === ctx.ns).map((t) => t.accessor);
        return ok({ data: { keys }, mount_type: 'token' });
      },
    },
  },
];
