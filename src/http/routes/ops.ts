import { Router } from 'express';
import type { Deps } from '../../deps.ts';
import { conflict, forbidden } from '../../errors.ts';
import { PolicyLoadError } from '../../policy/errors.ts';
import type { Services } from '../services.ts';
import { identityOf, jsonBody, requireIdentity, validBody } from '../middleware.ts';
import { rotateSchema } from '../schemas.ts';

/** /healthz, /readyz, /metrics. */
export function opsRoutes(deps: Deps, isShuttingDown: () => boolean): Router {
  const r = Router();
  r.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  r.get('/readyz', async (_req, res) => {
    const checks: Record<string, boolean> = { config: true, policy: true, accepting: !isShuttingDown() };
    try {
      checks.redis =
        (await Promise.race([deps.redis.ping(), new Promise((_, rej) => setTimeout(() => rej(new Error('timeout')), 1000))])) === 'PONG';
    } catch {
      checks.redis = false;
    }
    for (const [kind, p] of deps.providers.all()) {
      if (p.ready) checks[`provider:${kind}`] = await p.ready().catch(() => false);
    }
    const ready = Object.values(checks).every(Boolean);
    res.status(ready ? 200 : 503).json({ status: ready ? 'ready' : 'not_ready', checks });
  });
  r.get('/metrics', async (_req, res) => {
    res.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics());
  });
  return r;
}

/** POST /v1/admin/rotate and POST /v1/admin/policy/reload (admins, and policy for rotate). */
export function adminRoutes(deps: Deps, s: Services): Router {
  const r = Router();
  const admin = [requireIdentity(deps), ...jsonBody(deps.config.server.bodyLimitBytes)];
  const requireAdmin = (id: string) => {
    if (!deps.patterns.admins.matches(id)) throw forbidden('not_admin', 'Only an admin may do this.');
  };
  r.post('/v1/admin/rotate', ...admin, async (req, res) => {
    const who = identityOf(res);
    requireAdmin(who.id);
    const { target } = validBody(rotateSchema, req.body);
    res.status(202).json(await s.rotation.rotate(who, target));
  });
  r.post('/v1/admin/policy/reload', ...admin, async (_req, res) => {
    requireAdmin(identityOf(res).id);
    try {
      res.status(202).json(await s.rotation.broadcastPolicyReload());
    } catch (err) {
      // The admin's request is fine; the files on disk are in a state that cannot be loaded, and the
      // old set stays in force: a conflict with the current state (409), not a broker failure (5xx)
      // that would page someone and invite retries. An admin may see file names and Cedar's messages.
      if (err instanceof PolicyLoadError)
        throw conflict('policy_invalid', `The policy set was not reloaded; the previous set stays in force. ${err.message}`, {
          extra: { issues: err.issues.map(({ code, file, line, column, message }) => ({ code, file, line, column, message })) },
        });
      throw err;
    }
  });
  return r;
}
