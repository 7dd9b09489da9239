import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { SealStatus } from './audit/seal-status.ts';
import { OUTBOX_GRACE_MS } from './audit/outbox.ts';
import { SharedReading } from './shared-reading.ts';

/**
 * Default of `server.metricsRefreshSeconds`: how long the Redis-backed gauges (active leases, seal ages,
 * audit outboxes) reuse one reading. /metrics is unauthenticated, and one reading is several commands per
 * bucket (about 6,000 at `redis.buckets: 1024`); with this, a flood of scrapes costs one reading per
 * interval per process. Prometheus scrapes every 15-60 s, and every alert on these gauges is over minutes.
 */
export const DEFAULT_METRICS_REFRESH_MS = 15_000;

/**
 * The `route` of `jit_http_request_duration_seconds` for a request no route took: an unknown path, and one
 * answered before Express saw it (an unmet `Expect`, a request Node cannot parse), so every answer is counted.
 */
export const UNMATCHED_ROUTE = 'unmatched';

/**
 * How long one round of upstream checks (Vault sys/health, STS GetCallerIdentity) answers /readyz and
 * `jit_upstream_up` (ms): both are unauthenticated, so a flood of them is one round per interval, not a flood of the upstreams.
 */
export const UPSTREAM_CHECK_MS = 1000;

/** Every metric the broker exports, on one registry per process (tests create their own). */
export class Metrics {
  readonly registry = new Registry();
  readonly issued: Counter<'provider' | 'role'>;
  readonly denied: Counter<'code'>;
  readonly revocations: Counter<'result' | 'reason' | 'provider'>;
  readonly revocationLag: Histogram<'reason'>;
  readonly activeLeases: Gauge;
  readonly httpDuration: Histogram<'route' | 'status'>;
  readonly policyDecisions: Counter<'action' | 'decision'>;
  readonly introspectSignatures: Counter<'check'>;
  readonly rotations: Counter<'target' | 'result'>;
  readonly replicaAcks: Counter<'result'>;
  readonly clockSteps: Counter<'direction'>;
  readonly clockOffset: Gauge;
  /** Redis's clock minus this process's, in ms, as last measured (src/redis/clock.ts). */
  clockOffsetSource: (() => number) | undefined;
  readonly policyInSync: Gauge;
  readonly outboxRecords: Gauge;
  readonly outboxOldest: Gauge;
  readonly outboxParkedNow: Gauge;
  readonly outboxRecovered: Counter;
  readonly outboxParked: Counter;
  readonly dataLoss: Counter<'kind'>;
  readonly upstreamUp: Gauge<'provider'>;
  /** Where the upstream checks read from (the provider registry's readiness(), set once the providers exist). */
  upstreamsSource: (() => Promise<Record<string, boolean>>) | undefined;

  /** Where the active-lease gauge reads from (set once the lease store exists); read at most once per refresh interval. */
  activeLeasesSource: (() => Promise<number>) | undefined;
  readonly sealAge: Gauge<'chain'>;

  /** Where the audit outbox gauges read from (src/audit/outbox.ts `outboxStats`); at most once per refresh interval. */
  outboxSource: (() => Promise<{ records: number; oldestSeconds: number; parked: number }>) | undefined;
  /** Where the seal-age gauge reads from (set once the seal key exists); at most once per refresh interval. */
  sealStatusSource: (() => Promise<SealStatus[]>) | undefined;

  /** The shared readings behind the Redis-backed gauges (SharedReading: one per interval, concurrent scrapes share it). */
  readonly readings: {
    activeLeases: SharedReading<number>;
    sealStatus: SharedReading<SealStatus[]>;
    outbox: SharedReading<{ records: number; oldestSeconds: number; parked: number }>;
    /** One round per UPSTREAM_CHECK_MS, shared by /readyz and /metrics. */
    upstreams: SharedReading<Record<string, boolean>>;
  };

