import { api, type MetricsPoint } from '../api.ts';
import { usePoll } from '../hooks.ts';
import { LineChart } from './chart.tsx';
import { LoadError } from './problem.tsx';

/** Issuance, revocation and revocation lag, from this broker instance's own metrics. */
export function Charts() {
  const { data, error } = usePoll(() => api<{ intervalSeconds: number; points: MetricsPoint[] }>('GET', '/metrics'), 5000, 'metrics');
  if (error && !data) return <LoadError error={error} />;
  const points = data?.points ?? [];
  const times = points.map((p) => p.t);
  const minutes = Math.max(1, Math.round(((data?.intervalSeconds ?? 5) * Math.max(1, points.length)) / 60));
  const windowLabel = `${minutes} min`;
  return (
    <section class="charts" aria-labelledby="charts-title">
      <h2 id="charts-title">Broker activity</h2>
      <div class="chart-grid">
        <LineChart
          title="Credentials issued"
          unit="per minute"
          floor={1}
          windowLabel={windowLabel}
          times={times}
          series={[{ name: 'issued', tone: 'a', values: points.map((p) => p.issuedPerMinute) }]}
        />
        <LineChart
          title="Revocations"
          unit="per minute"
          floor={1}
          windowLabel={windowLabel}
          times={times}
          series={[
            { name: 'revoked or expired', tone: 'b', values: points.map((p) => p.revokedPerMinute) },
            { name: 'failed', tone: 'c', values: points.map((p) => p.revokeFailedPerMinute) },
          ]}
        />
        <LineChart
          title="Revocation lag"
          unit="seconds"
          floor={0.1}
          windowLabel={windowLabel}
          times={times}
          series={[
            { name: 'p50', tone: 'a', values: points.map((p) => p.lagP50) },
            { name: 'p95', tone: 'c', values: points.map((p) => p.lagP95) },
          ]}
        />
      </div>
      <p class="muted small">From this broker instance's own metrics (/metrics), sampled every {data?.intervalSeconds ?? 5} s.</p>
    </section>
  );
}
