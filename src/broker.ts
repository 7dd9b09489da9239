import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Redis } from 'ioredis';
import type { Router } from 'express';
import { ApprovalService } from './approvals/approval-service.ts';
import { ApprovalStore } from './approvals/approval-store.ts';
import { AuditLog } from './audit/audit-log.ts';
import { readSecret, resolvePath, type LoadedConfig } from './config/load.ts';
import { CredentialService } from './credentials/credential-service.ts';
import type { Deps } from './deps.ts';
import { createApp } from './http/app.ts';
import { RateLimits } from './http/rate-limit.ts';
import type { Services } from './http/services.ts';
import { IdentityPatterns } from './identity/patterns.ts';
import { IdentityVerifier } from './identity/verifier.ts';
import { LeaseService } from './leases/lease-service.ts';
import { LeaseStore } from './leases/lease-store.ts';
import { createLogger, type Logger } from './logger.ts';
import { Metrics } from './metrics.ts';
import { RotationService } from './ops/rotation.ts';
import { RotationScheduler } from './ops/schedule.ts';
import { createCedarEngine } from './policy/cedar-engine.ts';
import type { PolicyEngine } from './policy/types.ts';
import { ProviderRegistry } from './providers/registry.ts';
import type { Provider } from './providers/types.ts';
import { connectRedis, Keys } from './redis.ts';
import { RevocationQueue } from './revocation/queue.ts';
import { Sweeper } from './revocation/sweeper.ts';
import { RevocationWorker } from './revocation/worker.ts';
import { Kek } from './signing/kek.ts';
import { SigningKeyStore } from './signing/key-store.ts';
import { TaskService } from './tasks/task-service.ts';
import { TaskStore } from './tasks/task-store.ts';

const RETENTION_MS = 7 * 86_400_000;

export interface BrokerOptions {
  /** Run the HTTP API (default true). */
  api?: boolean;
  /** Run the revocation worker, sweeper and rotation scheduler (default true). */
  worker?: boolean;
  logger?: Logger;
  /** Replace the Cedar engine (tests of the core only). */
  policy?: PolicyEngine;
  /** Extra or replacement providers by kind (tests). */
  providers?: Record<string, Provider>;
  /** Used for JWKS URIs (tests). */
  fetchImpl?: typeof fetch;
  /** Verified-identity cache lifetime (ms); 0 disables. */
  identityCacheMs?: number;
  /** Extra routers mounted before the /v1 catch-all (e.g. the AWS container-credentials endpoint). */
  routers?: (deps: Deps, services: Services) => Router[];
}

/**
 * Without `secrets.kek` (the contract does not require it) a random KEK is
 * created once and kept in Redis, so every instance shares the signing keys.
 * That protects nothing at rest (the key sits next to what it seals), so it is
 * said loudly; production configs set secrets.kek.
 */
async function kekFromRedis(redis: Redis, keys: Keys, logger: Logger): Promise<string> {
  logger.warn(
    'secrets.kek is not set: sealing signing keys with a key kept in Redis itself, which protects nothing at rest. Set secrets.kek in production.',
  );
  await redis.set(keys.secrets('kek'), randomBytes(32).toString('base64'), 'NX');
  return (await redis.get(keys.secrets('kek')))!;
}

/** Throws unless `kek` decrypts every signing key and rotated secret already in Redis. */
async function assertKekOpens(redis: Redis, keys: Keys, kek: Kek): Promise<void> {
  for (const [kid, raw] of Object.entries(await redis.hgetall(keys.signingKeys()))) {
    try {
      kek.decrypt((JSON.parse(raw) as { sealed: string }).sealed, `signing-key:${kid}`);
    } catch {
      throw new Error(
        `secrets.kek cannot decrypt signing key ${kid} in Redis (prefix ${keys.prefix}): wrong KEK? Refusing to start. ` +
          '(A second dev checkout with its own dev/kek on the same Redis: use another redis.prefix or REDIS_URL.)',
      );
    }
  }
  for (const target of ['aws', 'vault']) {
    const sealed = await redis.get(keys.secrets(target));
    if (!sealed) continue;
    try {
      kek.decrypt(sealed, `secret:${target}`);
    } catch {
      throw new Error(`cannot decrypt the rotated ${target} secret in Redis: wrong secrets.kek? Refusing to run with a stale secret.`);
    }
  }
}

