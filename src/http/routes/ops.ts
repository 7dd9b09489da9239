import { type RequestHandler, Router } from 'express';
import { z } from 'zod';
import type { Deps } from '../../deps.ts';
import { writableMaster } from '../../redis/connection.ts';
import { identityPatternSchema } from '../../config/common.ts';
import type { Services } from '../services.ts';
import { identityOf, jsonBody, validBody, validQuery } from '../middleware.ts';
import { chargeReads } from '../read-cost.ts';
import { nfcText, paging, rotateSchema } from '../schemas.ts';
import { SharedReading } from '../../shared-reading.ts';

/**
 * How long one Redis probe of /readyz (ROLE and a write, or CLUSTER INFO) answers every probe of this
 * instance (ms). /readyz is unauthenticated: without this each request was two Redis commands. With it a
 * flood costs one probe a second, and /readyz answers 503 at most REDIS_PROBE_MS plus the probe's own 1 s
 * deadline (about 2 s) after Redis stops answering or taking writes.
 */
export const REDIS_PROBE_MS = 1000;

/**
 * /healthz (the process is alive: never depends on Redis, so a Redis outage
 * does not get every container restarted), /readyz (the broker can issue:
 * Redis reachable and writable and suited to the broker (noeviction, every
 * command its ACL user needs), signing keys present, policy loaded; an
 * upstream being down is reported but does not take JWT traffic out of
 * rotation), /metrics.
 */
export function opsRoutes(
  deps: Deps,
  state: {
    isShuttingDown: () => boolean;
    isRecovered: () => boolean;
    policyInSync?: () => boolean;
    redisProblems?: () => Promise<string[]>;
  },
): Router {
  const r = Router();
  // /readyz is unauthenticated and probed often: one upstream round (Vault sys/health...) per UPSTREAM_CHECK_MS,
  // shared by concurrent probes and with /metrics' jit_upstream_up, so a flood of either is never a flood of the
  // upstreams. A round never rejects (an upstream that fails or does not answer in 1 s is `false`).
  deps.metrics.upstreamsSource ??= () => deps.providers.readiness();
  const upstreamRounds = deps.metrics.readings.upstreams;
  // Concurrent probes share one; writableMaster never throws (a Redis that does not answer in 1 s is `false`).
  const redisProbe = new SharedReading(REDIS_PROBE_MS, () =>
    writableMaster(deps.redis, { timeoutMs: 1000, probeKey: deps.keys.plain('readyz', 'probe') }),
  );
  r.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  r.get('/readyz', async (_req, res) => {
    const checks: Record<string, boolean> = {
      config: true,
      // Loaded, and the set the last reload announced (an instance left behind decides under a replaced set).
      policy: deps.policy.version !== '' && (state.policyInSync?.() ?? true),
      accepting: !state.isShuttingDown(),
      signingKeys: state.isRecovered() && deps.signing.size > 0,
    };
    // A writable master (a replica left behind by a failover is not ready), within a second (REDIS_PROBE_MS).
    // An evicting policy, an ACL that lost a command: the broker would lose records or fail every request.
    const [writable, problems] = await Promise.all([redisProbe.get(), state.redisProblems?.() ?? []]);
    checks.redis = writable.value === true;
    checks.redisSetup = problems.length === 0;
    const upstreams = (await upstreamRounds.get()).value ?? {};
    // An upstream that is down is reported only; one that refuses this instance's own credentials makes it unready.
    checks.upstreamCredentials = !deps.providers.all().some(([, p]) => p.credentialsRefused?.());
    const ready = Object.values(checks).every(Boolean);
    res
      .status(ready ? 200 : 503)
      .json({ status: ready ? 'ready' : 'not_ready', checks, upstreams, ...(problems.length ? { problems } : {}) });
  });
  r.get('/metrics', async (_req, res) => {
    res.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics());
  });
  return r;
}

const revokeSchema = z.union([
  z.strictObject({ agent: identityPatternSchema }),
  z.strictObject({ tenant: nfcText(128) }),
  z.strictObject({ taskId: z.string().min(1).max(512) }),
]);
/** The reload takes no fields; an optional body is any JSON object (docs/openapi.yaml), not an array. */
const reloadSchema = z.looseObject({});
const quarantineSchema = z.strictObject({ agent: identityPatternSchema, reason: z.string().min(1).max(1024) });
/** Paged like every list (contract section 3): `?limit=` 1-500, default 50, and `?cursor=`. */
const quarantineQuery = z.strictObject(paging);

/** `GET /v1/admin/audit/seals` takes no parameters. */
const noQuery = z.strictObject({});

/**
 * /v1/admin: rotation, policy reload, kill switch, quarantine (admins; policy for rotate).
 * `authenticate` sets the caller's identity (a workload JWT, or a console session).
 */
export function adminRoutes(deps: Deps, s: Services, authenticate: RequestHandler): Router {
  const r = Router();
  const admin = [authenticate, ...jsonBody(deps.config.server.bodyLimitBytes)];
  r.post('/v1/admin/rotate', ...admin, async (req, res) => {
    const who = identityOf(res);
    await s.admin.requireAdmin(who, 'rotate');
    const { target, immediate } = validBody(rotateSchema, req.body);
    res.status(202).json(await s.rotation.rotate(who, target, { immediate: immediate === true }));
  });
  r.post('/v1/admin/policy/reload', ...admin, async (req, res) => {
    const who = identityOf(res);
    await s.admin.requireAdmin(who, 'policy.reload');
    validBody(reloadSchema, req.body); // nothing is read from it, but a body must be the object the API documents
    res.status(202).json(await s.rotation.broadcastPolicyReload(who));
  });
  r.post('/v1/admin/revoke', ...admin, async (req, res) => {
    const who = identityOf(res);
    await s.admin.requireAdmin(who, 'admin.revoke');
    res.status(202).json(await s.admin.revoke(who, validBody(revokeSchema, req.body)));
  });
  r.post('/v1/admin/quarantine', ...admin, async (req, res) => {
    const who = identityOf(res);
    await s.admin.requireAdmin(who, 'quarantine.add');
    const { agent, reason } = validBody(quarantineSchema, req.body);
    res.status(201).json(await s.admin.quarantine(who, agent, reason));
  });
  // A list page: weighted by its `?limit=` like the other lists (src/http/read-cost.ts).
  r.get('/v1/admin/quarantine', authenticate, chargeReads(deps), async (req, res) => {
    const who = identityOf(res);
    const all = await s.admin.quarantines(who);
    const q = validQuery(quarantineQuery, req.query);
    res.json(s.lists.pageOf(who, 'quarantine', all, (e) => e.pattern, q));
  });
  r.get('/v1/admin/audit/seals', authenticate, async (req, res) => {
    validQuery(noQuery, req.query);
    res.json(await s.admin.auditSeals(identityOf(res)));
  });
  r.delete('/v1/admin/quarantine/:pattern', authenticate, async (req, res) => {
    res.json(await s.admin.unquarantine(identityOf(res), String(req.params.pattern)));
  });
  return r;
}
