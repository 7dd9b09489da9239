import { fields, noContent, ok, type RequestContext, type Route } from '../context.ts';
import type { LeaseEntry } from '../state.ts';
import { badRequest, rfc3339 } from '../util.ts';

export const VERSION = '1.17.6';

function leaseFor(ctx: RequestContext, id: string | undefined): LeaseEntry | undefined {
  if (!id) throw badRequest('missing lease ID');
  const l = ctx.state.leases.get(id);
  return l && l.namespace === ctx.ns ? l : undefined;
}

/** The lease id comes from the body or, on the `/:lease_id` forms, the path. */
const leaseIdOf = (ctx: RequestContext, body: { lease_id?: string }): string | undefined => (ctx.params.id ? ctx.params.id : body.lease_id);

function lookup(ctx: RequestContext) {
  const l = leaseFor(ctx, fields(ctx, { lease_id: 'string' }).lease_id);
  if (!l) throw badRequest('invalid lease');
  const now = ctx.state.now();
  return ok(
    {
      data: {
        id: l.id,
        issue_time: rfc3339(l.issueTime),
        expire_time: rfc3339(l.expireAt),
        last_renewal_time: l.lastRenewal === null ? null : rfc3339(l.lastRenewal),
        renewable: l.renewable,
        ttl: Math.max(0, Math.round((l.expireAt - now) / 1000)),
      },
      mount_type: 'system',
    },
    true,
  );
}

function renew(ctx: RequestContext) {
  const f = fields(ctx, { lease_id: 'string', increment: 'duration', url_lease_id: 'string' });
  const l = leaseFor(ctx, leaseIdOf(ctx, f));
  if (!l) throw badRequest('lease not found');
  if (!l.renewable) throw badRequest('lease is not renewable');
  const now = ctx.state.now();
  const wanted = f.increment && f.increment > 0 ? f.increment : Math.round((l.expireAt - l.issueTime) / 1000);
  l.expireAt = Math.min(now + wanted * 1000, l.maxExpireAt);
  l.lastRenewal = now;
  return ok({ lease_id: l.id, renewable: true, lease_duration: Math.round((l.expireAt - now) / 1000), mount_type: 'system' });
}

/** Revoking an unknown lease is a no-op 204, as in Vault's expiration manager. */
function revoke(ctx: RequestContext) {
  const f = fields(ctx, { lease_id: 'string', sync: 'bool', url_lease_id: 'string' });
  const l = leaseFor(ctx, leaseIdOf(ctx, f));
  if (l) ctx.state.revokeLease(l.id);
  return noContent();
}

function revokePrefix(ctx: RequestContext) {
  fields(ctx, { sync: 'bool' });
  const prefix = ctx.params.prefix!;
  for (const l of [...ctx.state.leases.values()]) if (l.namespace === ctx.ns && l.id.startsWith(prefix)) ctx.state.revokeLease(l.id);
  return noContent();
}

/** `sys/health`: status code by state, overridable by query, raw body (no envelope). */
function health(ctx: RequestContext) {
  const q = ctx.query;
  const code = (name: string, dflt: number) => (q.has(name) ? Number(q.get(name)) : dflt);
  const sealedNow = ctx.state.sealed;
  const status = sealedNow ? code('sealedcode', 503) : code('activecode', 200);
  return {
    status,
    raw: {
      initialized: true,
      sealed: sealedNow,
      standby: false,
      performance_standby: false,
      replication_performance_mode: 'disabled',
      replication_dr_mode: 'disabled',
      server_time_utc: Math.floor(ctx.state.now() / 1000),
      version: VERSION,
      enterprise: false,
      ...(sealedNow ? {} : { cluster_name: 'vault-cluster-emulator', cluster_id: ctx.state.clusterId }),
    },
  };
}

function sealStatus(ctx: RequestContext) {
  const sealedNow = ctx.state.sealed;
  return {
    status: 200,
    raw: {
      type: 'shamir',
      initialized: true,
      sealed: sealedNow,
      t: 1,
      n: 1,
      progress: 0,
      nonce: '',
      version: VERSION,
      build_date: '2024-01-01T00:00:00Z',
      migration: false,
      recovery_seal: false,
      storage_type: 'inmem',
      ...(sealedNow ? {} : { cluster_name: 'vault-cluster-emulator', cluster_id: ctx.state.clusterId }),
    },
  };
}

export const sysRoutes: Route[] = [
  { pattern: /^sys\/health$/, unauthenticated: true, ops: { read: health } },
  { pattern: /^sys\/seal-status$/, unauthenticated: true, ops: { read: sealStatus } },
  { pattern: /^sys\/leases\/lookup$/, ops: { write: lookup } },
  { pattern: /^sys\/leases\/renew(?:\/(?<id>.+))?$/, ops: { write: renew } },
  { pattern: /^sys\/renew(?:\/(?<id>.+))?$/, ops: { write: renew } },
  { pattern: /^sys\/leases\/revoke(?:\/(?<id>.+))?$/, ops: { write: revoke } },
  { pattern: /^sys\/revoke(?:\/(?<id>.+))?$/, ops: { write: revoke } },
  { pattern: /^sys\/leases\/revoke-prefix\/(?<prefix>.+)$/, ops: { write: revokePrefix } },
  { pattern: /^sys\/revoke-prefix\/(?<prefix>.+)$/, ops: { write: revokePrefix } },
];
