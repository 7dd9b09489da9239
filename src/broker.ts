import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { RequestHandler, Router } from 'express';
import { AdminService } from './admin/admin-service.ts';
import { ApprovalService } from './approvals/approval-service.ts';
import { ApprovalStore } from './approvals/approval-store.ts';
import { AuditLog } from './audit/audit-log.ts';
import { OutboxRecovery, outboxStats } from './audit/outbox.ts';
import { endSwapRetries } from './audit/outbox-intent.ts';
import type { OutboxEvent } from './audit/record.ts';
import { AuditExporter } from './audit/export.ts';
import { readArchive } from './audit/restore.ts';
import { sealKeyOf } from './audit/seal.ts';
import { sealStatus } from './audit/seal-status.ts';
import { type LoadedConfig, readSecret, resolvePath } from './config/load.ts';
import { CredentialService } from './credentials/credential-service.ts';
import type { Deps } from './deps.ts';
import { createApp, under } from './http/app.ts';
import { RateLimits } from './http/rate-limit.ts';
import { admitIdentity } from './http/middleware.ts';
import type { Services } from './http/services.ts';
import { IdentityPatterns, overlapping } from './identity/patterns.ts';
import { Quarantine } from './identity/quarantine.ts';
import { IdentityVerifier } from './identity/verifier.ts';
import { LeaseService } from './leases/lease-service.ts';
import { LeaseStore } from './leases/lease-store.ts';
import { AuditReader } from './lists/audit-query.ts';
import { TaskLeaseReader } from './lists/task-leases.ts';
import { CursorCodec } from './lists/cursor.ts';
import { ListService } from './lists/list-service.ts';
import { createLogger, type Logger } from './logger.ts';
import { Metrics } from './metrics.ts';
import { reapplyEndings } from './ops/reapply.ts';
import { DataLossMonitor, type RecoveryDeps } from './ops/recovery.ts';
import { RotationService } from './ops/rotation.ts';
import { parseStored } from './ops/sealed-secrets.ts';
import { RotationScheduler } from './ops/schedule.ts';
import { RotationResume } from './ops/rotation-resume.ts';
import { createCedarEngine } from './policy/cedar-engine.ts';
import type { PolicyEngine } from './policy/types.ts';
import { longestJwtTtlMs } from './providers/jwt/provider.ts';
import { ProviderRegistry } from './providers/registry.ts';
import type { Provider } from './providers/types.ts';
import { RedisClock } from './redis/clock.ts';
import { createConnector } from './redis/connection.ts';
import { type AuditChain, Keys } from './redis/keys.ts';
import { ReplicaAck } from './redis/replica-ack.ts';
import { RedisRequirements } from './redis/requirements.ts';
import type { RedisClient } from './redis/scripts.ts';
import { RevocationQueue } from './revocation/queue.ts';
import { Sweeper } from './revocation/sweeper.ts';
import { RevocationWorker } from './revocation/worker.ts';
import { Kek } from './signing/kek.ts';
import { SigningKeyStore } from './signing/key-store.ts';
import { TaskService } from './tasks/task-service.ts';
import { TaskStore } from './tasks/task-store.ts';
import pTimeout from 'p-timeout';
import { answerUnparsableRequests } from './http/client-error.ts';
import { answerUnmetExpectations } from './http/expectation.ts';

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
  /** How often every instance looks for a Redis data loss (ms, default 1000). */
  dataLossCheckMs?: number;
  /** Distinct denial keys folded one by one per minute (tests; default FOLD_MAX_KEYS in src/audit/denial-folds.ts). */
  auditFoldMaxKeys?: number;
  /** The task cache's length bound in characters (tests; default TASK_CACHE_CHARS in src/tasks/task-store.ts). */
  taskCacheChars?: number;
  /** Extra routers mounted before the /v1 catch-all. */
  routers?: (deps: Deps, services: Services) => Router[];
}

/**
 * Without `secrets.kek` (the contract does not require it) a random KEK is
 * created once and kept in Redis, so every instance shares the signing keys.
 * That protects nothing at rest (the key sits next to what it seals), so it is
 * said loudly; production configs set secrets.kek.
 */
