import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

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
  readonly rotations: Counter<'target' | 'result'>;
  readonly replicaAcks: Counter<'result'>;
  readonly policyInSync: Gauge;
  readonly dataLoss: Counter<'kind'>;

  /** Where the active-lease gauge reads from on each scrape (set once the lease store exists). */
  activeLeasesSource: (() => Promise<number>) | undefined;

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
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
      help: 'Lease revocations and expiries by result',
      labelNames: ['result', 'reason', 'provider'],
      registers,
    });
    this.revocationLag = new Histogram({
      name: 'jit_revocation_lag_seconds',
      help: 'From the revocation trigger (task end, TTL, DELETE) to the lease being ended',
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
        if (metrics.activeLeasesSource) this.set(await metrics.activeLeasesSource());
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
    this.rotations = new Counter({ name: 'jit_rotations_total', help: 'Secret rotations', labelNames: ['target', 'result'], registers });
    this.replicaAcks = new Counter({
      name: 'jit_redis_replica_acks_total',
      help: 'Waits for replicas after writes a failover must not lose (redis.replicaAck), by result: acked, timeout, error',
      labelNames: ['result'],
      registers,
    });
    this.policyInSync = new Gauge({
      name: 'jit_policy_in_sync',
      help: 'Whether the policy set in force is the one the last reload announced (0: not ready until it loads)',
      registers,
    });
    this.dataLoss = new Counter({
      name: 'jit_redis_data_loss_total',
      help: 'Redis data losses this instance noticed, by kind: lost (Redis came back empty), rolled_back (Redis went back in time, e.g. restarted from an older snapshot)',
      labelNames: ['kind'],
      registers,
    });
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry });
  }
}