/** A running broker: what tests and main need to hold on to. */
export interface RunningBroker {
  deps: Deps;
  services: Services;
  /** Base URL of the API when it runs (http://127.0.0.1:<port>). */
  url?: string;
  sweeper?: Sweeper;
  worker?: RevocationWorker;
  /** Graceful shutdown: stop accepting, finish in-flight requests and jobs, close queues and connections. */
  close(): Promise<void>;
}

/**
 * The composition root: builds every piece from the validated config, in the
 * order they depend on each other, and starts the API and/or the worker.
 * Anything that fails here fails startup; nothing half-starts.
 */
export async function startBroker(config: LoadedConfig, opts: BrokerOptions = {}): Promise<RunningBroker> {
  const logger = opts.logger ?? createLogger();
  const runApi = opts.api ?? true;
  const runWorker = opts.worker ?? true;
  const keys = new Keys(config.redis.prefix);
  const connections: Redis[] = [];
  const conn = (o: { forBullmq?: boolean; name: string }) => {
    const c = connectRedis(config.redis.url, o);
    connections.push(c);
    return c;
  };
  const redis = conn({ name: 'jit-main' });
  try {
    await redis.ping();
  } catch (err) {
    await Promise.allSettled(connections.map((c) => c.quit()));
    throw new Error(`cannot reach Redis at ${config.redis.url}: ${(err as Error).message}`);
  }
  // Anything opened below is closed again if startup fails part-way: nothing half-starts, nothing leaks.
  const undo: (() => unknown)[] = [];
  try {
    const kek = new Kek(config.secrets.kek ? readSecret(config.secrets.kek, 'secrets.kek') : await kekFromRedis(redis, keys, logger));
    // Before creating anything: a KEK that cannot open what is already sealed in Redis means a
    // misconfigured instance, which must not add keys of its own or run with stale secrets.
    await assertKekOpens(redis, keys, kek);
    const metrics = new Metrics({ defaultMetrics: true });
    const leases = new LeaseStore({ redis, keys, retentionMs: RETENTION_MS });
    metrics.activeLeasesSource = () => leases.liveCount();
    const signing = new SigningKeyStore({ redis, keys, kek, logger, alg: config.providers.jwt.alg });
    await signing.init();
    const verifier = new IdentityVerifier(config, {
      redis,
      keys,
      logger,
      metrics,
      fetchImpl: opts.fetchImpl,
      cacheMs: opts.identityCacheMs,
    });
    await verifier.init();
    const policy = opts.policy ?? (await createCedarEngine({ dir: resolvePath(config.policies), logger, watch: true }));
    undo.push(() => policy.close());
    const audit = new AuditLog({ redis: conn({ name: 'jit-audit' }), keys, logger });
    const providers = await ProviderRegistry.create(
      config,
      { logger, redis, keyPrefix: config.redis.prefix, audit: (e) => audit.append(e) },
      signing,
    );
    for (const [kind, p] of Object.entries(opts.providers ?? {})) providers.set(kind, p);
    undo.push(() => providers.close());
    const queue = new RevocationQueue(conn({ forBullmq: true, name: 'jit-queue' }), config.redis.prefix, config.revocation);
    undo.push(() => queue.close());
    const deps: Deps = {
      config,
      redis,
      keys,
      logger,
      metrics,
      policy,
      providers,
      signing,
      verifier,
      leases,
      queue,
      audit,
      tasks: new TaskStore({ redis, keys, retentionMs: RETENTION_MS }),
      approvals: new ApprovalStore({ redis, keys }),
      patterns: {
        orchestrators: new IdentityPatterns(config.orchestrators),
        admins: new IdentityPatterns(config.admins),
        approvers: new IdentityPatterns(config.approvers),
      },
      limits: new RateLimits({ redis, prefix: config.redis.prefix, config: config.server.rateLimit, metrics, logger }),
    };
    const rotation = new RotationService(deps, kek, redis);
    const services: Services = {
      tasks: new TaskService(deps),
      credentials: new CredentialService(deps),
      leases: new LeaseService(deps),
      approvals: new ApprovalService(deps),
      rotation,
    };
    await rotation.applyDistributedSecrets();

    // Other instances announce rotations and policy reloads here; a periodic key reload covers a missed message.
    const sub = conn({ name: 'jit-sub' });
    await sub.subscribe(keys.channel('broker'));
    sub.on(
      'message',
      (_ch, msg) => void rotation.onEvent(msg).catch((err) => logger.error({ err: (err as Error).message }, 'broker event failed')),
    );
    const keyRefresh = setInterval(() => void signing.reload().catch(() => {}), 10_000);
    keyRefresh.unref();
    undo.push(() => clearInterval(keyRefresh));

    let worker: RevocationWorker | undefined;
    let sweeper: Sweeper | undefined;
    let scheduler: RotationScheduler | undefined;
    if (runWorker) {
      const w = new RevocationWorker(deps, conn({ forBullmq: true, name: 'jit-worker' }));
      worker = w;
      undo.push(() => w.close());
      const sw = new Sweeper(deps);
      sweeper = sw;
      sw.start();
      undo.push(() => sw.stop());
      const sch = new RotationScheduler(deps, rotation, conn({ forBullmq: true, name: 'jit-rotation' }));
      scheduler = sch;
      undo.push(() => sch.close());
      await sch.start();
    }

    let server: Server | undefined;
    let shuttingDown = false;
    let url: string | undefined;
    if (runApi) {
      const routers = [...(opts.routers?.(deps, services) ?? [])];
      if (config.providers.aws) {
        // AWS SDKs fetch task credentials themselves (AWS_CONTAINER_CREDENTIALS_FULL_URI); same checks as POST /v1/credentials.
        const { containerCredentialsRouter } = await import('./providers/aws/container-credentials.ts');
        routers.push(
          containerCredentialsRouter({
            logger,
            issue: async (token, body) => {
              const who = await verifier.verify(token);
              await deps.limits?.spendIdentity(who.id);
              const out = await services.credentials.request(who, body);
              return 'credentials' in out ? { credentials: out.credentials } : {};
            },
          }),
        );
      }
      const app = createApp(deps, services, { isShuttingDown: () => shuttingDown, extraRouters: routers });
      server = app.listen(config.server.port, config.server.host);
      await once(server, 'listening');
      server.keepAliveTimeout = 65_000;
      const addr = server.address() as AddressInfo;
      url = `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`;
      logger.info({ url, publicUrl: config.server.publicUrl }, 'broker API listening');
    }
    if (runWorker) logger.info({ prefix: config.redis.prefix }, 'revocation worker running');

    return {
      deps,
      services,
      url,
      sweeper,
      worker,
      async close() {
        shuttingDown = true;
        clearInterval(keyRefresh);
        if (server) {
          const closed = new Promise<void>((resolve) => server!.close(() => resolve()));
          // close() drops idle keep-alive sockets once; sockets busy now become idle after their
          // response and must be dropped then too, or shutdown waits for the grace timer.
          const sweepIdle = setInterval(() => server!.closeIdleConnections(), 50);
          closed.then(
            () => clearInterval(sweepIdle),
            () => clearInterval(sweepIdle),
          );
          const grace = setTimeout(() => server!.closeAllConnections(), config.server.shutdownGraceMs);
          await closed;
          clearTimeout(grace);
        }
        sweeper?.stop();
        await scheduler?.close();
        await worker?.close();
        await queue.close();
        await deps.audit.flush();
        await policy.close();
        await providers.close();
        await Promise.allSettled(connections.map((c) => c.quit()));
      },
    };
  } catch (err) {
    for (const step of undo.reverse())
      await Promise.resolve()
        .then(step)
        .catch(() => {});
    await Promise.allSettled(connections.map((c) => c.quit()));
    throw err;
  }
}