async function kekFromRedis(redis: RedisClient, keys: Keys, logger: Logger): Promise<string> {
  logger.warn(
    'secrets.kek is not set: sealing signing keys with a key kept in Redis itself, which protects nothing at rest. Set secrets.kek in production.',
  );
  await redis.set(keys.secrets('kek'), randomBytes(32).toString('base64'), 'NX');
  return (await redis.get(keys.secrets('kek')))!;
}

/**
 * An identity that may open tasks and decide approvals can approve what the agents of its own tasks ask for:
 * the second pair of eyes a role's `approval: required` asks for is then the first. Allowed (a person who runs
 * an agent by hand may be both), but said at startup, naming the patterns.
 */
function warnSelfApproval(config: LoadedConfig, logger: Logger): void {
  const both = overlapping(config.orchestrators, config.approvers);
  if (both.length === 0) return;
  logger.warn(
    { overlapping: both.map(([orchestrator, approver]) => ({ orchestrator, approver })) },
    "identities matching both `orchestrators` and `approvers` can approve credential requests in tasks they opened themselves: an approval from them is not a second person's. Keep the two lists apart if approvals must be four-eyes.",
  );
}

/** Throws unless `kek` decrypts every signing key and rotated secret already in Redis. */
async function assertKekOpens(redis: RedisClient, keys: Keys, kek: Kek, targets: string[]): Promise<void> {
  for (const [kid, raw] of Object.entries(await redis.hgetall(keys.signingKeys()))) {
    try {
      kek.decrypt((JSON.parse(raw) as { sealed: string }).sealed, `signing-key:${kid}`);
    } catch {
      throw new Error(
        `secrets.kek cannot decrypt signing key ${kid} in Redis (prefix ${keys.prefix}): wrong KEK? Refusing to start. ` +
          '(A second dev checkout with its own dev/kek on the same Redis? Give it another Redis database, ' +
          'e.g. REDIS_URL=redis://127.0.0.1:6379/1 npm start, or its config another redis.prefix.)',
      );
    }
  }
  for (const target of targets) {
    const raw = await redis.get(keys.secrets(target));
    if (!raw) continue;
    try {
      kek.decrypt(parseStored(raw).sealed, `secret:${target}`);
    } catch {
      throw new Error(`cannot decrypt the rotated ${target} secret in Redis: wrong secrets.kek? Refusing to run with a stale secret.`);
    }
  }
}