  /** `refreshMs`: how long the Redis-backed gauges reuse a reading (`server.metricsRefreshSeconds`). */
  constructor(opts: { defaultMetrics?: boolean; refreshMs?: number } = {}) {
    const registers = [this.registry];
    const every = opts.refreshMs ?? DEFAULT_METRICS_REFRESH_MS;
    // Only read once its source is set (each collect() checks that first).
    const unset = () => Promise.reject(new Error('not set'));
    this.readings = {
      activeLeases: new SharedReading(every, () => this.activeLeasesSource?.() ?? unset()),
      // Redis unreachable: no sample rather than a stale one (and /metrics still answers).
      sealStatus: new SharedReading(every, () => (this.sealStatusSource?.() ?? unset()).catch(() => [])),
      // Redis failing: the gauges keep their last values.
      outbox: new SharedReading(every, () => this.outboxSource?.() ?? unset()),
      upstreams: new SharedReading(UPSTREAM_CHECK_MS, () => this.upstreamsSource?.() ?? unset()),
    };
    /** Seconds since a reading was taken: ages grow between readings, so an alert on them is never late by a reading's age. */
    const since = (at: number) => (performance.now() - at) / 1000;
    this.issued = new Counter({
      name: 'jit_credentials_issued_total',
      help: 'Credentials issued',
      labelNames: ['provider', 'role'],
      registers,
    });
    this.denied = new Counter({
      name: 'jit_denials_total',
      help: 'Requests denied (401/403), by error code',
      labelNames: ['code'],
      registers,
    });
    this.revocations = new Counter({
      name: 'jit_revocations_total',
      // `reason`: a lease's RevokeReason or `issuance_interrupted` (a given-up issuance): a fixed set.
      help: 'Lease revocations and expiries by result (revoked, expired; failed: one failed upstream attempt) and reason',
      labelNames: ['result', 'reason', 'provider'],
      registers,
    });
    this.revocationLag = new Histogram({
      name: 'jit_revocation_lag_seconds',
      help: "From the revocation trigger (task end, TTL, DELETE, an interrupted issuance's orphan deadline) to the lease being ended",
      labelNames: ['reason'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    });
    const metrics = this;
    this.activeLeases = new Gauge({
      name: 'jit_active_leases',
      help: 'Leases not yet ended',
      registers,
      async collect() {
        if (!metrics.activeLeasesSource) return;
        const { value } = await metrics.readings.activeLeases.get();
        if (value !== undefined) this.set(value);
      },
    });
    this.httpDuration = new Histogram({
      name: 'jit_http_request_duration_seconds',
      help: 'HTTP request duration',
      labelNames: ['route', 'status'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    this.policyDecisions = new Counter({
      name: 'jit_policy_decisions_total',
      help: 'Policy decisions',
      labelNames: ['action', 'decision'],
      registers,
    });
    // `remembered`: the token's signature verified before (src/leases/verified-tokens.ts); a falling share of
    // those under steady traffic is the cache churning (variant tokens sent to evict the ones in use).
    this.introspectSignatures = new Counter({
      name: 'jit_introspection_signatures_total',
      help: 'Introspected tokens by how their signature was checked: verified, or remembered as verified before',
      labelNames: ['check'],
      registers,
    });
    this.rotations = new Counter({ name: 'jit_rotations_total', help: 'Secret rotations', labelNames: ['target', 'result'], registers });
    this.replicaAcks = new Counter({
      name: 'jit_redis_replica_acks_total',
      help: 'Waits for replicas after writes a failover must not lose (redis.replicaAck), by result: acked, timeout, error',
      labelNames: ['result'],
      registers,
    });
    // Deadlines and expiries are decided on Redis's clock: a step of it moves every one of them (docs/operations.md).
    this.clockSteps = new Counter({
      name: 'jit_redis_clock_steps_total',
      help: "Steps of Redis's own clock between two syncs (over 1 s against this process's monotonic clock), by direction: deadlines and expiries moved by as much",
      labelNames: ['direction'],
      registers,
    });
    this.clockOffset = new Gauge({
      name: 'jit_redis_clock_offset_seconds',
      help: "Redis's clock minus this process's clock, as last measured (synced every 10 s)",
      registers,
      collect() {
        const ms = metrics.clockOffsetSource?.();
        if (ms !== undefined) this.set(ms / 1000);
      },
    });
    this.policyInSync = new Gauge({
      name: 'jit_policy_in_sync',
      help: 'Whether the policy set in force is the one the last reload announced (0: not ready until it loads)',
      registers,
    });
    // The audit outboxes (docs/audit.md): records of decisions on their way to their chain. One reading serves
    // the three gauges. The oldest record's age is counted on from the reading only as far as what the reading
    // showed supports: a record recovery had not taken (past its grace) is still there unless a later reading
    // says otherwise, but one younger than that is normally one in flight, appended a few ms later, and a busy
    // broker has some at every reading. Counted on without bound, those made the gauge reach the refresh
    // interval every interval (above the 60 s alert with server.metricsRefreshSeconds >= 60); they count on
    // up to the grace, and past it only once a reading shows them still there.
    const graceSeconds = OUTBOX_GRACE_MS / 1000;
    const outbox = async () => {
      if (!metrics.outboxSource) return undefined;
      const { value, at } = await metrics.readings.outbox.get();
      if (!value) return undefined;
      const aged = value.oldestSeconds + since(at);
      const oldest = value.oldestSeconds >= graceSeconds ? aged : Math.min(aged, graceSeconds);
      return { ...value, oldestSeconds: value.records > 0 ? oldest : 0 };
    };
    this.outboxRecords = new Gauge({
      name: 'jit_audit_outbox_records',
      help: 'Audit records in the outboxes, not yet in their chain (normally 0 or a few; growing: appends failing, or no recovery running)',
      registers,
      async collect() {
        const s = await outbox();
        if (s) this.set(s.records);
      },
    });
    this.outboxOldest = new Gauge({
      name: 'jit_audit_outbox_oldest_seconds',
      help: 'Age of the oldest audit record in the outboxes, on Redis clock (recovery appends those past 10 s; alert past a minute)',
      registers,
      async collect() {
        const s = await outbox();
        if (s) this.set(s.oldestSeconds);
      },
    });
    this.outboxParkedNow = new Gauge({
      name: 'jit_audit_outbox_parked',
      help: 'Outbox members that were not audit records, parked by recovery (each audited as audit.outbox_poison; alert above 0)',
      registers,
      async collect() {
        const s = await outbox();
        if (s) this.set(s.parked);
      },
    });
    this.outboxRecovered = new Counter({
      name: 'jit_audit_outbox_recovered_total',
      help: 'Audit records this process appended from an outbox because the process that made the decision did not (it died, or its append failed)',
      registers,
    });
    this.outboxParked = new Counter({
      name: 'jit_audit_outbox_poison_total',
      help: 'Outbox members this process parked as not being audit records',
      registers,
    });
    this.sealAge = new Gauge({
      name: 'jit_audit_seal_age_seconds',
      help:
        'Per audit chain with records: seconds since its newest valid seal (every pass re-seals every chain, so above ' +
        'audit.sealMaxAgeSeconds means sealing stopped); +Inf when Redis holds records but no seal that verifies',
      labelNames: ['chain'],
      registers,
      async collect() {
        if (!metrics.sealStatusSource) return;
        const { value, at } = await metrics.readings.sealStatus.get();
        this.reset();
        for (const s of value ?? []) if (s.ageMs !== undefined) this.set({ chain: String(s.chain) }, s.ageMs / 1000 + since(at));
      },
    });
    this.dataLoss = new Counter({
      name: 'jit_redis_data_loss_total',
      help: 'Redis data losses this instance noticed, by kind: lost (Redis came back empty), bucket_lost (some buckets came back empty: a Cluster master lost its data while the global slot kept it), rolled_back (Redis went back in time, e.g. restarted from an older snapshot)',
      labelNames: ['kind'],
      registers,
    });
    // One upstream down does not make the broker unready (contract section 3): this is where it shows, beside /readyz's body.
    this.upstreamUp = new Gauge({
      name: 'jit_upstream_up',
      help: 'Whether each configured provider can issue right now (1) or not (0: Vault unreachable, sealed, untrusted certificate or not logged in; STS not answering), checked at most once a second',
      labelNames: ['provider'],
      registers,
      async collect() {
        if (!metrics.upstreamsSource) return;
        const { value } = await metrics.readings.upstreams.get();
        for (const [provider, up] of Object.entries(value ?? {})) this.set({ provider }, up ? 1 : 0);
      },
    });
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry });
  }

  /** One answered HTTP request: `start` is `process.hrtime.bigint()` when the broker began on it. */
  observeHttp(route: string, status: number, start: bigint): void {
    this.httpDuration.observe({ route, status: String(status) }, Number(process.hrtime.bigint() - start) / 1e9);
  }
}