/** The bucket count cannot change under existing data (tasks would move); refuse a mismatch. */
async function assertBuckets(redis: RedisClient, keys: Keys): Promise<void> {
  await redis.hsetnx(keys.meta(), 'buckets', String(keys.buckets));
  const stored = Number(await redis.hget(keys.meta(), 'buckets'));
  if (stored !== keys.buckets) {
    throw new Error(
      `redis.buckets is ${keys.buckets} but the data under prefix ${keys.prefix} was written with ${stored}; refusing to start.`,
    );
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
  recovery: DataLossMonitor;
  /** Appends what dead processes left in the audit outboxes (every process kind runs it). */
  outbox: OutboxRecovery;
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
  const keys = new Keys(config.redis.prefix, config.redis.buckets);
  const conns = createConnector(config.redis, { logger });
  const redis = conns.command('jit-main');
  try {
    await redis.ping();
  } catch (err) {
    await conns.close();
    throw new Error(`cannot reach Redis at ${conns.describe()}: ${(err as Error).message}`);
  }
  // Anything opened below is closed again if startup fails part-way: nothing half-starts, nothing leaks.
  const undo: (() => unknown)[] = [];
  try {
    // First, before any BullMQ queue or worker exists (BullMQ spins when INFO is refused): an evicting
    // policy or an ACL missing a command fails startup naming it, rather than 500s on every request.
    const requirements = new RedisRequirements({
      redis,
      keys,
      logger,
      blocking: runWorker,
      wait: config.redis.replicaAck.replicas !== 0,
    });
    await requirements.assertMet(conns.describe());
    await assertBuckets(redis, keys);
    warnSelfApproval(config, logger);
    const clock = new RedisClock(redis);
    await clock.start();
    undo.push(() => clock.stop());
    const kek = new Kek(config.secrets.kek ? readSecret(config.secrets.kek, 'secrets.kek') : await kekFromRedis(redis, keys, logger));
    // Before creating anything: a KEK that cannot open what is already sealed in Redis means a
    // misconfigured instance, which must not add keys of its own or run with stale secrets.
    await assertKekOpens(redis, keys, kek, ['aws', 'vault']);
    const metrics = new Metrics({ defaultMetrics: true, refreshMs: config.server.metricsRefreshSeconds * 1000 });
    metrics.clockOffsetSource = () => -clock.skewMs;
    clock.onStep = (stepMs) => {
      metrics.clockSteps.inc({ direction: stepMs < 0 ? 'back' : 'forward' });
      logger.error(
        { stepMs },
        stepMs < 0
          ? "Redis's clock went back: every deadline and expiry decided on it (tasks, leases, approvals) now comes that much later. Check the clock of Redis's host (a failover to a host whose clock is off, an NTP step)."
          : "Redis's clock jumped ahead: deadlines and expiries decided on it come that much sooner (tasks and leases may end early). Check the clock of Redis's host.",
      );
    };
    const retentionMs = config.tasks.retentionSeconds * 1000;
    const leases = new LeaseStore({ redis, keys, retentionMs });
    metrics.activeLeasesSource = () => leases.liveCount();
    const signing = new SigningKeyStore({
      redis,
      keys,
      kek,
      logger,
      alg: config.providers.jwt.alg,
      clock,
      maxTokenTtlMs: longestJwtTtlMs(config),
      graceMs: config.providers.jwt.retireGraceSeconds * 1000,
    });
    const verifier = new IdentityVerifier(config, {
      redis,
      keys,
      logger,
      metrics,
      now: () => clock.now(),
      ...(opts.fetchImpl ? { fetchImpl: opts.fetchImpl } : {}),
      ...(opts.identityCacheMs === undefined ? {} : { cacheMs: opts.identityCacheMs }),
    });
    await verifier.init();
    const policy = opts.policy ?? (await createCedarEngine({ dir: resolvePath(config.policies), logger, watch: true }));
    undo.push(() => policy.close());
    const audit = new AuditLog({
      // The lease store's connection: a JWT's issue record is sent right behind its lease script and must
      // reach Redis after it (AuditLog.appendMember); commands of two connections have no order between them.
      redis,
      keys,
      logger,
      taskIndexMs: Math.max(retentionMs, config.audit.retention.maxAgeDays * 86_400_000),
      now: () => clock.now(),
      guardEpoch: true,
      ...(opts.auditFoldMaxKeys ? { foldMaxKeys: opts.auditFoldMaxKeys } : {}),
    });
    const sealKey = sealKeyOf(kek);
    // Read from Redis (one reading per server.metricsRefreshSeconds), so every instance reports the deployment's sealing, not only its own.
    metrics.sealStatusSource = () => sealStatus(redis, keys, sealKey, clock.now(), config.audit.sealMaxAgeSeconds * 1000);
    const auditFile = resolvePath(config.audit.export.file);
    const auditExport = new AuditExporter({
      redis,
      keys,
      logger,
      file: auditFile,
      maxFileBytes: config.audit.export.maxFileBytes,
      retention: config.audit.retention,
      sealKey,
      sealIntervalMs: config.audit.sealIntervalSeconds * 1000,
      sealMaxAgeMs: config.audit.sealMaxAgeSeconds * 1000,
      audit: (e) => audit.append(e),
      retentionIntervalMs: config.audit.retentionIntervalSeconds * 1000,
      now: () => clock.now(),
    });
    // Any pass (exportNow on an API-only instance too) may start its record-check thread.
    undo.push(() => auditExport.close());
    await auditExport.assertOwned();
    const tasks = new TaskStore({ redis, keys, retentionMs, ...(opts.taskCacheChars ? { cacheChars: opts.taskCacheChars } : {}) });
    const quarantine = new Quarantine({ redis, keys, logger });
    await quarantine.start();
    undo.push(() => quarantine.stop());
    let restoreSecrets = async (): Promise<void> => {};
    let reapply: RecoveryDeps['reapply'] = () => Promise.reject(new Error('the services are not started yet'));
    const recovery = new DataLossMonitor({
      redis,
      keys,
      logger,
      signing,
      audit,
      readArchive: () => readArchive(auditFile, keys.prefix),
      sealAudit: () => auditExport.exportNow(),
      restoreQuarantines: (entries) => quarantine.restore(entries),
      clearCaches: () => tasks.clearCache(),
      // Set once the providers exist (below): the first look at an empty Redis runs before them, holding nothing.
      restoreSecrets: () => restoreSecrets(),
      metrics,
      exportFile: auditFile,
      // Set once the services exist (below); the periodic checks, which run it, start after that.
      reapply: (records) => reapply(records),
    });
    await recovery.init();
    undo.push(() => recovery.stop());
    const providers = await ProviderRegistry.create(
      config,
      { logger, redis, keyPrefix: config.redis.prefix, clock: () => clock.now(), audit: (e) => audit.append(e) },
      signing,
    );
    for (const [kind, p] of Object.entries(opts.providers ?? {})) providers.set(kind, p);
    undo.push(() => providers.close());
    const queue = new RevocationQueue(conns.bullmq('jit-queue'), keys, config.revocation, (err) =>
      logger.warn({ err: err.message }, 'revocation queue error'),
    );
    undo.push(() => queue.close());
    const { replicas: wanted, timeoutMs: ackMs } = config.redis.replicaAck;
    const replicas = new ReplicaAck(conns.command('jit-replica-ack', { blockMs: ackMs }), {
      replicas: wanted,
      timeoutMs: ackMs,
      logger,
      onRound: (result) => metrics.replicaAcks.inc({ result }),
    });
    await replicas.start();
    undo.push(() => replicas.stop());
    const deps: Deps = {
      config,
      redis,
      keys,
      clock,
      logger,
      metrics,
      policy,
      providers,
      signing,
      verifier,
      leases,
      queue,
      audit,
      tasks,
      quarantine,
      replicas,
      approvals: new ApprovalStore({ redis, keys, retentionMs, now: () => clock.now() }),
      patterns: {
        orchestrators: new IdentityPatterns(config.orchestrators),
        admins: new IdentityPatterns(config.admins),
        approvers: new IdentityPatterns(config.approvers),
      },
      limits: new RateLimits({ redis, prefix: config.redis.prefix, config: config.server.rateLimit, metrics, logger }),
    };
    const rotation = new RotationService(deps, kek, redis);
    undo.push(() => rotation.policySync.close());
    deps.policyBehind = () => !rotation.policySync.inSync;
    restoreSecrets = () => rotation.restoreSecrets();
    const taskService = new TaskService(deps);
    const approvalService = new ApprovalService(deps);
    const cursors = new CursorCodec(kek.derive('jit-broker list cursor v1'), () => clock.now());
    const taskLeases = new TaskLeaseReader(deps, cursors);
    const services: Services = {
      tasks: taskService,
      credentials: new CredentialService(deps),
      leases: new LeaseService(deps),
      approvals: approvalService,
      rotation,
      admin: new AdminService(deps, taskService, rotation, auditExport),
      lists: new ListService(deps, cursors, taskService, approvalService),
      audit: new AuditReader(deps, cursors, taskService, taskLeases),
      taskLeases,
    };
    reapply = (records) => reapplyEndings(deps, { tasks: taskService, admin: services.admin }, records);
    recovery.start(opts.dataLossCheckMs ?? 1000);
    await rotation.applyDistributedSecrets();

    // Other instances announce rotations, policy reloads and quarantines here; periodic reloads cover a missed message.
    const sub = conns.subscriber('jit-sub');
    await sub.subscribe(keys.channel('broker'));
    sub.on(
      'message',
      (_ch: string, msg: string) =>
        void rotation.onEvent(msg).catch((err) => logger.error({ err: (err as Error).message }, 'broker event failed')),
    );
    // Signing keys, and the upstream secrets rotations distribute (a no-op when unchanged): an instance that
    // missed an announcement (its subscriber cut off while another rotated) catches up within 10 s.
    const keyRefresh = setInterval(() => void rotation.applyDistributedSecrets().catch(() => {}), 10_000);
    keyRefresh.unref();
    undo.push(() => clearInterval(keyRefresh));

    // Every process kind, API-only ones included: each makes decisions whose records go through an outbox,
    // and a deployment may run APIs without a worker beside them (docs/audit.md).
    // A quarantine.add record left in the ops outbox may mean its tasks were not all ended: recovery ends them first.
    const before = (chain: AuditChain, e: OutboxEvent, signal?: AbortSignal) =>
      chain === 'ops' ? services.admin.recoveredQuarantine(e, signal) : Promise.resolve();
    // An intent left there whose decision state shows took effect is recorded with that outcome (recovered).
    const settle = (chain: AuditChain, e: OutboxEvent, signal?: AbortSignal) =>
      chain === 'ops' ? services.admin.recoveredOutcome(e, signal) : Promise.resolve(undefined);
    const outbox = new OutboxRecovery(
      { redis, keys, audit, logger, clock, metrics, before, settle },
      config.revocation.reconcileIntervalMs,
    );
    metrics.outboxSource = () => outboxStats({ redis, keys, clock });
    outbox.start();
    undo.push(() => outbox.stop());

    let worker: RevocationWorker | undefined;
    let sweeper: Sweeper | undefined;
    let scheduler: RotationScheduler | undefined;
    let resume: RotationResume | undefined;
    if (runWorker) {
      const w = new RevocationWorker(deps, (name) => conns.bullmq(name));
      worker = w;
      undo.push(() => w.close());
      const sw = new Sweeper(deps);
      sweeper = sw;
      sw.start();
      undo.push(() => sw.stop());
      const sch = new RotationScheduler(deps, rotation, conns.bullmq('jit-rotation'));
      scheduler = sch;
      undo.push(() => sch.close());
      await sch.start();
      const r = new RotationResume(deps, rotation);
      resume = r;
      r.start();
      undo.push(() => r.stop());
      // Export, seal and retention run where the worker runs (one instance at a time, under a lock).
      auditExport.start();
      undo.push(() => auditExport.stop());
    }

    let server: Server | undefined;
    let shuttingDown = false;
    let url: string | undefined;
    let consoleApp: { close(): void } | undefined;
    if (runApi) {
      const routers: (Router | RequestHandler)[] = [...(opts.routers?.(deps, services) ?? [])];
      if (config.console) {
        // The web console (contract section 10): sign-in, the built page, and /console/api over the /v1 handlers.
        const { createConsole } = await import('./console/routes.ts');
        const c = createConsole(deps, services);
        consoleApp = c;
        undo.push(() => c.close());
        routers.push(under(['/console'], c.router));
      }
      if (config.providers.aws) {
        // AWS SDKs fetch task credentials themselves (AWS_CONTAINER_CREDENTIALS_FULL_URI); same checks as POST /v1/credentials.
        const { containerCredentialsRouter } = await import('./providers/aws/container-credentials.ts');
        routers.push(
          under(
            ['/v1/aws/'],
            containerCredentialsRouter({
              logger,
              issue: async (token, body) => {
                const who = await verifier.verify(token);
                // As on every /v1 route (authenticate): a quarantined identity is refused before anything is issued.
                await admitIdentity(deps, who);
                // Only an aws role: one of another kind is refused (audited) before a credential is made and thrown away.
                const out = await services.credentials.request(who, body, 'aws');
                return 'credentials' in out ? { credentials: out.credentials } : {};
              },
            }),
          ),
        );
      }
      const app = createApp(deps, services, {
        isShuttingDown: () => shuttingDown,
        isRecovered: () => recovery.ready,
        policyInSync: () => rotation.policySync.inSync,
        redisProblems: () => requirements.readiness(),
        extraRouters: routers,
      });
      // The receipt of a request is bounded (server.headersTimeoutSeconds, server.requestTimeoutSeconds), checked every
      // second rather than Node's 30: a slow client holds a socket no longer than that.
      server = createServer(
        {
          headersTimeout: config.server.headersTimeoutSeconds * 1000,
          requestTimeout: config.server.requestTimeoutSeconds * 1000,
          connectionsCheckingInterval: 1000,
        },
        app,
      ).listen(config.server.port, config.server.host);
      answerUnparsableRequests(server, metrics);
      answerUnmetExpectations(server, metrics);
      await once(server, 'listening');
      server.keepAliveTimeout = 65_000;
      const addr = server.address() as AddressInfo;
      url = `http://${addr.address.includes(':') ? `[${addr.address}]` : addr.address}:${addr.port}`;
      logger.info({ url, publicUrl: config.server.publicUrl, redis: conns.describe() }, 'broker API listening');
    }
    if (runWorker) logger.info({ prefix: config.redis.prefix }, 'revocation worker running');

    return {
      deps,
      services,
      url,
      sweeper,
      worker,
      recovery,
      outbox,
      async close() {
        shuttingDown = true;
        clearInterval(keyRefresh);
        // Its heartbeat (every 5 s) would go on writing to the closed connections for as long as the process lives.
        rotation.policySync.close();
        // A check or recovery under way ends before the connections close (below): closed under it, the
        // recovery could not release its lock, left held for its TTL with every other instance answering 503.
        // Started now, so that its bound runs beside the HTTP drain's rather than after it.
        const recoveryStopped = pTimeout(recovery.stop(), {
          milliseconds: config.server.shutdownGraceMs,
          fallback: () =>
            logger.warn(
              { graceMs: config.server.shutdownGraceMs },
              'the data-loss check or recovery did not end in time; closing under it',
            ),
        });
        if (server) {
          const srv = server;
          const closed = new Promise<void>((resolve) => srv.close(() => resolve()));
          // close() drops idle keep-alive sockets once; sockets busy now become idle after their
          // response and must be dropped then too, or shutdown waits for the grace timer.
          const sweepIdle = setInterval(() => srv.closeIdleConnections(), 50);
          closed.then(
            () => clearInterval(sweepIdle),
            () => clearInterval(sweepIdle),
          );
          const grace = setTimeout(() => srv.closeAllConnections(), config.server.shutdownGraceMs);
          await closed;
          clearTimeout(grace);
        }
        consoleApp?.close();
        // Before the queue and the audit log close: a reconcile pass under way ends its page first.
        await sweeper?.stop();
        await outbox.stop();
        // BullMQ's closes wait forever while Redis is unreachable (a reconnecting client never emits
        // `end`): bounded, then the connector ends every connection, BullMQ's copies included. A job
        // cut off here is retried by another worker once its lock lapses.
        const closing = (async () => {
          // No look for unfinished rotations after close; one under way (a rotation, like the scheduler's job) ends first.
          await resume?.stop();
          await scheduler?.close();
          await worker?.close();
          await queue.close();
        })().catch(() => {});
        await pTimeout(closing, {
          milliseconds: config.server.shutdownGraceMs,
          fallback: () =>
            logger.warn(
              { graceMs: config.server.shutdownGraceMs },
              'queues did not close in time (Redis unreachable?); closing their connections',
            ),
        });
        // Before the audit log flushes: the recovery's records go with it.
        await recoveryStopped;
        // An operation's outcome whose swap Redis failed (OutboxIntent.finish) gets a last try while the
        // connections are open; no retry outlives the broker.
        await endSwapRetries(deps.audit);
        await deps.audit.flush();
        await auditExport.stop();
        // What this instance wrote last reaches the file now rather than at another instance's next pass.
        if (runWorker) await auditExport.pass({ waitMs: 0, trim: false }).catch(() => {});
        await auditExport.close();
        quarantine.stop();
        replicas.stop();
        clock.stop();
        await policy.close();
        await providers.close();
        await conns.close();
      },
    };
  } catch (err) {
    for (const step of undo.reverse())
      await Promise.resolve()
        .then(step)
        .catch(() => {});
    await conns.close();
    throw err;
  }
}
